"""The README is executable truth: every command and snippet in it runs, and shows what it says.

Every fenced block of README.md is one of:
  ```bash        shell commands, run in order (a `\\` continues a line; `# ...` ends it);
  ```python      a snippet, run with exec;
  ``` (no tag)   a transcript (`$ COMMAND` lines, each followed by the output it prints), whose
                 commands are run and whose output lines must each be a line of the real output;
  anything else  (```text, or a transcript-less block) must carry a marker, the line before it:
    <!-- readme-test: file PATH -->      each line of the block is a line of PATH once the blocks
                                         above it have run;
    <!-- readme-test: output -->         each line is a line of the previous command's output;
    <!-- readme-test: skip (REASON) -->  not run; the reason says why (needs SLURM, a GPU, ...).
The skip marker also works before a bash or python block. A block without a marker that the
test cannot classify fails the test, so a new block is a decision, not an accident.

Everything runs in a temporary directory that holds links to the checkout's launch/,
experiments/, scripts/, tests/ and docs/, so `runs/small` and the like land there. Step counts
are shrunk by the library's own `--fiddler=smoke` (tiny's sizes, 4 steps) plus
`--fdl.trainer.num_train_steps=4`, added to every command that trains; transcripts of errors run
as written. `llama-fdl` commands run in-process in tests/readme_driver.py, one driver per device
count (XLA_FLAGS), so imports and compiles are paid a few times rather than once per command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import conftest
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHRINK = ["--fiddler=smoke", "--fdl.trainer.num_train_steps=4"]
"""Added to every README command that trains (see the module docstring)."""
LINKED = ("launch", "experiments", "scripts", "tests", "docs", "llama_fdl", "benchmarks")
NOISE = re.compile(
    r"^([IWEF]\d{4} |WARNING: All log messages|\[Gloo\]|.*failed call to cuInit|.*x2num"
    r"|.*Purging expired|.*oneDNN custom operations)"
)
"""Lines a newcomer would take for an error; none may appear in any command's output."""
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->")


@dataclasses.dataclass
class Block:
    lang: str
    body: str
    line: int
    marker: tuple[str, str] | None


def blocks(text: str) -> list[Block]:
    """The fenced blocks of `text`, with the marker comment just above each, if any."""
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(above)
        found.append(
            Block(fence[1], "\n".join(lines[i + 1 : end]), i + 1, marker.groups() if marker else None)
        )
        i = end + 1
    return found


def logical_lines(body: str) -> list[str]:
    """Shell lines with `\\` continuations joined; blank lines and comment-only lines dropped."""
    joined = body.replace("\\\n", " ")
    return [line for line in joined.splitlines() if shlex.split(line, comments=True)]


@dataclasses.dataclass
class Step:
    """One thing to run: a shell command or a snippet, and what its output must contain."""

    where: str
    shell: str | None = None
    argv: list[str] | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    python: str | None = None
    expect_lines: list[str] = dataclasses.field(default_factory=list)
    expect_error: bool = False
    expect_file: tuple[str, list[str]] | None = None


def trains(argv: list[str]) -> bool:
    """Whether a command trains (and so gets SHRINK): train, sweep, or local.py's launches."""
    from readme_driver import command_of

    if any(a in ("--fdl_help", "--dry_run") for a in argv):
        return False
    command = command_of(argv)
    return (command is not None and command[0] in ("train", "sweep")) or "launch/local.py" in argv[:2]


def command_step(line: str, env: dict[str, str], where: str, shrink: bool = True) -> Step | None:
    """A Step for one shell line; `export NAME=VALUE` updates `env` and returns None."""
    argv = shlex.split(line, comments=True)
    assigned = {}
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        name, value = argv.pop(0).split("=", 1)
        assigned[name] = value
    if argv[:1] == ["export"]:
        env.update(dict(a.split("=", 1) for a in argv[1:]))
        return None
    shell = line  # as written, for bash: operators such as && stay operators
    if shrink and trains(argv):
        argv = [*argv, *SHRINK]
        shell = shlex.join([f"{k}={v}" for k, v in assigned.items()] + argv)
    return Step(where, shell=shell, argv=argv, env={**env, **assigned})


def plan(text: str) -> tuple[list[Step], list[str]]:
    """The README's steps in order, and the skipped blocks with their reasons."""
    steps: list[Step] = []
    skipped: list[str] = []
    for block in blocks(text):
        where = f"README.md:{block.line}"
        kind, arg = block.marker or ("", "")
        if kind == "skip":
            assert re.fullmatch(r"\(.+\)", arg), f"{where}: a skip needs a reason in parentheses"
            skipped.append(f"{where} {arg}")
        elif block.lang in ("bash", "sh"):
            env: dict[str, str] = {}
            steps += [s for line in logical_lines(block.body) if (s := command_step(line, env, where))]
        elif block.lang == "python":
            steps.append(Step(where, python=block.body))
        elif kind == "file":
            steps.append(Step(where, expect_file=(arg, block.body.splitlines())))
        elif kind == "output":
            steps[-1].expect_lines += [line for line in block.body.splitlines() if line.strip()]
        elif block.lang == "" and block.body.lstrip().startswith("$ "):
            steps += transcript(block.body, where)
        else:
            pytest.fail(f"{where}: a ```{block.lang} block that is neither run nor marked (see {__file__})")
    return steps, skipped


def transcript(body: str, where: str) -> list[Step]:
    """`$ COMMAND` lines and the output under each."""
    steps: list[Step] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            step = command_step(line[2:], {}, where, shrink=False)  # errors show as written
            assert step is not None, f"{where}: export in a transcript"
            steps.append(step)
        elif line.strip():
            steps[-1].expect_lines.append(line)
            steps[-1].expect_error |= line.startswith("error:")
    return steps


def workspace(tmp: pathlib.Path) -> pathlib.Path:
    """A directory that looks like the checkout to relative paths, but keeps runs/ to itself."""
    for name in LINKED:
        (tmp / name).symlink_to(REPO / name)
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):  # a script, not a link: a venv's python finds its packages
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    (bin_dir / "llama-fdl").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m llama_fdl "$@"\n')
    (bin_dir / "llama-fdl").chmod(0o755)
    return bin_dir


def run_steps(steps: list[Step], cwd: pathlib.Path, bin_dir: pathlib.Path) -> tuple[list[dict], str]:
    """Runs the steps, one driver per environment (default first), in README order within each."""
    results: list[dict | None] = [None] * len(steps)
    noise = ""
    groups: dict[str, list[int]] = {}
    for i, step in enumerate(steps):
        if step.expect_file is None:
            groups.setdefault(json.dumps(step.env, sort_keys=True), []).append(i)
    for key in sorted(groups, key=lambda k: (k != "{}", groups[k][0])):
        todo = [dataclasses.asdict(steps[i]) for i in groups[key]]
        (cwd / ".steps.json").write_text(json.dumps(todo))
        exported = json.loads(key)
        if "XLA_FLAGS" in exported:  # after the test processes' own (conftest.xla_flags)
            exported["XLA_FLAGS"] = conftest.xla_flags(exported["XLA_FLAGS"])
        env = {
            **os.environ,
            **exported,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
        }
        proc = subprocess.run(
            [sys.executable, str(REPO / "tests" / "readme_driver.py"), ".steps.json", ".results.json"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, f"the README driver failed:\n{proc.stderr[-5000:]}"
        noise += proc.stdout + proc.stderr
        for i, result in zip(groups[key], json.loads((cwd / ".results.json").read_text()), strict=True):
            results[i] = result
    return results, noise


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    steps, skipped = plan(README.read_text())
    cwd = tmp_path_factory.mktemp("readme")
    bin_dir = workspace(cwd)
    results, noise = run_steps(steps, cwd, bin_dir)
    commands = sum(s.argv is not None for s in steps)
    in_process = sum(bool(r and r["in_process"]) for r, s in zip(results, steps, strict=True) if s.argv)
    snippets = sum(s.python is not None for s in steps)
    seconds = sum(r["seconds"] for r in results if r)
    print(
        f"\nREADME: {commands} commands ({in_process} in-process), {snippets} snippets, "
        f"{len(skipped)} blocks skipped, {seconds:.0f} s of steps"
    )
    for s in skipped:
        print(f"  skipped {s}")
    timed = sorted(
        ((r["seconds"], s.where, s.shell or "snippet") for s, r in zip(steps, results, strict=True) if r),
        reverse=True,
    )
    for seconds, where, what in timed[:12]:
        print(f"  {seconds:5.1f} s  {where}  {what[:110]}")
    return steps, results, noise, cwd


def _lines(result: dict) -> set[str]:
    return {portable(line) for line in (result["stdout"] + result["stderr"]).splitlines()}


def without_shrink(line: str) -> str:
    """A line of a run's file as it would read without SHRINK: config_diff.txt names the flags
    that changed a value, and the test's own flags are not the README's."""
    for flag in SHRINK:
        line = line.replace(f"{flag}, ", "").replace(f", {flag}", "")
    return line.rstrip()


def portable(line: str) -> str:
    """A line with this interpreter's standard library (the default corpus: its path, and so the
    byte counts the README quotes from it) written the same way on every machine."""
    line = re.sub(r"/\S*/lib/python3\.\d+", "<stdlib>", line)
    return re.sub(r"(<stdlib> has at most) [\d,]+", r"\1 <n>", line).rstrip()


def expected_lines(lines: list[str]) -> list[str]:
    """The lines a block shows, less blank lines and the `...` that marks an elision."""
    return [portable(line) for line in lines if line.strip() and line.strip() != "..."]


def test_every_readme_command_and_snippet_runs_and_shows_what_the_readme_says(readme_run):
    steps, results, _, cwd = readme_run
    failures = []
    for step, result in zip(steps, results, strict=True):
        what = f"{step.where}: {step.shell or (step.python or '')[:60] or step.expect_file}"
        if step.expect_file is not None:
            path, expected = step.expect_file
            text = (cwd / path).read_text() if (cwd / path).exists() else ""
            actual = {without_shrink(line) for line in text.splitlines()}
            missing = [line for line in expected_lines(expected) if line not in actual]
            if missing:
                failures.append(f"{what}: {path} lacks {missing[:3]}")
            continue
        ok = (result["code"] != 0) if step.expect_error else (result["code"] == 0)
        if not ok:
            failures.append(
                f"{what}: exit {result['code']}\n{result['stdout'][-1500:]}{result['stderr'][-1500:]}"
            )
            continue
        missing = [line for line in expected_lines(step.expect_lines) if line not in _lines(result)]
        if missing:
            failures.append(
                f"{what}: output lacks {missing}\n got: {result['stdout'][-800:]}{result['stderr'][-800:]}"
            )
    assert not failures, "\n\n".join(failures)


def test_no_readme_command_prints_a_line_that_reads_like_an_error(readme_run):
    steps, results, noise, _ = readme_run
    outputs = [noise] + [r["stdout"] + r["stderr"] for r in results if r]
    noisy = [line for text in outputs for line in text.splitlines() if NOISE.match(line)]
    assert not noisy, noisy[:10]


def test_the_readme_parser_sees_what_it_must():
    """Control for the parser: markers, continuations, comments, transcripts and shrinking."""
    text = (
        "```bash\nexport XLA_FLAGS=--x=8\npython launch/launch.py --fdl_config=experiments.small \\\n"
        "    --workdir=runs/a   # a comment\n# only a comment\n```\n\n"
        "<!-- readme-test: skip (needs SLURM) -->\n```bash\nsbatch x\n```\n\n"
        "```\n$ python launch/launch.py --fdl_confg=x\nerror: Unknown command line flag 'fdl_confg'.\n```\n"
        "<!-- readme-test: output -->\n```text\nhello\n```\n"
    )
    steps, skipped = plan(text)
    assert skipped == ["README.md:9 (needs SLURM)"]
    assert steps[0].argv == [
        "python",
        "launch/launch.py",
        "--fdl_config=experiments.small",
        "--workdir=runs/a",
        *SHRINK,
    ]
    assert steps[0].env == {"XLA_FLAGS": "--x=8"}
    assert steps[1].argv == ["python", "launch/launch.py", "--fdl_confg=x"] and steps[1].expect_error
    assert steps[1].expect_lines == ["error: Unknown command line flag 'fdl_confg'.", "hello"]
    with pytest.raises(pytest.fail.Exception):
        plan("```text\nan unmarked block\n```\n")


def test_every_relative_link_of_the_readme_points_at_a_file():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links to files of the checkout; the pattern must find them"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, missing
    assert not (REPO / "tpu_pods.md").exists(), "control: a link to it would count as missing"


def test_only_the_stdlib_path_and_its_size_are_made_portable():
    line = "the validation split of /usr/lib/python3.11 has at most 718,140; need 1,600,000 tokens"
    assert portable(line) == "the validation split of <stdlib> has at most <n>; need 1,600,000 tokens"
    assert portable(line) != portable(line.replace("1,600,000", "1,600,001"))  # control
