"""docs/notebook.ipynb runs headless from top to bottom, so the walkthrough cannot rot."""

import pathlib
import time

import nbformat
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "notebook.ipynb"


def test_notebook_runs_and_trains():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the failing cell, on any error
    print(f"notebook ran in {time.perf_counter() - start:.0f} s")
    outputs = ["".join(o.get("text", "") for o in cell.get("outputs", [])) for cell in notebook.cells]
    text = "\n".join(outputs)
    assert "model.config.dtype = 'bfloat16'  # tags: DType" in text
    assert "model.config.num_blocks: 4 -> 2" in text
    assert "config.svg" in text and "config_diff.txt" in text
    assert "train/loss" in text
    picture = [
        o for cell in notebook.cells for o in cell.get("outputs", []) if "image/svg+xml" in o.get("data", {})
    ]
    assert picture, "the graph picture did not render (is graphviz's dot installed? scripts/setup.sh)"
