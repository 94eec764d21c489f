"""The packaged command (llama-fdl, python -m llama_fdl) and dependencies a library user can live with."""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import subprocess
import sys

import pytest
from launcher import REPO
from packaging.requirements import Requirement
from packaging.version import Version

from llama_fdl import commands


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"constraints.txt must pin exact versions: {line}"
            pins[_name(requirement.name)] = Version(spec.version)
    return pins


def _name(name: str) -> str:
    return name.lower().replace("_", "-")


def _requirements() -> list[Requirement]:
    options = _setup_cfg()
    lines = options["options"]["install_requires"].split("\n")
    lines += options["options.extras_require"]["test"].split("\n")
    return [Requirement(line) for line in lines if line.strip()]


def test_the_console_script_is_the_command_table():
    (script,) = [s for s in _setup_cfg()["options.entry_points"]["console_scripts"].split("\n") if s]
    name, target = (part.strip() for part in script.split("="))
    module, function = target.split(":")
    assert name == "llama-fdl"
    assert getattr(importlib.import_module(module), function) is commands.main


def test_help_lists_the_commands_and_each_commands_flags(capsys):
    commands.main(["help"])
    listing = capsys.readouterr().out
    for name in commands.COMMANDS:
        assert f"  {name}  " in listing
    commands.main(["help", "sweep"])
    sweep_help = capsys.readouterr().out
    assert "--sweep:" in sweep_help and "--parallel:" in sweep_help and "--fdl_config:" in sweep_help
    with pytest.raises(SystemExit, match=r"^error: Unknown command 'trian'; commands: train, sweep"):
        commands.main(["trian"])


def test_python_dash_m_runs_the_commands_and_errors_stay_one_line(tmp_path):
    listing = subprocess.run(
        [sys.executable, "-m", "llama_fdl"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert listing.returncode == 0 and "sweep" in listing.stdout, listing.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "llama_fdl", "sweep", "--fdl_config=experiments.tiny", "--sweep=lr_smal"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "error: Unknown sweep 'lr_smal'; available: lr_small, width_depth. (--traceback shows where)"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written, not even runs/


def test_install_requires_takes_floors_that_the_known_good_set_meets():
    pins = _constraints()
    for requirement in _requirements():
        operators = {spec.operator for spec in requirement.specifier}
        if requirement.name != "ruff":  # pinned: each release formats differently, and CI checks it
            assert operators == {">="}, f"{requirement}: setup.cfg takes floors, not pins"
        assert _name(requirement.name) in pins, f"{requirement.name} is missing from constraints.txt"
        assert requirement.specifier.contains(pins[_name(requirement.name)]), requirement
    # Control: a floor above the known-good version is noticed.
    assert not Requirement("jax>=99").specifier.contains(pins["jax"])
    assert "-c constraints.txt" in (REPO / "scripts" / "setup.sh").read_text()


def test_the_tests_run_in_the_known_good_set():
    """constraints.txt is what the suite passes in: every pinned package installed here matches it."""
    differ = []
    for name, version in _constraints().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if Version(installed.base_version) != version and installed != version:
            differ.append(f"{name} {installed} (constraints.txt: {version})")
    assert not differ, f"run scripts/freeze_constraints.sh after testing: {differ}"
