"""Run the book's notebooks with papermill and check their parameters.

Every notebook holds a ``parameters`` cell of typed, commented assignments
(``epsilon: float = 0.2  # privacy budget``) and, right after it, a cell that calls
:func:`check_parameters`. Papermill injects overrides as a plain cell (``epsilon = 0.3``) between
the two, so inside the kernel the declared names and types are ``__annotations__`` and the
overrides are the assignments executed since the parameters cell (IPython's ``In`` history).
A misspelled name, a wrong type or an out-of-range value therefore fails before any work, with a
message naming the parameter, whether the notebook runs in the book build, through
``dpbr rerun`` or through ``jupytext --to ipynb -o - nb.md | papermill - out.ipynb -p ...``.

Executions are cached: :func:`execute_cached` skips a notebook whose text, parameters and library
source are unchanged since the stored run (the key sits in the executed notebook's metadata).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import math
import os
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dpbr_lib import _validation, allocator

#: The profiles every notebook understands (CI-sized, the book's default, the paper's grids).
PROFILES: tuple[str, ...] = ("smoke", "quick", "paper")

#: Names IPython defines in every user namespace; never parameters.
_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})

_PACKAGE = Path(__file__).resolve().parent

#: Thread settings the kernels start with unless the caller's environment sets them. Two torch
#: threads on two cores that other processes share make every small op wait for a descheduled
#: thread (measured here: DLG on the smoke profile, 65 s with two threads under load, 0.7 s with
#: one); the sweep's pool workers set their own thread count.
KERNEL_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class Constraint:
    """A value rule applied to a parameter (or to each element of a list parameter)."""

    check: Callable[[str, object], object]  #: ``(name, value) -> value``, raising if it breaks


def between(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Constraint:
    """The value lies in the interval from ``low`` to ``high`` (closed unless ``*_open``).

    >>> between(0, 1, low_open=True).check("epsilon", 0.5)
    0.5
    """

    def check(name: str, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return _validation.check_int(
                name,
                value,
                low=None if low is None else _int_bound(low, low_open, +1),
                high=None if high is None else _int_bound(high, high_open, -1),
            )
        return _validation.check_float(
            name, value, low=low, high=high, low_open=low_open, high_open=high_open
        )

    return Constraint(check)


def _int_bound(bound: float, open_: bool, direction: int) -> int:
    """The tightest integer inside an (open or closed) real bound."""
    if direction > 0:
        return math.floor(bound) + 1 if open_ or bound != math.floor(bound) else int(bound)
    return math.ceil(bound) - 1 if open_ or bound != math.ceil(bound) else int(bound)


def one_of(choices: Iterable[str]) -> Constraint:
    """The value is one of ``choices`` (pass a registry's ``names()`` so the list cannot drift).

    >>> one_of(PROFILES).check("profile", "smoke")
    'smoke'
    """
    options = tuple(choices)
    return Constraint(lambda name, value: _validation.check_choice(name, value, options))


def a_device() -> Constraint:
    """The value names a device this machine has (:func:`dpbr_lib._validation.check_device`):
    ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"``.

    >>> a_device().check("device", "cpu")
    'cpu'
    """

    def check(name: str, value: object) -> object:
        _validation.check_device(name, value)
        return value

    return Constraint(check)


# --------------------------------------------------------------------------- declared parameters
@dataclass(frozen=True)
class Declared:
    """One entry of a notebook's parameters cell."""

    name: str
    annotation: str  #: the annotation as written, e.g. ``"float"`` or ``"list[int]"``
    default: object  #: the literal default value
    comment: str  #: the trailing comment (what the parameter means, allowed values)


def parameters_cell(notebook: Mapping) -> Mapping:
    """The code cell tagged ``parameters`` of a notebook (nbformat node or dict)."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    raise ValueError("The notebook has no code cell tagged 'parameters'.")


def declared_parameters(notebook: Mapping) -> dict[str, Declared]:
    """Parse the parameters cell: every statement must be ``name: type = literal  # comment``."""
    source = _cell_source(parameters_cell(notebook))
    lines = source.splitlines()
    declared: dict[str, Declared] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            raise ValueError(
                "The parameters cell must hold only typed assignments 'name: type = value'; "
                f"line {node.lineno} is {lines[node.lineno - 1].strip()!r}."
            )
        if node.value is None:
            raise ValueError(f"The parameter {node.target.id!r} has no default value.")
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line[node.value.end_col_offset :] else ""
        declared[node.target.id] = Declared(
            name=node.target.id,
            annotation=ast.unparse(node.annotation),
            default=ast.literal_eval(node.value),
            comment=comment,
        )
    return declared


def _cell_source(cell: Mapping) -> str:
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


# --------------------------------------------------------------------------- in-kernel check
def check_parameters(namespace: dict, **constraints: Constraint) -> dict[str, object]:
    """Check the notebook's parameters in place; call it in the cell after the parameters cell.

    ``namespace`` is the notebook's ``globals()``. The declared parameters are its
    ``__annotations__``; values are checked against the annotated type (an ``int`` is accepted
    and converted where a ``float`` is declared), then against ``constraints`` (keyword = the
    parameter name). A name assigned since the parameters cell that is not declared — papermill's
    injected ``-p epsilonn 0.3`` — is an error. Returns the checked values, in declared order.

    Raises:
        ValueError: an unknown parameter, a value out of range, or a constraint for an
            undeclared name.
        TypeError: a value of the wrong type.
    """
    declared: dict[str, object] = dict(namespace.get("__annotations__", {}))
    if not declared:
        raise ValueError("No declared parameters: run the cell tagged 'parameters' first.")
    stray = sorted(set(constraints) - set(declared))
    if stray:
        raise ValueError(
            f"Constraints given for undeclared parameters {stray}; declared: {sorted(declared)}."
        )
    unknown = sorted(_assigned_since_parameters(namespace, declared) - set(declared))
    if unknown:
        raise ValueError(
            f"Unknown parameter {unknown[0]!r} (all unknown: {', '.join(unknown)}). "
            f"This notebook declares: {', '.join(declared)}."
        )
    checked: dict[str, object] = {}
    for name, annotation in declared.items():
        value = _check_type(name, namespace[name], annotation)
        if name in constraints and value is not None:
            rule = constraints[name].check
            value = [rule(name, item) for item in value] if isinstance(value, list) else rule(
                name, value
            )
        namespace[name] = checked[name] = value
    return checked


def _assigned_since_parameters(namespace: Mapping, declared: Mapping) -> set[str]:
    """Names assigned by the cells run after the last parameters cell (the injected overrides)."""
    history = list(namespace.get("In", []))[:-1]  # the last entry is the running cell
    names: set[str] = set()
    for source in reversed(history):
        try:
            tree = ast.parse(source)
        except SyntaxError:  # IPython magics are not Python; they assign no parameters
            continue
        if any(
            isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) in declared
            for node in tree.body
        ):
            break  # reached the parameters cell itself
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if not name.startswith("_") and name not in _IPYTHON_NAMES}


def _check_type(name: str, value: object, annotation: object) -> object:
    """``value`` converted to ``annotation`` (bool, int, float, str, None, list[...], unions)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            with contextlib.suppress(TypeError, ValueError):  # try the next member of the union
                return _check_type(name, value, option)
        raise TypeError(
            f"The {name!r} parameter must be {_type_name(annotation)}. Got {value!r} instead."
        )
    if origin is list:
        if not isinstance(value, list | tuple):
            raise TypeError(
                f"The {name!r} parameter must be {_type_name(annotation)}. Got {value!r} instead."
            )
        (item_type,) = typing.get_args(annotation) or (object,)
        return [_check_type(name, item, item_type) for item in value]
    if annotation is float:
        return _validation.check_float(name, value)
    if annotation is int:
        return _validation.check_int(name, value)
    if annotation is None or annotation is type(None):
        if value is not None:
            raise TypeError(f"The {name!r} parameter must be None. Got {value!r} instead.")
        return None
    if annotation is object:
        return value
    if isinstance(annotation, type):
        wrong_bool = annotation is not bool and isinstance(value, bool)
        if wrong_bool or not isinstance(value, annotation):
            raise TypeError(
                f"The {name!r} parameter must be {_type_name(annotation)}. Got {value!r} instead."
            )
        return value
    raise TypeError(f"The parameter {name!r} has an unsupported annotation {annotation!r}.")


def _type_name(annotation: object) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


# --------------------------------------------------------------------------- command-line values
def parse_value(text: str) -> object:
    """A ``-p NAME VALUE`` value: a Python literal (``0.3``, ``[0, 1]``, ``None``) or a string.

    >>> parse_value("0.3"), parse_value("[0, 1]"), parse_value("krum")
    (0.3, [0, 1], 'krum')
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# --------------------------------------------------------------------------- execution
def read_notebook(path: str | Path):
    """The notebook at ``path`` (Jupytext text form or ``.ipynb``) as an nbformat node."""
    import jupytext

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"The 'notebook' parameter must be an existing file. Got {str(path)!r}.")
    return jupytext.read(path)


def execute(
    source: str | Path,
    output: str | Path,
    parameters: Mapping[str, object] | None = None,
    *,
    cwd: str | Path | None = None,
    progress: bool = False,
) -> Path:
    """Execute ``source`` with papermill into ``output`` (``.ipynb``) with ``parameters``.

    Raises ``ValueError`` with the failing cell's error when the notebook fails (the executed
    notebook, up to the failing cell, is still written to ``output`` for inspection).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = read_notebook(source)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _kernel_environment():
            papermill.execute_notebook(
                notebook,
                str(output),
                parameters=dict(parameters or {}),
                cwd=None if cwd is None else str(cwd),
                progress_bar=progress,
            )
    except PapermillExecutionError as error:
        raise ValueError(
            f"{source} failed in cell {error.exec_count}: {error.ename}: {error.evalue} "
            f"(executed notebook: {output})"
        ) from None
    return output


@contextlib.contextmanager
def _kernel_environment():
    """:data:`KERNEL_THREADS` and :func:`dpbr_lib.allocator.environment` for the kernels
    started inside, where the caller set none."""
    wanted = {**KERNEL_THREADS, **allocator.environment()}
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def library_hash() -> str:
    """SHA-256 over the source of every module of :mod:`dpbr_lib` (a change re-executes)."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def execution_key(source: str | Path, parameters: Mapping[str, object], library: str) -> str:
    """The cache key of one execution: notebook text, parameters and library source."""
    digest = hashlib.sha256(Path(source).read_bytes())
    digest.update(json.dumps(dict(parameters), sort_keys=True, default=repr).encode())
    digest.update(library.encode())
    return digest.hexdigest()


def stored_key(output: str | Path) -> str | None:
    """The cache key stored in an executed notebook, ``None`` if there is none."""
    try:
        metadata = json.loads(Path(output).read_text())["metadata"]
    except (OSError, ValueError, KeyError):
        return None
    return metadata.get("dpbr", {}).get("execution_key")


def execute_cached(
    source: str | Path,
    output: str | Path,
    parameters: Mapping[str, object] | None = None,
    *,
    cwd: str | Path | None = None,
    library: str | None = None,
) -> bool:
    """Execute like :func:`execute` unless ``output`` holds a run with the same key.

    Returns ``True`` if the notebook was executed, ``False`` if the stored run was reused.
    """
    import nbformat

    parameters = dict(parameters or {})
    key = execution_key(source, parameters, library_hash() if library is None else library)
    if stored_key(output) == key:
        return False
    execute(source, output, parameters, cwd=cwd)
    notebook = nbformat.read(output, as_version=4)
    notebook.metadata["dpbr"] = {"execution_key": key, "parameters": parameters}
    nbformat.write(notebook, output)
    return True


def _timed_execution(
    source: Path, output: Path, parameters: Mapping[str, object], cwd, library: str
) -> tuple[bool, float]:
    start = time.perf_counter()
    ran = execute_cached(source, output, parameters, cwd=cwd, library=library)
    return ran, time.perf_counter() - start


def execute_all(
    jobs: Iterable[tuple[Path, Path]],
    parameters: Mapping[str, object],
    *,
    cwd: str | Path | None = None,
    report: Callable[[str], None] = print,
    workers: int | None = None,
) -> list[Path]:
    """Run :func:`execute_cached` over ``(source, output)`` pairs, ``workers`` at a time.

    The kernels run single-threaded (:data:`KERNEL_THREADS`), so by default as many notebooks
    run at once as there are cores. A failing notebook does not stop the others (their runs are
    stored for the next build); the first failure is raised once every notebook has run.
    """
    jobs = [(Path(source), Path(output)) for source, output in jobs]
    workers = _validation.check_int(
        "workers", workers if workers is not None else os.cpu_count() or 1, low=1
    )
    library = library_hash()
    if workers == 1 or len(jobs) <= 1:
        for source, output in jobs:
            ran, seconds = _timed_execution(source, output, parameters, cwd, library)
            report(f"{source.stem}: {'executed' if ran else 'reused'} in {seconds:.1f} s")
        return [output for _, output in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # no state of this process leaks in
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        futures = {
            pool.submit(_timed_execution, source, output, dict(parameters), cwd, library): source
            for source, output in jobs
        }
        failure = None
        for future in as_completed(futures):
            try:
                ran, seconds = future.result()
            except Exception as error:  # raised below, once every notebook has run
                failure = failure or error
                report(f"{futures[future].stem}: failed ({error})")
                continue
            report(f"{futures[future].stem}: {'executed' if ran else 'reused'} in {seconds:.1f} s")
    if failure is not None:
        raise failure
    return [output for _, output in jobs]
