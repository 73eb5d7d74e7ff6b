"""kopf's peering resources, used for leader election between operator replicas.

Every replica picks a random priority at start; the highest live one reconciles and reports,
the others pause those (but all keep serving the admission webhook). A peer that stops
refreshing its entry expires after kopf's peering lifetime (60 s) and another takes over.
``python -m openai_policy_operator.peering`` prints the CRDs and the cluster-wide peering object.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from . import names

GROUP = "kopf.dev"


def _crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [
        _crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def cluster_peering(name: str = names.MANAGED_BY) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Print kopf's peering CRDs and the operator's peering object.")
    p.add_argument("--name", default=names.MANAGED_BY)
    p.add_argument("--crds-only", action="store_true")
    args = p.parse_args(argv)
    docs = crds() if args.crds_only else [*crds(), cluster_peering(args.name)]
    yaml.safe_dump_all(docs, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
