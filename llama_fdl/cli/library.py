"""Experiments and fiddlers by name (`small`, `experiments.small`, `long_context(1024)`), and --fdl_help.

The library is a module with an `EXPERIMENTS` and a `FIDDLERS` tuple of names (see experiments/).
A dotted name outside it (`mypackage.configs.big`) is imported: whoever types the command line
chooses what it runs, unlike a config file, which safe_load checks.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pathlib
import re
import sys
import types
from collections.abc import Callable
from typing import Any

import fiddle as fdl
from fiddle import tagging
from fiddle.experimental import auto_config

from llama_fdl.cli import ConfigError, flatten
from llama_fdl.cli.paths import ranked


def parse_call(expression: str, kind: str) -> tuple[str, tuple, dict[str, Any]]:
    """`name` or `name(literal, key=literal)` -> (name, args, kwargs)."""
    match = re.fullmatch(r"\s*([\w.]+)\s*(\(.*\))?\s*", expression, flags=re.S)
    if not match:
        raise ConfigError(f"The {kind} `{expression}` is not a name or a call like `name(arg, key=value)`.")
    name, call = match.groups()
    if not call:
        return name, (), {}
    try:
        node = ast.parse(expression.strip(), mode="eval").body
        assert isinstance(node, ast.Call)
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        if any(k.arg is None for k in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
            raise ValueError("no * or ** arguments")
    except (SyntaxError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"The {kind} `{expression}` needs literal arguments, like `{name}(1024)` or "
            f"`{name}(size=4)`; strings need quotes ({type(e).__name__})."
        ) from e
    return name, args, kwargs


def lookup(name: str, library: types.ModuleType, known: tuple[str, ...], kind: str) -> Callable:
    prefix = library.__name__ + "."
    short = name.removeprefix(prefix)
    if short in known:
        return getattr(library, short)
    if "." in short and not name.startswith(prefix):
        module_name, _, attr = name.rpartition(".")
        try:
            return getattr(_import_from_cwd(module_name), attr)
        except (ImportError, AttributeError) as e:
            hint = ""
            if isinstance(e, ModuleNotFoundError) and e.name == module_name.split(".")[0]:
                hint = (
                    f" (looked on sys.path and in the current directory {pathlib.Path.cwd()}; run "
                    f"from the directory that holds {e.name}.py, or add that directory to PYTHONPATH)"
                )
            raise ConfigError(f"Cannot load the {kind} `{name}`: {e}{hint}.") from e
    raise ConfigError(f"Unknown {kind} {name!r}; available: {', '.join(ranked(short, known))}.")


def _import_from_cwd(module_name: str) -> types.ModuleType:
    """Imports `module_name`, also from the current directory, as `python -m` would find it.

    `llama-fdl` and `python launch/launch.py` put their own directory first on sys.path, not the
    current one, so an experiment in `./mine.py` would be found only with PYTHONPATH set.
    """
    cwd = str(pathlib.Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # after the installed packages: a local file never shadows them
    return importlib.import_module(module_name)


def experiment(expression: str, library: types.ModuleType) -> fdl.Buildable:
    """The graph of the experiment `expression` names (and calls with its arguments, if any)."""
    name, args, kwargs = parse_call(expression, "experiment")
    fn = lookup(name, library, library.EXPERIMENTS, "experiment")
    if auto_config.is_auto_config(fn):
        fn = fn.as_buildable  # the function's body, with every call it makes turned into a config
    bind(fn, args, kwargs, f"--fdl_config={expression}")
    cfg = fn(*args, **kwargs)
    if not isinstance(cfg, fdl.Buildable):
        raise ConfigError(f"--fdl_config={expression} returned a {type(cfg).__name__}, not a fdl.Config.")
    return cfg


def apply_fiddler(
    cfg: fdl.Buildable, expression: str | Callable, library: types.ModuleType, label: str
) -> fdl.Buildable:
    """Calls the fiddler `expression` names on `cfg`; returns the graph it changed or returned.

    A fiddler may change the graph in place and return None, or return a new graph (fiddle
    allows both). `expression` is a library name, a dotted name, a call with literal arguments,
    or a file `PATH.py` holding a function named like the file (a run's config_diff.py); or,
    from code, the function itself.
    """
    if callable(expression):
        fn, args, kwargs = expression, (), {}
    elif expression.strip().endswith(".py"):
        fn, args, kwargs = fiddler_file(expression.strip()), (), {}
    else:
        name, args, kwargs = parse_call(expression, "fiddler")
        fn = lookup(name, library, library.FIDDLERS, "fiddler")
    bind(fn, (cfg, *args), kwargs, label, skip=1)
    try:
        result = fn(cfg, *args, **kwargs)
    except ValueError as e:  # a fiddler refusing this graph says why; the flag says where
        raise ConfigError(f"{label}: {e}") from e
    if result is None:
        return cfg
    if not isinstance(result, fdl.Buildable):
        raise ConfigError(
            f"{label} returned a {type(result).__name__}; a fiddler changes the graph and returns "
            "None, or returns the new graph."
        )
    return result


def fiddler_file(path: str) -> Callable:
    """The function named like the file `path` (`runs/x/config_diff.py` -> `config_diff`)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"--fiddler={path}: no such file; give a .py file such as RUN/config_diff.py.")
    spec = importlib.util.spec_from_file_location(f"_fiddler_file_{abs(hash(str(file.resolve())))}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, file.stem, None)
    if not callable(fn):
        found = [n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")]
        raise ConfigError(
            f"--fiddler={path}: the file defines no function `{file.stem}` (named like the file); "
            f"it has: {', '.join(found) or 'no functions'}."
        )
    return fn


def bind(fn: Callable, args: tuple, kwargs: dict, label: str, skip: int = 0) -> None:
    """Checks the arguments against the signature, so a bad one is named before anything runs."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(
            f"{label}: {e}; it takes {getattr(fn, '__name__', fn)}{_arguments(fn, skip)}."
        ) from e


def _arguments(fn: Callable, skip: int) -> str:
    """`(sequence_length: int = 1024)`: the parameters a user passes, without the graph."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return f"({', '.join(str(p) for p in params)})"


def one_line_doc(fn: Callable) -> str:
    return (inspect.getdoc(fn) or "(no docstring)").strip().splitlines()[0]


def help_text(library: types.ModuleType, cfg: fdl.Buildable | None = None) -> str:
    """What --fdl_help prints: the library with one-line docs, then the graph's tags and settings."""
    lines = [f"Experiments (--fdl_config={library.__name__}.NAME):"]
    sweeps = getattr(library, "sweeps", None)  # experiments/sweeps.py, for `llama-fdl sweep`
    width = max(len(n) for n in library.EXPERIMENTS + library.FIDDLERS + getattr(sweeps, "SWEEPS", ()))
    for name in library.EXPERIMENTS:
        lines.append(f"  {name:<{width}}  {one_line_doc(getattr(library, name))}")
    lines += ["", "Fiddlers (--fiddler=NAME or --fiddler='NAME(ARGS)', applied in the order given):"]
    for name in library.FIDDLERS:
        fn = getattr(library, name)
        lines.append(f"  {name:<{width}}  {one_line_doc(fn)}")
        if len(inspect.signature(fn).parameters) > 1:
            lines.append(f"  {'':<{width}}  takes {name}{_arguments(fn, skip=1)}")
    if sweeps is not None:
        lines += ["", f"Sweeps (llama-fdl sweep --sweep={sweeps.__name__}.NAME):"]
        lines += [f"  {name:<{width}}  {one_line_doc(getattr(sweeps, name))}" for name in sweeps.SWEEPS]
    if cfg is None:
        lines += ["", "Add --fdl_config=NAME to see its tags and settings."]
        return "\n".join(lines)
    lines += ["", "Tags (--fdl_tag.NAME=VALUE sets every value carrying the tag):"]
    tags = sorted(tagging.list_tags(cfg), key=lambda t: t.__name__)
    lines += [f"  {t.__name__:<{width}}  {t.description}" for t in tags] or ["  (none)"]
    lines += ["", "Settings (--fdl.PATH=VALUE or --fdl_set=PATH=VALUE):"]
    lines += ["  " + line for line in flatten.as_text(cfg).splitlines()]
    return "\n".join(lines)
