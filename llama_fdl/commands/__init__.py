"""`llama-fdl COMMAND [flags]` (also `python -m llama_fdl COMMAND`): the table of commands.

Each command is a module with `main(argv, typed)` (absl's main, plus the command line as typed)
and `parse_flags(argv)` (absl's flags parser). Only the module of the command that runs is
imported, so a command's flags and imports cost the others nothing. Adding a command is one line
in `COMMANDS`; `launch/<name>.py` wrappers call `run(name, sys.argv[1:], prog)` for users of a
checkout (Bazel, cluster scripts).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Sequence

# TensorFlow (under seqio) logs its CUDA and oneDNN probing at start-up; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclasses.dataclass(frozen=True)
class Command:
    module: str
    """The module holding `main(argv, typed)` and `parse_flags(argv)`."""
    summary: str
    """One line for `llama-fdl help`."""


COMMANDS = {
    "train": Command("llama_fdl.commands.train", "train one experiment: --fdl_config=experiments.NAME"),
    "sweep": Command("llama_fdl.commands.sweep", "run a sweep's points and compare them: --sweep=NAME"),
    "sample": Command(
        "llama_fdl.commands.sample", "continue prompts with a trained run: --workdir=RUN --prompt=TEXT"
    ),
    "export": Command(
        "llama_fdl.commands.export", "write a run's checkpoint as an HF model: --workdir=RUN --out=DIR"
    ),
}
"""Command name -> where it lives. `help` is built in."""


def quiet_logs() -> None:
    """seqio and Orbax log every step of their set-up at INFO; keep the console for the run
    (`--verbosity` or LLAMA_FDL_VERBOSE=1 keep it all: see llama_fdl/console.py)."""
    from llama_fdl import console

    console.quiet_libraries()


def run(name: str, args: Sequence[str], prog: str) -> None:
    """Runs command `name` on `args` (the flags after the command name) as absl's app.run does."""
    from absl import app

    from llama_fdl import host_memory

    host_memory.reexec_with_huge_pages()  # first: glibc reads the malloc tunable only at start-up
    module = importlib.import_module(COMMANDS[name].module)
    typed = list(args)
    try:
        app.run(lambda argv: module.main(argv, typed), argv=[prog, *typed], flags_parser=module.parse_flags)
    except SystemExit as e:
        if e.code not in (None, 0):  # after the one-line error, which is to stay stderr's last line
            from llama_fdl import console

            console.silence_stderr_from_here()
        raise


def help_text(name: str | None = None) -> str:
    """`llama-fdl help`: the commands; `llama-fdl help COMMAND`: what it does and its flags."""
    if name is None:
        width = max(len(n) for n in COMMANDS)
        lines = ["usage: llama-fdl COMMAND [--flag=value ...]", "", "Commands:"]
        lines += [f"  {n:<{width}}  {c.summary}" for n, c in COMMANDS.items()]
        lines += [f"  {'help':<{width}}  this list; `llama-fdl help COMMAND` shows a command's flags"]
        return "\n".join(lines)
    from absl import flags

    module = importlib.import_module(COMMANDS[name].module)
    own = [module.__name__, "llama_fdl.cli.flags", *getattr(module, "FLAG_MODULES", ())]
    sections = [f"llama-fdl {name}: {(module.__doc__ or '').strip()}"]
    sections += [flags.FLAGS.module_help(m) for m in own if flags.FLAGS.get_flags_for_module(m)]
    return "\n\n".join(sections)


def main(argv: Sequence[str] | None = None) -> None:
    """The `llama-fdl` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv else "help"
    if name in ("help", "-h", "--help"):
        topic = argv[1] if len(argv) > 1 else None
        if topic is not None and topic not in COMMANDS:
            sys.exit(f"error: Unknown command {topic!r}; commands: {', '.join(COMMANDS)}, help.")
        print(help_text(topic))
        return
    if name not in COMMANDS:
        hint = (
            " Flags come after the command: llama-fdl train --fdl_config=..." if name.startswith("-") else ""
        )
        sys.exit(f"error: Unknown command {name!r}; commands: {', '.join(COMMANDS)}, help.{hint}")
    run(name, argv[1:], prog=f"llama-fdl {name}")
