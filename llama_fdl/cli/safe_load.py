"""Loading a config file that may only reference an allowlist of modules.

A Fiddle JSON file names Python callables ("pyrefs": module + name), and building the graph calls
them, so a file from elsewhere could run `os.system`. Every reference is read from the JSON and
checked before fiddle imports anything; then the load itself runs under a PyrefPolicy that checks
each imported value again, which catches a name that an allowed module merely re-exports
(`llama_fdl.train.checkpoint.subprocess`).

What is allowed: anything public defined in `ALLOWED_PACKAGES`, the few Fiddle types a graph is
made of (not the rest of fiddle, which has helpers that import by name), and container builtins.
This stops references to anything else and to private helpers; it is not a sandbox: the allowed
packages are large, and a crafted file could still misuse their public functions (numpy.load of
a pickle, say). Load config files you would run as code.
"""

from __future__ import annotations

import inspect
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import fiddle as fdl
from fiddle.experimental import serialization

from llama_fdl.cli import ConfigError

ALLOWED_PACKAGES = (
    "llama_fdl",
    "experiments",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpy",
    "seqio",
    "orbax",
)
"""Top-level packages whose callables a config file may reference."""
ALLOWED_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "bytes")
"""Builtins fiddle uses to serialize containers; nothing that evaluates or opens anything."""
FIDDLE_TYPES = (
    ("fiddle._src.config", "Config"),
    ("fiddle._src.config", "BuildableTraverserMetadata"),
    ("fiddle._src.partial", "Partial"),
    ("fiddle._src.partial", "ArgFactory"),
    ("fiddle._src.tagging", "TaggedValueCls"),
)
"""The Fiddle classes a serialized graph is made of."""


def allowed(module: str, name: str) -> bool:
    if module == "builtins":
        return name in ALLOWED_BUILTINS
    if module.split(".")[0] == "fiddle":
        return (module, name) in FIDDLE_TYPES
    # `a.b` would reach through an allowed module to anything it imports; `_x` is a private helper.
    if not name.isidentifier() or name.startswith("_"):
        return False
    return module.split(".")[0] in ALLOWED_PACKAGES


def references(node: Any) -> Iterator[tuple[str, str]]:
    """(module, name) of every Python reference in a parsed Fiddle JSON document."""
    if isinstance(node, dict):
        if node.get("type") == "pyref":
            yield str(node.get("module")), str(node.get("name"))
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


class AllowlistPolicy(serialization.PyrefPolicy):
    """Imports only allowlisted references, and only values that live in allowlisted modules."""

    def allows_import(self, module: str, symbol: str) -> bool:
        return allowed(module, symbol)

    def allows_value(self, value: Any) -> bool:
        if inspect.ismodule(value):
            return False
        home = getattr(value, "__module__", None) or getattr(inspect.getmodule(value), "__name__", "")
        return home.split(".")[0] in ("builtins", "fiddle", *ALLOWED_PACKAGES)

    def __str__(self) -> str:
        return "llama_fdl.cli.safe_load.AllowlistPolicy"


def load(path: str | pathlib.Path) -> fdl.Buildable:
    """The graph saved in `path` (e.g. RUN/config.json), refusing references outside the allowlist."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"Cannot read the config file {path}: {e.strerror}.") from e
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not JSON ({e.msg} at line {e.lineno}); pass a RUN/config.json.") from e
    for module, name in references(document):
        if not allowed(module, name):
            raise ConfigError(
                f"{path} refers to {module}.{name}, outside what a config file may use "
                f"({', '.join(ALLOWED_PACKAGES)}, Fiddle's config types and container builtins); "
                "refusing to load it."
            )
    try:
        cfg = serialization.load_json(text, pyref_policy=AllowlistPolicy())
    except serialization.PyrefPolicyError as e:
        raise ConfigError(
            f"{path} refers to {e.module}.{e.symbol}, which is not defined in an allowed package; "
            "refusing to load it."
        ) from e
    except (KeyError, TypeError, AttributeError, ImportError, serialization.DeserializationError) as e:
        raise ConfigError(
            f"{path} is not a Fiddle config this code can load ({type(e).__name__}: {e})."
        ) from e
    if not isinstance(cfg, fdl.Buildable):
        raise ConfigError(f"{path} holds a {type(cfg).__name__}, not a Fiddle config.")
    return cfg
