"""Argument checks shared by every public function.

One message template, after scikit-learn's: "The 'x' parameter must be ... Got ... instead."
``TypeError`` for a wrong type, ``ValueError`` for a wrong value. Checks run before any work.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real

import torch


def _fail(name: str, expected: str, value: object, error: type[Exception] = ValueError) -> None:
    raise error(f"The {name!r} parameter must be {expected}. Got {value!r} instead.")


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as ``int`` if it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        _fail(name, "an int", value, TypeError)
    value = int(value)  # type: ignore[arg-type]
    if (low is not None and value < low) or (high is not None and value > high):
        _fail(name, f"an int in {_interval(low, high, False, False)}", value)
    return value


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as ``float`` if it is a finite real number in the given interval."""
    if isinstance(value, bool) or not isinstance(value, Real):
        _fail(name, "a real number", value, TypeError)
    value = float(value)  # type: ignore[arg-type]
    expected = f"a finite number in {_interval(low, high, low_open, high_open)}"
    if math.isnan(value) or math.isinf(value):
        _fail(name, expected, value)
    if low is not None and (value < low or (low_open and value == low)):
        _fail(name, expected, value)
    if high is not None and (value > high or (high_open and value == high)):
        _fail(name, expected, value)
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; the error lists them."""
    options = list(choices)
    if value not in options:
        _fail(name, f"one of {', '.join(map(repr, options))}", value)
    return value  # type: ignore[return-value]


def check_device(name: str, value: object) -> torch.device:
    """A usable ``torch.device`` from ``value``: ``None`` or ``"cpu"`` is the CPU, ``"auto"`` the
    first GPU when there is one, else a device string or ``torch.device`` whose backend this
    machine has (``"cuda"``, ``"cuda:1"``, ``"mps"``)."""
    if value is None:
        return torch.device("cpu")
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        _fail(name, "'cpu', 'cuda', 'cuda:N', 'mps', 'auto' or a torch.device", value)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            _fail(name, f"a device this machine has ({count} CUDA device(s))", value)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        _fail(name, "a device this machine has (no MPS backend)", value)
    elif device.type not in ("cpu", "cuda", "mps"):
        _fail(name, "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'", value)
    return device


def check_gradients(gradients: object, name: str = "gradients") -> torch.Tensor:
    """Check a stacked gradient matrix ``Tensor[n, d]``: 2-D, non-empty, floating point."""
    if not isinstance(gradients, torch.Tensor):
        _fail(name, "a torch.Tensor of shape (n, d)", type(gradients).__name__, TypeError)
    assert isinstance(gradients, torch.Tensor)
    if gradients.dim() != 2:
        _fail(name, "a 2-D tensor of shape (n, d)", f"shape {tuple(gradients.shape)}")
    if gradients.shape[0] == 0 or gradients.shape[1] == 0:
        _fail(name, "non-empty (n >= 1 and d >= 1)", f"shape {tuple(gradients.shape)}")
    if not gradients.is_floating_point():
        _fail(name, "a floating-point tensor", f"dtype {gradients.dtype}", TypeError)
    return gradients


def check_same_kind(name: str, tensors: Iterable[torch.Tensor]) -> None:
    """All tensors share one dtype and one device (mixed inputs are an error, not a cast)."""
    items = list(tensors)
    kinds = {(t.dtype, t.device) for t in items}
    if len(kinds) > 1:
        _fail(name, "tensors of one dtype and device", sorted(map(str, kinds)))


def check_byzantine_count(n: int, f: int, *, minimum_n: int | None = None, rule: str = "") -> None:
    """``0 <= f`` and, when given, ``n >= minimum_n`` (the rule's validity condition)."""
    check_int("f", f, low=0)
    check_int("n", n, low=1)
    if minimum_n is not None and n < minimum_n:
        who = f"The {rule!r} rule" if rule else "This rule"
        raise ValueError(
            f"{who} needs n >= {minimum_n} for f = {f}. Got n = {n} instead."
        )


def finite_rows(gradients: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[n]`` of rows whose every coordinate is finite.

    One row sum serves as the screen: it is non-finite iff the row holds a NaN or an infinity,
    or its finite values overflow when summed; only the rows it flags (rare) get the exact
    elementwise check. (An elementwise ``isfinite`` over ``[n, d]`` costs as much as a rule at
    large d.)
    """
    mask = torch.isfinite(gradients.sum(dim=1))  # [n]
    if not bool(mask.all()):
        suspects = (~mask).nonzero().squeeze(1)  # [k]
        mask[suspects] = torch.isfinite(gradients[suspects]).all(dim=1)
    return mask
