"""Shared test set-up: the repo root on sys.path, quiet TensorFlow, and small helpers."""

import os
import pathlib
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _run_on_cpu_devices(script: pathlib.Path, *args: str, devices: int = 8, timeout: int = 900) -> dict:
    """Runs `script` in a fresh interpreter that sees `devices` CPU devices; returns its JSON.

    jax fixes the device count when it starts, so checks that need several devices run in a child
    and the rest of the suite keeps one. The child prints one JSON line last.
    """
    import json
    import subprocess

    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def run_on_cpu_devices():
    return _run_on_cpu_devices
