"""Entry point of ``kubectl-oaip`` (and ``kubectl-openaipolicy``): arguments to commands, nothing more."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from openai_policy_operator import names

from . import refusal, summary, suspension, why
from .kubectl import Kubectl, KubectlError


def _parser() -> argparse.ArgumentParser:
    # The cluster flags are accepted after the command too, as kubectl users type them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", help="kubeconfig file (default: kubectl's)")
    common.add_argument("--context", help="kubeconfig context (default: the current one)")
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    parser = argparse.ArgumentParser(
        prog="kubectl oaip", description="Read and steer OpenAIPolicies with your own kubeconfig and RBAC."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    status = commands.add_parser(
        "status", parents=[common], help="a readable summary of one policy, or of all of them"
    )
    status.add_argument("name", nargs="?", help="the policy (omit for every policy of the namespace)")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")

    for verb, text in (
        ("suspend", "refuse every request of the policy's pods"),
        ("resume", "lift a suspension"),
    ):
        switch = commands.add_parser(verb, parents=[common], help=text)
        switch.add_argument("name", help="the policy")
        switch.add_argument("--reason", required=True, help="why: recorded in an annotation and an Event")

    pod = commands.add_parser("why", parents=[common], help="why a pod was or was not given the sidecar")
    pod.add_argument("pod", help="the pod's name")
    pod.add_argument(
        "--operator-namespace",
        default="openai-policy-system",
        help="the operator's namespace, which is never injected (default: %(default)s)",
    )

    explain = commands.add_parser(
        "explain-refusal", parents=[common], help="what a sidecar decided for one request, and why"
    )
    explain.add_argument(
        "request_id", metavar="REQUEST-ID", help="x-openai-policy-request-id or x-request-id"
    )
    explain.add_argument("-l", "--selector", help="only the pods this label selector picks")
    explain.add_argument(
        "--since", default="24h", help="how far back to read the logs (default: %(default)s)"
    )
    explain.add_argument("--log-file", type=Path, help="read a saved sidecar log instead of the cluster's")
    return parser


def run(args: argparse.Namespace, kubectl: Kubectl) -> list[str]:
    if args.command == "explain-refusal" and args.log_file:
        lines = args.log_file.read_text(errors="replace").splitlines()
        return _explained(refusal.find(lines, args.request_id), args.request_id, "in " + str(args.log_file))
    namespace = args.namespace or kubectl.current_namespace()
    if args.command == "status":
        if args.name:
            return summary.details(kubectl.json("get", names.PLURAL, args.name, "-n", namespace))
        scope = ["-A"] if args.all_namespaces else ["-n", namespace]
        return summary.overview(kubectl.items("get", names.PLURAL, *scope))
    if args.command in ("suspend", "resume"):
        return suspension.set_suspended(kubectl, namespace, args.name, args.command == "suspend", args.reason)
    if args.command == "why":
        return why.why(kubectl, namespace, args.pod, args.operator_namespace)
    lines = refusal.sidecar_log_lines(kubectl, namespace, args.selector, args.since)
    where = f"in namespace {namespace} over the last {args.since} (try --since or -l)"
    return _explained(refusal.find(lines, args.request_id), args.request_id, where)


def _explained(found: dict[str, object] | None, request_id: str, where: str) -> list[str]:
    if found is None:
        raise KubectlError(f"no sidecar log line has request id {request_id!r} {where}")
    return refusal.describe(found)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kubectl = Kubectl(kubeconfig=args.kubeconfig, context=args.context)
    try:
        lines = run(args, kubectl)
    except KubectlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
