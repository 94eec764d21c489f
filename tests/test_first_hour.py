"""A newcomer's edges: quiet libraries, missing extras, own-module experiments, short runs, profiling."""

from __future__ import annotations

import os
import sys

import pytest

import experiments
from llama_fdl import console, extras, optim
from llama_fdl.cli import ConfigError, library
from llama_fdl.commands import train as train_command


def test_quiet_stderr_hides_cxx_lines_unless_verbose(capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with console.quiet_stderr():
        os.write(2, b"E0000 failed call to cuInit\n")  # as a C++ library writes: to the descriptor
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    # Control: LLAMA_FDL_VERBOSE=1 keeps the line, so the check above can see one.
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    with console.quiet_stderr():
        os.write(2, b"E0000 failed call to cuInit\n")
    assert capfd.readouterr().err == "E0000 failed call to cuInit\n"


def test_a_python_error_inside_quiet_stderr_still_reaches_the_console(capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with pytest.raises(ImportError), console.quiet_stderr():
        raise ImportError("no module named tensorflow")
    os.write(2, b"restored\n")
    assert capfd.readouterr().err == "restored\n"  # descriptor 2 is back


def test_startup_phases_print_only_when_slow(monkeypatch):
    said = []
    startup = console.Startup(say=said.append)
    with startup.phase("fast"):
        pass
    monkeypatch.setattr(console, "SLOW_PHASE_S", -1.0)  # every phase counts as slow
    with startup.phase("loading the data"):
        pass
    startup.first_step_done()
    startup.first_step_done()
    assert said[0].startswith("loading the data: ") and said[0].endswith(" s")
    assert len(said) == 2 and said[1].startswith("First step done ")
    seconds = float(said[1].split()[3])
    assert 0 < seconds < 3600  # counted from this process's start, which /proc gives


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    from llama_fdl.model import hf

    extras.require("hf", "Reading an HF model")  # control: installed here, so nothing to say
    monkeypatch.setitem(sys.modules, "transformers", None)  # Python's own way to block an import
    with pytest.raises(extras.MissingExtra) as e:
        hf.read_hf_config("/nowhere")
    assert str(e.value).startswith("Reading an HF model needs transformers, which the `hf` extra installs")
    assert 'pip install -e ".[hf]"' in str(e.value) and "\n" not in str(e.value)


def test_every_extra_is_declared_in_setup_cfg():
    import configparser

    from launcher import REPO

    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    declared = parser["options.extras_require"]
    for extra, modules in extras.EXTRAS.items():
        names = [line.split(">")[0].split("=")[0].strip() for line in declared[extra].split("\n") if line]
        assert set(modules) <= set(names), (extra, names)


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """`mine.py` with an experiment, in a directory that is not on sys.path."""
    (tmp_path / "mine.py").write_text(
        "import experiments\n\ndef wide():\n    cfg = experiments.tiny()\n"
        "    cfg.model.config.embedding_dim = 64\n    return cfg\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mine", raising=False)
    yield tmp_path
    sys.modules.pop("mine", None)


def test_an_experiment_in_the_current_directory_loads_as_python_m_would(own_module, monkeypatch):
    monkeypatch.chdir(own_module)
    cfg = library.experiment("mine.wide", experiments)
    assert cfg.model.config.embedding_dim == 64


def test_an_own_module_that_is_not_found_says_where_it_looked(own_module, tmp_path_factory, monkeypatch):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError) as e:
        library.experiment("mine.wide", experiments)
    message = str(e.value)
    assert "No module named 'mine'" in message and str(elsewhere) in message
    assert "run from the directory that holds mine.py, or add that directory to PYTHONPATH" in message


def test_a_run_shorter_than_its_warmup_names_the_flag_to_use():
    with pytest.raises(ValueError) as e:
        optim.warmup_cosine(3e-3, warmup_steps=100, total_steps=40, final_fraction=0.1)
    assert "add --fdl.optimizer.warmup_steps=4" in str(e.value)
    optim.warmup_cosine(3e-3, warmup_steps=4, total_steps=40, final_fraction=0.1)  # the hint works


def test_profile_steps_past_the_run_are_refused_in_one_line():
    train_command._check_profile_steps((3, 4), 20)  # control: inside the run
    train_command._check_profile_steps(None, 20)
    with pytest.raises(ValueError) as e:
        train_command._check_profile_steps((15, 30), 20)
    assert str(e.value) == (
        "--profile_steps=15,30 reaches past the run's last step 20 (trainer.num_train_steps); "
        "trace steps within 1..20."
    )


def test_a_finished_run_answers_nothing_to_do_from_its_directory(tmp_path):
    """The rerun of a finished run loads no data, prints no sharding table and compiles nothing."""
    import copy
    import shutil

    from launcher import launch

    from llama_fdl import runner

    cfg = experiments.tiny()
    experiments.smoke(cfg, steps=2)
    workdir = tmp_path / "run"
    runner.run(cfg, workdir)
    assert runner.finished(cfg, workdir) == 2
    longer = copy.deepcopy(cfg)
    longer.trainer.num_train_steps = 3
    assert runner.finished(longer, workdir) is None  # control: another experiment is not finished
    layout = (workdir / "sharding.txt").stat().st_mtime_ns

    result = launch("--fdl_config=experiments.tiny", "--fiddler=smoke(steps=2)", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        result.stdout == f"Nothing to do: {workdir} already reached step 2; its evals are in TensorBoard.\n"
    )
    assert result.stderr == ""  # and nothing from the libraries either
    assert (workdir / "sharding.txt").stat().st_mtime_ns == layout

    shutil.move(workdir / "checkpoints" / "2", tmp_path / "2")  # as if killed before its last save
    assert runner.finished(cfg, workdir) is None  # control: a run short of its end has work to do


def test_local_launcher_leaves_gloos_connection_lines_out_of_process_0s_stream():
    import importlib.util
    import io

    from launcher import REPO

    spec = importlib.util.spec_from_file_location("local_launcher", REPO / "launch" / "local.py")
    local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local)
    child = "Starting runs/tiny2 from scratch.\n[Gloo] Rank 0 is connected to 1 peer ranks. ...\nstep 5/20\n"
    quiet, loud = io.StringIO(), io.StringIO()
    local._copy_lines(io.StringIO(child), quiet, drop=local.GLOO_CHATTER)
    local._copy_lines(io.StringIO(child), loud, drop=None)  # control: what LLAMA_FDL_VERBOSE=1 shows
    assert quiet.getvalue() == "Starting runs/tiny2 from scratch.\nstep 5/20\n"
    assert loud.getvalue() == child
