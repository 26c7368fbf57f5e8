"""LiteLLM's proxy, for a side-by-side throughput comparison in the same run.

LiteLLM is never a dependency of meter: it is installed at a pinned version into its own virtual
environment, bench/.venv-litellm, on first use. It runs as one process with no database, routing
`claude-sonnet-4-6` to its `anthropic` provider with the demo upstream as `api_base`.

Why this version: litellm 1.108.8 and later (to 1.110.x at the time of writing) pin
`litellm-enterprise` / `litellm-proxy-extras` / `litellm-proxy` releases that the package registry
does not serve, so `litellm[proxy]` cannot be installed from it; 1.108.7 is the latest that installs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from bench.load import MODEL, Target, anthropic_headers, messages_body
from tests.support import Process, free_port

VERSION = "1.108.7"
VENV = Path(__file__).resolve().parent / ".venv-litellm"
MASTER_KEY = "sk-litellm-bench-master-key"
# The endpoints to try, best first: Anthropic's format passed through, else OpenAI's.
ENDPOINTS = ("/v1/messages", "/chat/completions")


def installed_version() -> str | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure_installed() -> str:
    """Create bench/.venv-litellm with `litellm[proxy]==VERSION` unless it is already there."""
    if installed_version() == VERSION:
        return VERSION
    print(f"Installing litellm[proxy]=={VERSION} into bench/.venv-litellm (first use; about a minute)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, f"litellm[proxy]=={VERSION}"], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install litellm[proxy]=={VERSION}:\n{done.stderr[-3000:]}")
    return VERSION


def write_config(directory: Path, upstream_url: str, operator_key: str) -> Path:
    """LiteLLM's proxy config (YAML is a superset of JSON, so JSON is written) and a logging config
    that silences uvicorn's per-request access log, as meter runs without one."""
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {"model": f"anthropic/{MODEL}", "api_base": upstream_url, "api_key": operator_key},
            }
        ],
        "general_settings": {"master_key": MASTER_KEY},
    }
    path = directory / "litellm-config.yaml"
    path.write_text(json.dumps(config, indent=2))
    logging_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO"},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }
    (directory / "litellm-logging.json").write_text(json.dumps(logging_config))
    return path


def start(directory: Path, upstream_url: str, operator_key: str) -> tuple[Process, str]:
    """Start LiteLLM's proxy; returns it and its base URL."""
    config = write_config(directory, upstream_url, operator_key)
    port = free_port()
    command = [
        str(VENV / "bin" / "litellm"),
        "--config", str(config),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--num_workers", "1",
        "--log_config", str(directory / "litellm-logging.json"),
    ]  # fmt: skip
    env = {
        # The model price map ships in the package; without this LiteLLM fetches it from the internet.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    base_url = f"http://127.0.0.1:{port}"
    child = Process(
        command, env, base_url, "/health/liveliness", log_path=directory / "litellm.log", ready_timeout_s=180
    )
    return child, base_url


def working_target(base_url: str) -> Target:
    """The first endpoint of ENDPOINTS that answers the benchmark's request with a 200."""
    failures = []
    for path in ENDPOINTS:
        # The master key both ways: x-api-key (Anthropic's SDKs) and a bearer token (OpenAI's).
        headers = anthropic_headers(MASTER_KEY, {"authorization": f"Bearer {MASTER_KEY}"})
        target = Target("litellm", base_url + path, headers)
        try:
            response = httpx.post(target.url, content=messages_body(), headers=target.headers, timeout=60)
        except httpx.HTTPError as exc:
            failures.append(f"{path}: {exc.__class__.__name__}")
            continue
        if response.status_code == 200:
            return target
        failures.append(f"{path}: HTTP {response.status_code} {response.text[:200]}")
    raise RuntimeError("LiteLLM answered none of its endpoints: " + "; ".join(failures))
