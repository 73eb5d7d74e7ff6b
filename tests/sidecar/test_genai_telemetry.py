"""The optional OTLP export of OpenTelemetry's GenAI client metrics, received by a real OTLP/HTTP
endpoint (protobuf decoded with OpenTelemetry's own proto package), and its absence when off."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from openai_policy_devkit.sidecar import SidecarProcess, upstream_spec, write_policy

KEY = "sk-test-otlp-export-0123456789abcdef"


class Receiver:
    """An OTLP/HTTP metrics endpoint on loopback that keeps every export it is sent."""

    def __init__(self) -> None:
        self.exports: list[ExportMetricsServiceRequest] = []
        self.raw: list[bytes] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/metrics", self.path
                export = ExportMetricsServiceRequest()
                export.ParseFromString(body)
                receiver.raw.append(body)
                receiver.exports.append(export)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def points(self, name: str) -> list[tuple[dict[str, str], Any]]:
        found = []
        for export in self.exports:
            for resource in export.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name == name:
                            for point in metric.histogram.data_points:
                                attributes = {a.key: a.value.string_value for a in point.attributes}
                                found.append((attributes, point))
        return found


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()


def test_genai_metrics_reach_an_otlp_endpoint(tmp_path: Path, fake_openai, receiver: Receiver) -> None:
    key = tmp_path / "api-key"
    key.write_text(KEY + "\n")
    policy = write_policy(
        tmp_path / "policy.yaml", {**upstream_spec(fake_openai), "models": {"allow": ["gpt-4o-mini*"]}}
    )
    args = ("--otlp-endpoint", receiver.url, "--otlp-interval", "0.5")
    with SidecarProcess(policy, tmp_path / "sidecar.log", api_key_file=key, extra_args=args) as sidecar:
        client = openai.OpenAI(base_url=sidecar.base_url, api_key="sk-placeholder", max_retries=0)
        replies = [
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {n}"}]
            )
            for n in range(3)
        ]
        with pytest.raises(openai.PermissionDeniedError):  # refused: no upstream call, no GenAI metric
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        client.close()
        deadline = time.monotonic() + 15
        while (
            time.monotonic() < deadline
            and sum(p.count for _, p in receiver.points("gen_ai.client.operation.duration")) < 3
        ):
            time.sleep(0.1)

    tokens = receiver.points("gen_ai.client.token.usage")
    by_type: dict[str, float] = {}
    for attributes, point in tokens:
        assert (
            attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.provider.name"] == "openai"
        )
        assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
        by_type[attributes["gen_ai.token.type"]] = max(
            by_type.get(attributes["gen_ai.token.type"], 0), point.sum
        )
    assert by_type["input"] == sum(r.usage.prompt_tokens for r in replies)
    assert by_type["output"] == sum(r.usage.completion_tokens for r in replies)
    durations = receiver.points("gen_ai.client.operation.duration")
    assert max(p.count for _, p in durations) == 3  # cumulative: the refused call is not a model call
    assert all(KEY.encode() not in body and b"hi 0" not in body for body in receiver.raw)
    resource = {
        a.key: a.value.string_value for a in receiver.exports[-1].resource_metrics[0].resource.attributes
    }
    assert resource["service.name"] == "openai-policy-sidecar"


def test_off_by_default_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policy.yaml", {})
    code = (
        "import sys\n"
        "from openai_policy_sidecar.__main__ import config_from, parse_args\n"
        "from openai_policy_sidecar.server import Sidecar\n"
        f"Sidecar(config_from(parse_args(['--policy', {str(policy)!r}])))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
