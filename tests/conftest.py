"""Shared test set-up: the repo root on sys.path, quiet TensorFlow, and small helpers."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The float32 tests compare against float32/float64 references with tolerances fixed for exact
# float32 matmuls. GPUs multiply float32 in TF32 (a 10-bit mantissa) unless told otherwise, so
# every test, and every process a test starts (they inherit this), asks for full precision.
# It changes nothing on CPUs, whose float32 matmuls are exact already.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def gpu_seen_by_the_machine() -> str | None:
    """What shows that this machine has an NVIDIA GPU (whatever JAX uses), or None."""
    gpus = pathlib.Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return f"{gpus} lists {len(list(gpus.iterdir()))}"
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        if listed.startswith("GPU "):
            return f"nvidia-smi -L: {listed.splitlines()[0]}"
    return None


OPT_LEVEL = "--xla_backend_optimization_level"


def xla_flags(*flags: str) -> str:
    """XLA_FLAGS for a process a test starts: this process's (see below) followed by `flags`."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


# Compiling is most of the suite's CPU time (1,019 of 1,760 CPU-seconds, timed by a hook on
# jax's compile), and most programs the tests compile then run a few steps. At LLVM's
# optimization level 0, XLA:CPU compiles them in less than half the time (tiny's train step:
# 9.3 -> 4.2 CPU-seconds). The program is the same (XLA's own optimizations of it all run); only
# its machine code is less tuned, so a float32 result may differ in its last bits (whether a
# multiply and an add fuse into one instruction), as results differ between CPUs: every
# tolerance in the suite is far wider, and every exact equality compares two runs of one setting,
# which every process a test starts inherits (helpers that set XLA_FLAGS add to it: `xla_flags`).
# A level set in XLA_FLAGS already is kept. Not where there is a GPU: the GPU tests compile and
# compare kernels as users run them.
if OPT_LEVEL not in os.environ.get("XLA_FLAGS", "") and gpu_seen_by_the_machine() is None:
    os.environ["XLA_FLAGS"] = xla_flags(f"{OPT_LEVEL}=0")


def _run_on_cpu_devices(script: pathlib.Path, *args: str, devices: int = 8, timeout: int = 900) -> dict:
    """Runs `script` in a fresh interpreter that sees `devices` CPU devices; returns its JSON.

    jax fixes the device count when it starts, so checks that need several devices run in a child
    and the rest of the suite keeps one. The child prints one JSON line last.
    """
    import json
    import subprocess

    env = {
        **os.environ,
        **_shared_compilation_cache(),
        "XLA_FLAGS": xla_flags(f"--xla_force_host_platform_device_count={devices}"),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _shared_compilation_cache() -> dict[str, str]:
    """JAX's persistent compilation cache in the launcher's default directory, as jax's own
    environment variables (for the multi-device children, which run no launcher)."""
    from llama_fdl import compilation_cache

    return {
        "JAX_COMPILATION_CACHE_DIR": str(compilation_cache.default_dir()),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def pytest_configure(config):
    """Every test process shares the launcher's persistent compilation cache.

    Compiling is most of the suite's CPU time, and many tests compile the same programs (tiny's
    train step above all) in different processes: the launcher's children already share the
    cache in its default directory, and this makes the test processes themselves and the
    multi-device children use it too, so each program is compiled once per machine. A program
    loaded from the cache is the one a compile gives (jax keys it by the program, devices,
    flags and versions); tests about the cache itself use a directory of their own.
    The xdist controller runs no tests and so never imports jax.
    """
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        from llama_fdl import compilation_cache

        compilation_cache.enable(compilation_cache.default_dir())


@pytest.fixture(scope="session")
def run_on_cpu_devices():
    return _run_on_cpu_devices


def pytest_runtest_setup(item):
    """`gpu` tests run on a GPU, skip where the machine has none, and fail where JAX misses one.

    A GPU that JAX does not use means the CPU jaxlib is installed; skipping would hide that the
    GPU tests never ran.
    """
    if item.get_closest_marker("gpu") is None:
        return
    import jax

    backend = jax.default_backend()
    if backend == "gpu":
        return
    seen = gpu_seen_by_the_machine()
    if seen:
        pytest.fail(
            f"This machine has a GPU ({seen}) but JAX runs on {backend}; install the CUDA jaxlib "
            "(pip install -e '.[cuda]') so the GPU tests run on it.",
            pytrace=False,
        )
    pytest.skip(f"needs a GPU; JAX runs on {backend} and the machine has none")
