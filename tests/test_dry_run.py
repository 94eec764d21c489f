"""`--dry_run` through the launcher, the persistent compilation cache it shares with training,
and the install metadata for GPUs and Python 3.12."""

from __future__ import annotations

import configparser

from launcher import REPO, launch


def test_dry_run_compiles_reports_and_writes_nothing_then_hits_the_cache(tmp_path):
    workdir, cache = tmp_path / "run", tmp_path / "cache"
    args = (
        "--fdl_config=experiments.tiny",
        "--dry_run",
        f"--workdir={workdir}",
        f"--compilation_cache_dir={cache}",
    )
    first = launch(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "compiled in" in first.stdout and "parameters: 49,504" in first.stdout
    assert "peak" in first.stdout and ": fits" in first.stdout
    assert not workdir.exists()  # a dry run writes no run directory
    assert any(cache.iterdir())  # ... but fills the compilation cache
    second = launch(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "loaded from the persistent compilation cache" in second.stdout
    # Control: with the cache off the second launch compiles again.
    third = launch(*args, "--nocompilation_cache")
    assert (
        "loaded from the persistent compilation cache" not in third.stdout and "compiled in" in third.stdout
    )


def test_install_metadata_allows_python_3_12_and_asks_for_the_cuda_build_of_jax():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["options"]["python_requires"] == ">=3.11,<3.13"
    requires = cfg["options"]["install_requires"].split()
    jax_floor = next(r for r in requires if r.startswith("jax>="))
    cuda = cfg["options.extras_require"]["cuda"].split()
    # jax[cuda12] pins its CUDA plugin to jax's own version, so the constraints file's jax pin
    # (what scripts/setup.sh installs) decides the plugin's version too.
    assert cuda == [f"jax[cuda12]>={jax_floor.removeprefix('jax>=')}"]
    pins = (REPO / "constraints.txt").read_text().split()
    assert f"jax=={jax_floor.removeprefix('jax>=')}" in pins
