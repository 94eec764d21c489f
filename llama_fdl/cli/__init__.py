"""Config tooling for the launcher, the runner and notebooks: the Fiddle side of llama_fdl.

  library     experiments and fiddlers by name, with nearest-name errors and --fdl_help
  overrides   the override language (--fiddler, --fdl_tag, --fdl_set/--fdl.) and who changed what
  paths       dotted paths into a graph, with "did you mean" for typos
  typecheck   values against the dataclass and function annotations, before anything is built
  flatten     a graph as `path = value` lines and as a path -> value mapping
  diff        what one graph changed against another, and which flag changed it
  render      the graph as an SVG picture (graphviz)
  safe_load   loading a config file that may only reference an allowlist of modules

Everything here raises `ConfigError` for bad input: one sentence naming what was wrong and what
would be right.
"""


class ConfigError(ValueError):
    """A bad experiment, fiddler, path, value or config file, stated for a person in one line."""
