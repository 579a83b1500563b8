"""Notebooks: each runs through papermill on ``smoke``; bad parameters fail in the check cell.

The smoke runs are the ones the strict book build made (``test_book.build_smoke_book``); the
rerun paths (``dpbr rerun`` and the documented ``jupytext | papermill`` one-liner) run the theory
chapter again with new parameters.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from test_book import build_smoke_book

from dpbr_lib import notebook_runner
from dpbr_lib.notebook_runner import between, check_parameters, one_of

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.md"))
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> Path:
    return build_smoke_book(tmp_path_factory)


def _code_cells(notebook) -> list:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


# --------------------------------------------------------------------------- every notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_ran_on_smoke_without_errors(smoke_book, path):
    notebook = json.loads((smoke_book / "_executed" / f"{path.stem}.ipynb").read_text())
    assert notebook["metadata"]["papermill"]["parameters"] == {"profile": "smoke"}
    errors = [o for cell in _code_cells(notebook) for o in cell["outputs"]
              if o["output_type"] == "error"]
    assert not errors
    assert all(cell["execution_count"] for cell in _code_cells(notebook))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_typed_commented_and_checked_next(path):
    notebook = notebook_runner.read_notebook(path)
    declared = notebook_runner.declared_parameters(notebook)
    assert declared["profile"].default == "quick"
    assert declared["profile"].annotation == "str"
    assert all(item.comment for item in declared.values()), "every parameter needs a comment"

    cells = _code_cells(notebook)
    position = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    assert position == 1, "one imports cell, then the parameters cell"
    call = ast.parse(_source(cells[position + 1])).body[0].value
    assert call.func.id == "check_parameters" and call.args[0].func.id == "globals"
    assert {kw.arg for kw in call.keywords} <= set(declared)
    assert "profile" in {kw.arg for kw in call.keywords}


# --------------------------------------------------------------------------- check_parameters
def _namespace(history_after_parameters: list[str], **values) -> dict:
    """A kernel namespace after the parameters cell, injected cells and the check cell ran."""
    annotations = {"epsilon": float, "batch_size": int, "rules": list[str], "profile": str,
                   "label": str | None}
    defaults = {"epsilon": 0.5, "batch_size": 64, "rules": ["mda"], "profile": "quick",
                "label": None}
    params = "\n".join(f"{k}: {t} = {v!r}" for k, t, v in [
        ("epsilon", "float", 0.5), ("batch_size", "int", 64), ("rules", "list[str]", ["mda"]),
        ("profile", "str", "quick"), ("label", "str | None", None)])
    return {"__annotations__": annotations, **defaults, **values,
            "In": ["", "import x", params, *history_after_parameters, "check_parameters(...)"]}


CONSTRAINTS = {
    "epsilon": between(0, 1, low_open=True, high_open=True),
    "batch_size": between(1, None),
    "rules": one_of(["mda", "krum"]),
    "profile": one_of(notebook_runner.PROFILES),
}


def test_check_parameters_accepts_overrides_and_writes_converted_values_back():
    namespace = _namespace(["# Parameters\nepsilon = 0.3\nbatch_size = 8\n"],
                           epsilon=0.3, batch_size=8)
    assert check_parameters(namespace, **CONSTRAINTS) == {
        "epsilon": 0.3, "batch_size": 8, "rules": ["mda"], "profile": "quick", "label": None,
    }
    integer = _namespace(["epsilon = 1"], epsilon=1)
    checked = check_parameters(integer, epsilon=between(0, 2))
    # An int where a float is declared is converted, in the result and in the namespace.
    assert type(checked["epsilon"]) is float and checked["epsilon"] == 1.0
    assert type(integer["epsilon"]) is float


@pytest.mark.parametrize(
    ("injected", "values", "error", "message"),
    [
        ("epsilonn = 0.3", {"epsilonn": 0.3}, ValueError, r"Unknown parameter 'epsilonn'"),
        ("epsilon = 'big'", {"epsilon": "big"}, TypeError, r"'epsilon' parameter must be a real"),
        ("batch_size = 2.5", {"batch_size": 2.5}, TypeError, r"'batch_size' .* must be an int"),
        ("batch_size = 0", {"batch_size": 0}, ValueError, r"'batch_size' .* in \[1, inf\)"),
        ("epsilon = 1.5", {"epsilon": 1.5}, ValueError, r"'epsilon' .* in \(0, 1\)"),
        ("rules = ['mda', 'krun']", {"rules": ["mda", "krun"]}, ValueError, r"'rules' .* 'krun'"),
        ("rules = 'mda'", {"rules": "mda"}, TypeError, r"'rules' parameter must be list\[str\]"),
        ("label = 3", {"label": 3}, TypeError, r"'label' parameter must be str \| None"),
        ("profile = True", {"profile": True}, TypeError, r"'profile' parameter must be str"),
    ],
)
def test_check_parameters_names_the_bad_parameter(injected, values, error, message):
    with pytest.raises(error, match=message):
        check_parameters(_namespace([injected], **values), **CONSTRAINTS)


def test_check_parameters_needs_the_parameters_cell_and_known_constraints():
    with pytest.raises(ValueError, match="run the cell tagged 'parameters'"):
        check_parameters({"In": []})
    with pytest.raises(ValueError, match="undeclared parameters"):
        check_parameters(_namespace([]), epsilonn=between(0, 1))


def test_declared_parameters_rejects_untyped_or_logic_lines():
    def notebook(source):
        return {"cells": [{"cell_type": "code", "source": source,
                           "metadata": {"tags": ["parameters"]}}]}

    declared = notebook_runner.declared_parameters(notebook("eps: float = 0.2  # budget ε\n"))
    assert declared["eps"] == notebook_runner.Declared("eps", "float", 0.2, "budget ε")
    with pytest.raises(ValueError, match="only typed assignments"):
        notebook_runner.declared_parameters(notebook("eps = 0.2\n"))
    with pytest.raises(ValueError, match="no code cell tagged 'parameters'"):
        notebook_runner.declared_parameters({"cells": []})


@pytest.mark.parametrize(("text", "value"), [
    ("0.3", 0.3), ("100", 100), ("[0, 1]", [0, 1]), ("None", None), ("True", True),
    ("krum", "krum"), ("tcp://host:8786", "tcp://host:8786"),
])
def test_parse_value(text, value):
    assert notebook_runner.parse_value(text) == value


# --------------------------------------------------------------------------- real kernels
TINY = """\
---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---
```{code-cell} ipython3
from dpbr_lib.notebook_runner import between, check_parameters
```
```{code-cell} ipython3
:tags: [parameters]
epsilon: float = 0.5  # budget
```
```{code-cell} ipython3
check_parameters(globals(), epsilon=between(0, 1, low_open=True))
```
```{code-cell} ipython3
print("work done with", epsilon)
```
"""


def test_bad_parameter_stops_papermill_in_the_check_cell(tmp_path):
    """In a real kernel (type and range errors take the same path: see the unit tests above)."""
    source = tmp_path / "tiny.md"
    source.write_text(TINY)
    with pytest.raises(ValueError, match="Unknown parameter 'epsilonn'") as caught:
        notebook_runner.execute(source, tmp_path / "out.ipynb", {"epsilonn": 0.3})
    assert "failed in cell 4" in str(caught.value)  # imports, parameters, injected, check
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert not _code_cells(executed)[-1].get("outputs")  # the work cell never ran


def test_parallel_execution_runs_every_notebook_and_raises_the_failure(tmp_path):
    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_text(TINY)
    bad.write_text(TINY.replace("epsilon: float = 0.5", "epsilon: float = 5.0"))  # out of range
    messages: list[str] = []
    with pytest.raises(ValueError, match=r"bad\.md failed in cell 3"):
        notebook_runner.execute_all(
            [(bad, tmp_path / "bad.ipynb"), (good, tmp_path / "good.ipynb")], {},
            report=messages.append, workers=2,
        )
    assert sorted(m.split(":")[0] for m in messages) == ["bad", "good"]
    assert notebook_runner.stored_key(tmp_path / "good.ipynb") is not None  # kept for next time
    assert notebook_runner.stored_key(tmp_path / "bad.ipynb") is None


def test_dpbr_rerun_rejects_an_unknown_parameter_by_name(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dpbr_lib.cli", "rerun", "theory_bounds",
         "-p", "epsilonn", "0.3", "--out", str(tmp_path / "x.ipynb")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Unknown parameter 'epsilonn'" in result.stderr


def _checked_parameters(path: Path) -> dict:
    """The dict the check cell displayed (the values the chapter ran with)."""
    notebook = json.loads(path.read_text())
    cells = _code_cells(notebook)
    check = next(c for c in cells if _source(c).startswith("check_parameters"))
    (output,) = [o for o in check["outputs"] if o["output_type"] == "execute_result"]
    return ast.literal_eval("".join(output["data"]["text/plain"]))


def test_dpbr_rerun_runs_the_chapter_with_new_parameters(tmp_path):
    out = tmp_path / "rerun.ipynb"
    subprocess.run(
        [sys.executable, "-m", "dpbr_lib.cli", "rerun", "theory_bounds", "-p", "profile", "smoke",
         "-p", "epsilon", "0.3", "-p", "batch_size", "100", "--out", str(out)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    checked = _checked_parameters(out)
    assert (checked["epsilon"], checked["batch_size"], checked["profile"]) == (0.3, 100, "smoke")


def test_documented_jupytext_papermill_one_liner(tmp_path):
    out = tmp_path / "out.ipynb"
    command = (
        f"{BIN / 'jupytext'} --to ipynb -o - {ROOT / 'notebooks' / 'theory_bounds.md'} | "
        f"{BIN / 'papermill'} - {out} -p profile smoke -p epsilon 0.3 -p batch_size 100"
    )
    subprocess.run(command, shell=True, check=True, capture_output=True, cwd=ROOT)
    checked = _checked_parameters(out)
    assert (checked["epsilon"], checked["batch_size"]) == (0.3, 100)


def test_the_device_constraint_accepts_what_the_machine_has():
    assert notebook_runner.a_device().check("device", "cpu") == "cpu"
    assert notebook_runner.a_device().check("device", "auto") == "auto"
    with pytest.raises(ValueError, match="'device' parameter must be a device this machine has"):
        notebook_runner.a_device().check("device", f"cuda:{max(torch.cuda.device_count(), 99)}")
