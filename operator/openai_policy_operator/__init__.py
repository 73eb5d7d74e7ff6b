"""The OpenAIPolicy operator: CRD reconciliation, sidecar injection and live status.

Modules, one job each (kopf only in ``handlers`` and ``webhook_server``):

- ``__main__``: the ``openai-policy-operator`` command line -> ``config.OperatorSettings`` -> kopf.
- ``handlers``: kopf wiring (reconcile on create/update/resume, status timer, indices, webhook).
- ``reconcile``: validate, selector conflicts, render + apply the ConfigMap, publish to Redis.
- ``rendering``: the ``<name>-policy`` ConfigMap (pure).
- ``selectors``: label selector matching and overlap (pure).
- ``reporting`` / ``status``: read usage, heartbeats and spend from the state store / turn them
  into ``status`` and condition transitions (pure).
- ``webhook``: which pods get which policy (pure ``decide``) and the admission I/O around it.
- ``injection``: the JSONPatch that adds the native sidecar (pure).
- ``webhook_server`` / ``certs``: HTTPS serving and the MutatingWebhookConfiguration.
- ``rbac`` / ``peering``: the manifests the operator needs (``python -m`` prints them).
- ``kube``: the few API calls made outside kopf.
"""
