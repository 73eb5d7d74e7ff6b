"""Public names fixed by the design (annotations, labels, container and volume names, ports).

Kept in one place so the webhook, the renderer, the RBAC rules and the tests cannot drift apart.
"""

from __future__ import annotations

GROUP = "openaipolicy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "OpenAIPolicy"
PLURAL = "openaipolicies"
RESOURCE = f"{PLURAL}.{VERSION}.{GROUP}"  # what kopf decorators accept

NAMESPACE_INJECTION_LABEL = "openaipolicy.dev/injection"
NAMESPACE_INJECTION_ENABLED = "enabled"
POLICY_ANNOTATION = "openaipolicy.dev/policy"
INJECT_ANNOTATION = "openaipolicy.dev/inject"
INJECTED_ANNOTATION = "openaipolicy.dev/injected"
GENERATION_ANNOTATION = "openaipolicy.dev/generation"
POLICY_LABEL = "openaipolicy.dev/policy"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "openai-policy-operator"

SIDECAR_NAME = "openai-policy-proxy"
PROXY_PORT = 8780
ADMIN_PORT = 8781
PROXY_BASE_URL = f"http://127.0.0.1:{PROXY_PORT}/v1"
# The app never holds the real key: the SDKs insist on a non-empty key, the sidecar ignores it.
PLACEHOLDER_API_KEY = "sk-openai-policy-placeholder"

POLICY_VOLUME = "openai-policy-config"
API_KEY_VOLUME = "openai-policy-api-key"
TMP_VOLUME = "openai-policy-tmp"
POLICY_DIR = "/etc/openai-policy"
POLICY_FILE = "policy.yaml"
API_KEY_DIR = "/var/run/secrets/openai-policy"
DEFAULT_API_KEY_KEY = "api-key"
# Scratch space for a read-only root filesystem (TMPDIR points here). Not /tmp: a mount path that is
# a prefix of common host paths confuses tools that map pod paths to host paths (the local pod runner).
TMP_DIR = "/var/run/openai-policy-tmp"
# The policy's Redis credential (its ACL user and password), a Secret the operator writes into the
# policy's namespace and the webhook mounts into the sidecar only, like the key.
REDIS_CREDENTIAL_VOLUME = "openai-policy-redis"
REDIS_CREDENTIAL_DIR = "/var/run/secrets/openai-policy-redis"
REDIS_CREDENTIAL_KEY = "credential"  # two lines: username, password
REDIS_CA_KEY = "ca.crt"  # the CA of a private rediss:// server, when the operator was given one
REDIS_CREDENTIAL_FILE = f"{REDIS_CREDENTIAL_DIR}/{REDIS_CREDENTIAL_KEY}"
REDIS_CREDENTIAL_SUFFIX = "-redis-credential"


def redis_credential_secret(policy: str) -> str:
    return f"{policy}{REDIS_CREDENTIAL_SUFFIX}"


WEBHOOK_ID = "inject-sidecar"  # kopf handler id == the URL path the API server calls
VALIDATING_WEBHOOK_ID = "validate-pods"


def configmap_name(policy_name: str) -> str:
    """The ConfigMap holding one policy's compiled document."""
    return f"{policy_name}-policy"
