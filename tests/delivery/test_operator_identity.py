"""The operator starts as a uid with no passwd entry, as it does in its image (65532).

kopf names each replica in its peering; its default name asks getpass.getuser(), which raises
KeyError('getpwuid(): uid not found: 65532') for such a uid, so the operator crash-looped on every
real cluster. main() must hand kopf an identity that needs no user lookup: the Pod's name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openai_policy_operator.__main__ import peering_identity

ROOT = Path(__file__).resolve().parents[2]
NO_PASSWD_UID = 65532
SOURCES = [str(ROOT / part) for part in ("operator", "api", "store")]  # what the operator image holds

# main() as the image's entrypoint runs it, with kopf.run resolving the identity exactly as kopf
# does (its own default when main passes none) and the cluster connection left out.
CHILD = """
import json, sys
import kopf
from kopf._core.engines import peering
import openai_policy_operator.__main__ as entry

class Nothing:
    @classmethod
    def build(cls, *args, **kwargs):
        return cls()

def run(**kwargs):
    identity = kwargs.get("identity")
    print(json.dumps(identity if identity is not None else peering.detect_own_id(manual=False)))

entry.OperatorServices = Nothing
entry.Kube.from_environment = classmethod(lambda cls: None)
entry.register = lambda registry, services: None
kopf.run = run
entry.main(["--redis-url", ""])
"""


def interpreter_for_any_uid() -> str:
    """This venv's packages under an interpreter uid 65532 may run (the venv's may sit in /root)."""
    for candidate in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        try:
            subprocess.run(
                [candidate, "-c", ""], user=NO_PASSWD_UID, group=NO_PASSWD_UID, extra_groups=[], check=True
            )
        except (OSError, subprocess.CalledProcessError):
            continue
        return candidate
    pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that uid 65532 may run")


def run_as_uid_without_passwd_entry(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import pwd

    with pytest.raises(KeyError):
        pwd.getpwuid(NO_PASSWD_UID)  # the premise: the uid really has no entry here
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    return subprocess.run(
        [interpreter_for_any_uid(), "-c", CHILD],
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": ":".join([*SOURCES, site]),
            "HOME": "/tmp",
            **env,
        },
        user=NO_PASSWD_UID,
        group=NO_PASSWD_UID,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65532 needs root")
@pytest.mark.parametrize(
    ("env", "expected"),
    [({"POD_NAME": "openai-policy-operator-7d9f-abcde"}, "openai-policy-operator-7d9f-abcde"), ({}, None)],
)
def test_operator_starts_as_a_uid_without_a_passwd_entry(env: dict[str, str], expected: str | None) -> None:
    done = run_as_uid_without_passwd_entry(env)
    assert done.returncode == 0, done.stderr[-3000:]
    identity = done.stdout.strip().strip('"')
    if expected is not None:
        assert identity == expected
    else:
        assert identity and "@" not in identity  # not kopf's user@host default


def test_identity_is_the_pod_name_from_the_downward_api() -> None:
    assert peering_identity({"POD_NAME": "op-1"}) == "op-1"
    first, second = peering_identity({}), peering_identity({})
    assert first != second  # two replicas outside a Pod still get distinct names
