"""Every tutorial notebook runs top to bottom with the reference solutions
filled into its exercise cells."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = os.path.join(ROOT, "tutorials")
NOTEBOOKS = sorted(f for f in os.listdir(TUTORIALS) if f.endswith(".ipynb"))


def fill_in_solutions(nb):
    """Replace each exercise stub by an import of its reference solution."""
    filled = 0
    for cell in nb.cells:
        if "exercise" in cell.metadata.get("tags", []):
            module, name = cell.metadata["solution"].split(":")
            cell.source = (f"import sys, os\nsys.path.insert(0, {ROOT!r})\n"
                           f"from tutorials.solutions.{module} import {name}")
            filled += 1
    return filled


def test_there_are_eight_notebooks_in_order():
    assert [n[:2] for n in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07", "08"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_outputs_are_stripped(name):
    nb = nbformat.read(os.path.join(TUTORIALS, name), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


# The notebooks with nothing to fill in: training and comparing (06), measurements (07, 08).
WITHOUT_EXERCISES = {"06_training.ipynb", "07_why_residuals_work.ipynb", "08_fast_convolution.ipynb"}


def _exercise_cells(nb):
    return [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stubs_raise_until_solved(name):
    nb = nbformat.read(os.path.join(TUTORIALS, name), as_version=4)
    stubs = _exercise_cells(nb)
    # Not vacuous: every notebook but the listed one must have exercises (and the list stays true).
    assert bool(stubs) == (name not in WITHOUT_EXERCISES), f"{name}: {len(stubs)} exercise cells"
    assert all("NotImplementedError" in c.source for c in stubs)
    assert all(":" in c.metadata.get("solution", "") for c in stubs), "each exercise names its solution"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_with_solutions(name, tmp_path, monkeypatch):
    # 07 trains three 32-layer nets for a few minutes; this runs its cells at sizes that only check they work
    monkeypatch.setenv("MINIRES_NOTEBOOK_QUICK", "1")
    nb = nbformat.read(os.path.join(TUTORIALS, name), as_version=4)
    filled = fill_in_solutions(nb)
    assert bool(filled) == (name not in WITHOUT_EXERCISES)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": TUTORIALS}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    # each solved exercise is checked by one minires.exercises.check_* call, which prints this once
    assert outputs.count("all cases passed") >= filled
