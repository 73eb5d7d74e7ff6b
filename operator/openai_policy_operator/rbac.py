"""The operator's RBAC: the least it needs, as data (the chart and the tests render the same rules).

Deliberately absent: reading Secrets (no get, list or watch). The operator never reads an API key;
the kubelet mounts the Secret into the sidecar container only. It may create and patch Secrets, to
deliver each policy's Redis credential (``redis_users``): write-only, so that this right cannot
be used to read a key. ``python -m openai_policy_operator.rbac`` prints the manifests.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import names

KOPF_GROUP = "kopf.dev"


def rules(
    webhook_configuration: str | None = None, validating_configuration: str | None = None
) -> list[dict[str, Any]]:
    """ClusterRole rules; ``webhook_configuration``: the name passed to --manage-webhook-configuration,
    ``validating_configuration``: to --manage-validating-webhook-configuration."""
    out: list[dict[str, Any]] = [
        # The policies: watched (kopf), annotated with kopf's progress, status written by the reporter.
        {"apiGroups": [names.GROUP], "resources": [names.PLURAL], "verbs": ["get", "list", "watch", "patch"]},
        {
            "apiGroups": [names.GROUP],
            "resources": [f"{names.PLURAL}/status"],
            "verbs": ["get", "patch", "update"],
        },
        # ownerReferences with blockOwnerDeletion need update on the owner's finalizers subresource.
        {"apiGroups": [names.GROUP], "resources": [f"{names.PLURAL}/finalizers"], "verbs": ["update"]},
        # The rendered policy ConfigMaps (create, then patch on later generations).
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]},
        # Each policy's Redis credential, written into its namespace, never read: create cannot be
        # limited by name, and the names (<policy>-redis-credential) are not known in advance. A patch
        # first tests our managed-by label, so a same-named Secret of someone else is never changed.
        # No delete: the Secret is owned by its policy and goes with it (garbage collection).
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]},
        # Counting injected pods (kopf index) and reading namespace labels at admission.
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        # Events on policies (kopf) and on workloads (the webhook).
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        # kopf discovers resources through CRDs and uses its peering objects for leader election.
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": [KOPF_GROUP],
            "resources": ["clusterkopfpeerings", "kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"],
        },
    ]
    if webhook_configuration:
        # create cannot be limited by name; get/patch are limited to our own configuration.
        out += [
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "verbs": ["create"],
            },
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["mutatingwebhookconfigurations"],
                "verbs": ["get", "patch"],
                "resourceNames": [webhook_configuration],
            },
        ]
    if validating_configuration:
        out += [
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["validatingwebhookconfigurations"],
                "verbs": ["create"],
            },
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["validatingwebhookconfigurations"],
                "verbs": ["get", "patch"],
                "resourceNames": [validating_configuration],
            },
        ]
    return out


def view_rules() -> list[dict[str, Any]]:
    """Reading policies and their status: aggregated to the built-in ``view`` role by the chart."""
    return [
        {
            "apiGroups": [names.GROUP],
            "resources": [names.PLURAL, f"{names.PLURAL}/status"],
            "verbs": ["get", "list", "watch"],
        }
    ]


def edit_rules() -> list[dict[str, Any]]:
    """Writing policies, for the platform team only: never aggregated to ``edit``, since a team that
    can edit the policy governing its own pods can raise its own budget. Creating Events lets
    ``kubectl oaip suspend/resume`` record who pulled the switch and why."""
    return [
        {
            "apiGroups": [names.GROUP],
            "resources": [names.PLURAL],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
        },
        {
            "apiGroups": [names.GROUP],
            "resources": [f"{names.PLURAL}/status"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]


USER_ROLES_FILE = Path("charts/openai-policy-operator/files/user-roles.yaml")


def user_roles_file() -> str:
    header = (
        "# Generated by `python -m openai_policy_operator.rbac --user-roles`; do not edit by hand.\n"
        "# templates/user-roles.yaml renders these rules when rbac.view / rbac.edit are enabled.\n"
    )
    return header + yaml.safe_dump({"viewRules": view_rules(), "editRules": edit_rules()}, sort_keys=False)


def cluster_role(
    name: str, webhook_configuration: str | None = None, validating_configuration: str | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY}},
        "rules": rules(webhook_configuration, validating_configuration),
    }


def cluster_role_binding(name: str, service_account_namespace: str, service_account: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account, "namespace": service_account_namespace}
        ],
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Print the operator's ClusterRole and ClusterRoleBinding.")
    p.add_argument("--name", default=names.MANAGED_BY)
    p.add_argument("--namespace", default="openai-policy-system", help="the ServiceAccount's namespace")
    p.add_argument("--service-account", default=names.MANAGED_BY)
    p.add_argument("--webhook-configuration", default=None)
    p.add_argument(
        "--user-roles", action="store_true", help=f"write {USER_ROLES_FILE} (from the repository root)"
    )
    args = p.parse_args(argv)
    if args.user_roles:
        USER_ROLES_FILE.write_text(user_roles_file())
        return
    docs = [
        cluster_role(args.name, args.webhook_configuration),
        cluster_role_binding(args.name, args.namespace, args.service_account),
    ]
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
