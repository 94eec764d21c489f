"""Optional dependencies, by the feature that needs them and the pip extra that installs them.

`pip install -e ".[hf]"` gives HF import/export (torch, transformers) and `".[notebook]"` gives
Jupyter for docs/notebook.ipynb. A feature calls `require` before it imports them, so a missing
one is one line naming the extra, not a `ModuleNotFoundError` from deep inside.
"""

from __future__ import annotations

import importlib

EXTRAS = {"hf": ("torch", "transformers"), "notebook": ("notebook",)}
"""Extra name (setup.cfg's [options.extras_require]) -> the modules it provides."""


class MissingExtra(ValueError):
    """A feature's optional dependency is not installed; the message names the extra."""


def require(extra: str, feature: str) -> None:
    """Imports the extra's modules; raises MissingExtra naming `extra` if any is missing."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtra(
            f"{feature} needs {' and '.join(missing)}, which the `{extra}` extra installs: "
            f'pip install -e ".[{extra}]" in a checkout, or pip install "llama_fdl[{extra}]".'
        )
