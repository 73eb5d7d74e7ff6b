"""SidecarProcess: a port taken between choosing it and binding it starts the sidecar again on
others, rather than failing the test that wanted a sidecar (seen under load on 2 cores)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from openai_policy_devkit import sidecar as sidecar_helpers
from openai_policy_devkit.managed_process import free_ports
from openai_policy_devkit.sidecar import SidecarProcess, upstream_spec, write_policy


def test_a_port_taken_meanwhile_is_retried_on_other_ports(tmp_path: Path, fake_openai, monkeypatch) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    offered: list[list[int]] = []

    def first_busy(count: int) -> list[int]:
        ports = [busy, *free_ports(count - 1)] if not offered else list(free_ports(count))
        offered.append(ports)
        return ports

    monkeypatch.setattr(sidecar_helpers, "free_ports", first_busy)
    policy = write_policy(tmp_path / "policy.yaml", upstream_spec(fake_openai))
    try:
        with SidecarProcess(policy, tmp_path / "sidecar.log") as process:
            assert process.port != busy and process.get_admin("/healthz")[0] == 200
    finally:
        taken.close()
    assert len(offered) == 2 and offered[0][0] == busy


def test_other_start_up_failures_still_fail(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policy.yaml", {"budget": {"limits": [{"window": "day", "usd": -1}]}})
    with pytest.raises(RuntimeError, match="exited with 2"):
        with SidecarProcess(policy, tmp_path / "sidecar.log"):
            pass
