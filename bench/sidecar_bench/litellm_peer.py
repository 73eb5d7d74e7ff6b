"""The LiteLLM proxy as the peer users would pick, installed into its own venv (bench/.venv).

It lives apart from the project's venv because litellm pins an older `openai` SDK than ours.
The version is pinned: 1.107.0 was a compromised release (withdrawn from the registry), and the
newest releases need a `certifi` newer than the registry mirror here serves; 1.106.2 installs
cleanly. Override with --litellm-spec.

Configuration is the fair minimum: one model_list entry pointing at the fake as an
OpenAI-compatible base (the alias mapped to the dated model, as our pin does), no database (so no
budgets or spend logs: LiteLLM needs Postgres for those), a master key (it refuses to start
without one; with no database it is checked in memory), telemetry and callbacks off, errors-only
logging, one uvicorn worker (the sidecar is one process too).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from .services import BENCH_KEY, CLIENT_KEY, Service, child_env, free_port

BENCH_DIR = Path(__file__).resolve().parents[1]
VENV = BENCH_DIR / ".venv"
DEFAULT_SPEC = "litellm[proxy]==1.106.2"
PROFILERS = ("pyinstrument", "py-spy")


def venv_python() -> Path:
    return VENV / "bin" / "python"


def installed_version() -> str | None:
    if not venv_python().exists():
        return None
    out = subprocess.run(
        [str(venv_python()), "-c", "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_venv(spec: str = DEFAULT_SPEC, log=print) -> str:
    """Create bench/.venv and install `spec` (plus the profilers) unless the pinned version is there."""
    wanted = spec.split("==", 1)[1] if "==" in spec else None
    have = installed_version()
    if have and (wanted is None or have == wanted) and (VENV / "bin" / "litellm").exists():
        return have
    if not venv_python().exists():
        base = getattr(sys, "_base_executable", None) or "python3"
        log(f"creating {VENV} with {base}")
        subprocess.run([base, "-m", "venv", str(VENV)], check=True, timeout=300)
    log(f"installing {spec} into {VENV} (first run only; a few minutes)")
    subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True, timeout=600
    )
    subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "--quiet", spec, *PROFILERS], check=True, timeout=1800
    )
    version = installed_version()
    if not version:
        raise RuntimeError(f"litellm did not install into {VENV}")
    return version


def write_config(path: Path, upstream_url: str, model_alias: str, pinned_model: str) -> Path:
    config = {
        "model_list": [
            {
                "model_name": model_alias,
                "litellm_params": {
                    "model": f"openai/{pinned_model}",  # the openai-compatible provider, base URL = the fake
                    "api_base": upstream_url,
                    "api_key": BENCH_KEY,
                },
            }
        ],
        "litellm_settings": {
            "drop_params": True,
            "set_verbose": False,
            "json_logs": False,
            "turn_off_message_logging": True,
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
        },
        "general_settings": {
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "disable_adding_master_key_hash_to_db": True,
            "disable_reset_budget": True,
            "background_health_checks": False,
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_litellm(workdir: Path, upstream_url: str, model_alias: str, pinned_model: str) -> Service:
    config = write_config(workdir / "litellm-config.yaml", upstream_url, model_alias, pinned_model)
    port = free_port()
    env = child_env(
        LITELLM_LOG="ERROR",
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # do not fetch the price map from the internet at start
        LITELLM_TELEMETRY="False",
        DISABLE_SCHEMA_UPDATE="True",
        LITELLM_MODE="PRODUCTION",
        NO_DOCS="True",
        LITELLM_MASTER_KEY=CLIENT_KEY,  # checked in memory: there is no database
    )
    # PYTHONDONTWRITEBYTECODE would make every lazy import of LiteLLM compile again in each run.
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    argv = [
        str(VENV / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    service = Service("litellm", argv, workdir, env=env)
    service.url = f"http://127.0.0.1:{port}/v1"
    service.start()
    service.wait_ready(f"http://127.0.0.1:{port}/health/liveliness", timeout=240)
    return service


def profiler_path(name: str) -> Path | None:
    path = VENV / "bin" / name
    return path if path.exists() and os.access(path, os.X_OK) else None
