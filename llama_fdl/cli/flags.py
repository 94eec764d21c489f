"""The command line's experiment flags, and the graph they describe.

`--fdl_config`, `--fdl_config_file`, `--fiddler`, `--fdl_set`, `--fdl_tags_set` and `--fdl_help`
used to come from `import fiddle.absl_flags`, which defines fiddle's deprecated legacy flags as a
side effect of being imported. They are defined here instead, with the same names, defaults and
meanings, and read by llama_fdl.cli.overrides. A process that imports this module must not import
`fiddle.absl_flags` too: absl refuses a flag name defined by two modules.

`--workdir`, `--traceback` and the compilation cache's flags are here as well, because every
command (train, sweep, sample, export) takes them and a flag may be defined only once per process.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence

from absl import flags

from llama_fdl import compilation_cache
from llama_fdl.cli import ConfigError, library, overrides, safe_load

FDL_CONFIG = flags.DEFINE_string(
    "fdl_config", None, "The base graph: an experiment name, experiments.NAME or NAME(ARGS)."
)
FDL_CONFIG_FILE = flags.DEFINE_string(
    "fdl_config_file", None, "The base graph: a saved RUN/config.json (Fiddle JSON, checked before loading)."
)
FIDDLER = flags.DEFINE_multi_string(
    "fiddler",
    [],
    "A fiddler, NAME or 'NAME(ARGS)', applied to the base graph in the order given.",
)
FDL_SET = flags.DEFINE_multi_string(
    "fdl_set", [], "PATH=VALUE: set one value of the graph. Usually spelled --fdl.PATH=VALUE."
)
FDL_TAGS_SET = flags.DEFINE_multi_string(
    "fdl_tags_set", [], "TAG=VALUE: set every value carrying a tag. Usually spelled --fdl_tag.TAG=VALUE."
)
FDL_HELP = flags.DEFINE_bool(
    "fdl_help", False, "List the experiments and fiddlers; with a base graph, also its tags and settings."
)
WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "train: the run directory, default runs/<experiment name>; sweep: the sweep's directory, one "
    "run directory per point (running again resumes); sample, export: the trained run to read.",
)
TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of an error.")
COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "Save compiled programs in --compilation_cache_dir and reuse them."
)
COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir",
    str(compilation_cache.default_dir()),
    "Directory of JAX's persistent compilation cache.",
)


def parse(argv: list[str]) -> list[str]:
    """absl's parsing, with the --fdl./--fdl_tag. shorthands, and its errors on one line (exit 2)."""
    try:
        return flags.FLAGS(overrides.rewrite_shorthands(argv))
    except (flags.Error, ConfigError) as e:
        print(f"error: {e} (--helpfull lists every flag)", file=sys.stderr)
        sys.exit(2)


def graph(typed: Sequence[str], lib: types.ModuleType) -> tuple[overrides.Applied, str]:
    """The experiment graph the flags describe, and what its diff is against.

    Args:
      typed: the command line as typed, so that each override is labelled the way it was spelled.
      lib: the experiment library (a module with EXPERIMENTS and FIDDLERS).
    """
    base, against = base_graph(lib)
    todo = overrides.from_flags(FIDDLER.value, FDL_TAGS_SET.value, FDL_SET.value, typed)
    return overrides.apply(base, todo, lib), against


def base_graph(lib: types.ModuleType):
    """The graph --fdl_config or --fdl_config_file names, before any override; and its name."""
    if FDL_CONFIG.value and FDL_CONFIG_FILE.value:
        raise ConfigError("Pass either --fdl_config or --fdl_config_file, not both.")
    if FDL_CONFIG.value:
        return library.experiment(FDL_CONFIG.value, lib), FDL_CONFIG.value
    if FDL_CONFIG_FILE.value:
        return safe_load.load(FDL_CONFIG_FILE.value), FDL_CONFIG_FILE.value
    raise ConfigError(
        "Name an experiment: --fdl_config=experiments.NAME or --fdl_config_file=RUN/config.json "
        "(--fdl_help lists the experiments)."
    )


def base_flag() -> str:
    """The flag that named the base graph, as a command line would spell it."""
    if FDL_CONFIG.value:
        return f"--fdl_config={FDL_CONFIG.value}"
    return f"--fdl_config_file={FDL_CONFIG_FILE.value}"
