"""Runs a list of README steps in one process, for tests/test_readme.py.

    python tests/readme_driver.py STEPS.json RESULTS.json      (cwd: the README's working directory)

Each step is a shell command (`{"shell": "...", "argv": [...] or null}`) or a Python snippet
(`{"python": "..."}`). A command that runs the `train`, `sweep` or `sample` command
(`llama-fdl train ...`, `python launch/launch.py ...`, `python -m llama_fdl sweep ...`) runs here,
in-process, as `llama_fdl.commands.run` would run it minus its huge-page re-exec: the imports
and the JIT are paid once per process instead of once per command, which is what keeps the
README test within the test command's budget. Anything else (export, whose --step flag collides
with sample's, shell commands, `python -c`) runs in bash. A snippet runs with `exec` in a namespace
of its own. Each step's exit status, stdout and stderr go to RESULTS.json.

jax fixes its device count when it starts, so the test starts one driver per XLA_FLAGS value.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app, flags  # noqa: E402

from llama_fdl import commands  # noqa: E402

WRAPPERS = {f"launch/{name}.py": name for name in commands.COMMANDS} | {"launch/launch.py": "train"}
"""launch/<name>.py -> the command it wraps."""
IN_PROCESS = ("train", "sweep", "sample")
"""Commands whose flags can share one process (export's --step would collide with sample's);
the others run in bash, as a user would run them."""


def command_of(argv: list[str] | None) -> tuple[str, list[str]] | None:
    """(command name, its flags) when `argv` runs a llama-fdl command; None for anything else."""
    if not argv:
        return None
    if argv[0] == "llama-fdl" and len(argv) > 1 and argv[1] in commands.COMMANDS:
        return argv[1], argv[2:]
    if argv[0] in ("python", "python3"):
        if len(argv) > 1 and argv[1] in WRAPPERS:
            return WRAPPERS[argv[1]], argv[2:]
        if argv[1:3] == ["-m", "llama_fdl"] and len(argv) > 3 and argv[3] in commands.COMMANDS:
            return argv[3], argv[4:]
    return None


def run_command(name: str, args: list[str]) -> int:
    """One llama-fdl command in this process: absl's parsing and main, as app.run does them."""
    import importlib

    module = importlib.import_module(commands.COMMANDS[name].module)
    flags.FLAGS.unparse_flags()  # the previous command's values must not leak into this one
    try:
        argv = module.parse_flags([f"llama-fdl {name}", *args])
        module.main(argv, list(args))
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("error: ...") prints its message, status 1
        return 1
    except app.UsageError as e:
        print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
        return 1
    return 0


def run_step(step: dict, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    out, err = io.StringIO(), io.StringIO()
    command = command_of(step.get("argv"))
    if step.get("python") is not None:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                exec(compile(step["python"], "<README snippet>", "exec"), {"__name__": "__readme__"})
                code = 0
            except Exception:  # the test shows the traceback of a snippet that fails
                traceback.print_exc()
                code = 1
    elif command is not None and command[0] in IN_PROCESS:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_command(*command)
    else:
        proc = subprocess.run(["bash", "-c", step["shell"]], capture_output=True, text=True, env=env)
        code, out, err = proc.returncode, io.StringIO(proc.stdout), io.StringIO(proc.stderr)
    return {
        "code": code,
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "seconds": time.perf_counter() - started,
        "in_process": (command is not None and command[0] in IN_PROCESS) or step.get("python") is not None,
    }


def main() -> None:
    steps = json.loads(pathlib.Path(sys.argv[1]).read_text())
    results = [run_step(step, dict(os.environ)) for step in steps]
    pathlib.Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
