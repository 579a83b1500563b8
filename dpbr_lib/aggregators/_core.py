"""The machinery shared by every rule: specs, registries, options, composition, non-finite rows.

A *rule* maps ``Tensor[n, d]`` to ``Tensor[d]``; a *pre-aggregation* maps ``Tensor[n, d]`` to
``Tensor[n', d]`` and composes in front of any rule (``"nnm+krum"``). Both are plain functions
registered with :func:`rule` / :func:`pre_aggregation`; their keyword-only parameters are their
options, so the list of valid options comes from one place, the signature.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from dpbr_lib._registry import Registry
from dpbr_lib._validation import (
    check_byzantine_count,
    check_float,
    check_gradients,
    check_int,
    check_same_kind,
    finite_rows,
)

#: Signature of a bound transform: (bound of the rule behind, n, f, options) -> bound.
BoundTransform = Callable[[float | None, int, int, Mapping[str, Any]], float | None]


# ---------------------------------------------------------------------------------------------
# Option checks, one per option name (every rule using the name shares its meaning).


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


def _tensor_1d(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or not value.is_floating_point():
        raise TypeError(
            f"The {name!r} parameter must be a 1-D floating-point torch.Tensor of shape (d,). "
            f"Got {value!r} instead."
        )
    return value


def _generator(name: str, value: object) -> torch.Generator:
    if not isinstance(value, torch.Generator):
        raise TypeError(
            f"The {name!r} parameter must be a torch.Generator. Got {value!r} instead."
        )
    return value


_OPTION_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "m": _optional(lambda k, v: check_int(k, v, low=1)),
    "tol": lambda k, v: check_float(k, v, low=0.0, low_open=True),
    "max_iter": lambda k, v: check_int(k, v, low=1),
    "nu": lambda k, v: check_float(k, v, low=0.0, low_open=True),
    "tau": lambda k, v: check_float(k, v, low=0.0, low_open=True),
    "iterations": lambda k, v: check_int(k, v, low=1),
    "init": _optional(_tensor_1d),
    "bucket_size": lambda k, v: check_int(k, v, low=1),
    "seed": _optional(lambda k, v: check_int(k, v, low=0)),
    "generator": _optional(_generator),
}


def _option_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """Keyword-only parameters of ``fn`` with their defaults: the rule's options."""
    params = inspect.signature(fn).parameters.values()
    options = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(_OPTION_CHECKS))
    assert not unknown, f"{fn.__name__}: options {unknown} have no check in _OPTION_CHECKS"
    return options


# ---------------------------------------------------------------------------------------------
# Specs and registries.


@dataclass(frozen=True)
class _Component:
    """What rules and pre-aggregations share: a function, its options, its validity condition."""

    name: str
    fn: Callable[..., torch.Tensor]
    min_n: Callable[[int], int]  # smallest n the component accepts for f
    condition: str  # the same condition for people, e.g. "n >= 2f + 3"
    extra_check: Callable[[int, int, Mapping[str, Any]], None] | None = None
    resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)

    def check(self, n: int, f: int, options: Mapping[str, Any], origin: str = "") -> None:
        """Raise ``ValueError`` unless n, f meet the condition; ``origin`` says where n came
        from when an earlier stage changed it."""
        if n < self.min_n(f):
            kind = "pre-aggregation" if isinstance(self, PreAggregation) else "rule"
            raise ValueError(
                f"The {self.name!r} {kind} needs {self.condition} "
                f"(n >= {self.min_n(f)} for f = {f}). Got n = {n}{origin}, f = {f} instead."
            )
        if self.extra_check is not None:
            self.extra_check(n, f, options)


@dataclass(frozen=True)
class Rule(_Component):
    """A robust aggregation rule ``fn(gradients[n, d], f, **options) -> Tensor[d]``."""

    kappa: Callable[[int, int], float | None] = lambda n, f: None
    robust: bool = True  # False only for the plain average (non-finite rows are not dropped)


@dataclass(frozen=True)
class PreAggregation(_Component):
    """A pre-aggregation ``fn(gradients[n, d], f, **options) -> Tensor[n', d]``."""

    out_n: Callable[[int, Mapping[str, Any]], int] = lambda n, options: n
    kappa: BoundTransform = lambda inner, n, f, options: None


RULES: Registry[Rule] = Registry("aggregation rule")
PRE_AGGREGATIONS: Registry[PreAggregation] = Registry("pre-aggregation")


def _min_n_two_f_plus_one(f: int) -> int:
    return 2 * f + 1


def rule(
    name: str,
    *,
    min_n: Callable[[int], int] = _min_n_two_f_plus_one,
    condition: str = "n >= 2f + 1",
    kappa: Callable[[int, int], float | None] | None = None,
    robust: bool = True,
    extra_check: Callable[[int, int, Mapping[str, Any]], None] | None = None,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register ``fn(gradients, f, **options)`` as the aggregation rule ``name``."""

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        RULES.register(
            name,
            Rule(
                name=name,
                fn=fn,
                min_n=min_n,
                condition=condition,
                extra_check=extra_check,
                defaults=_option_defaults(fn),
                kappa=kappa or (lambda n, f: None),
                robust=robust,
            ),
        )
        return fn

    return add


def pre_aggregation(
    name: str,
    *,
    out_n: Callable[[int, Mapping[str, Any]], int],
    kappa: BoundTransform,
    min_n: Callable[[int], int] = _min_n_two_f_plus_one,
    condition: str = "n >= 2f + 1",
    resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register ``fn(gradients, f, **options) -> Tensor[n', d]`` as a pre-aggregation."""

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        PRE_AGGREGATIONS.register(
            name,
            PreAggregation(
                name=name,
                fn=fn,
                min_n=min_n,
                condition=condition,
                resolve=resolve,
                defaults=_option_defaults(fn),
                out_n=out_n,
                kappa=kappa,
            ),
        )
        return fn

    return add


# ---------------------------------------------------------------------------------------------
# The public object.


class Aggregator:
    """A rule, optionally behind pre-aggregations, with its options bound: ``agg(gradients, f)``.

    Calling it checks the input (2-D, non-empty, floating point, ``f >= 0``, the validity
    condition of every stage) before any work. Then, for every pipeline but the bare
    ``average``, **rows holding a NaN or an infinity are dropped and ``n`` and ``f`` both
    shrink by their count**: such a row
    cannot come from an honest worker, so removing it leaves at most ``f - k`` Byzantine rows
    among ``n - k``, and every validity condition ``n >= a f + b`` (``a >= 1``) still holds.
    More than ``f`` such rows contradict ``f`` and raise ``ValueError``. The plain ``average``
    is not robust and propagates NaN and infinities, as the arithmetic mean does.
    """

    def __init__(
        self,
        pre: tuple[PreAggregation, ...],
        rule: Rule,
        options: Mapping[str, Any],
    ) -> None:
        self._pre = pre
        self._rule = rule
        self._stages: tuple[_Component, ...] = (*pre, rule)
        self.name = "+".join(stage.name for stage in self._stages)
        accepted = {key for stage in self._stages for key in stage.defaults}
        unknown = sorted(set(options) - accepted)
        if unknown:
            valid = ", ".join(sorted(accepted)) or "none"
            raise ValueError(
                f"Unknown option(s) {', '.join(map(repr, unknown))} for the {self.name!r} "
                f"aggregator. Valid options: {valid}."
            )
        self._options = [_bind_options(stage, options) for stage in self._stages]

    @property
    def options(self) -> dict[str, Any]:
        """The resolved options of every stage (defaults filled in)."""
        return {key: value for opts in self._options for key, value in opts.items()}

    def check(self, n: int, f: int) -> None:
        """Raise ``ValueError`` naming ``n``, ``f`` and the condition if a stage cannot run.

        For a composition each pre-aggregation checks ``(n, f)``, then the next stage checks
        the number of vectors it receives (``ceil(n / s)`` after bucketing) with the same f.
        """
        check_byzantine_count(n, f)
        origin = ""
        for stage, options in zip(self._stages, self._options, strict=True):
            stage.check(n, f, options, origin)
            if isinstance(stage, PreAggregation) and stage.out_n(n, options) != n:
                origin = f" vectors out of {stage.name!r} (from n = {n} rows)"
                n = stage.out_n(n, options)

    def bound(self, n: int, f: int) -> float | None:
        """The VN-ratio bound kappa(n, f) of the whole pipeline, ``None`` if none is known.

        The rule's own bound is evaluated at the ``(n', f)`` it receives; each pre-aggregation
        then maps it back to the workers' gradients (see ``kappa`` of each pre-aggregation).
        """
        self.check(n, f)
        sizes = [n]
        for stage, options in zip(self._pre, self._options, strict=False):
            sizes.append(stage.out_n(sizes[-1], options))
        kappa = self._rule.kappa(sizes[-1], f)
        for stage, options, size in reversed(
            list(zip(self._pre, self._options, sizes, strict=False))
        ):
            kappa = stage.kappa(kappa, size, f, options)
        return kappa

    def __call__(self, gradients: torch.Tensor, f: int) -> torch.Tensor:
        gradients = check_gradients(gradients)  # [n, d]
        f = check_int("f", f, low=0)
        self.check(gradients.shape[0], f)
        for key in ("init",):
            value = self.options.get(key)
            if value is not None:
                _check_vector(key, value, gradients)
        if self._pre or self._rule.robust:
            gradients, f = drop_non_finite_rows(gradients, f)  # [n - k, d]
        for stage, options in zip(self._stages, self._options, strict=True):
            gradients = stage.fn(gradients, f, **options)  # [n', d], then [d]
        return gradients

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.options.items() if not isinstance(v, torch.Generator)}
        return f"Aggregator({self.name!r}, options={shown})"


def _bind_options(stage: _Component, options: Mapping[str, Any]) -> dict[str, Any]:
    bound = dict(stage.defaults)
    for key in stage.defaults:
        if key in options:
            bound[key] = _OPTION_CHECKS[key](key, options[key])
    return stage.resolve(bound) if stage.resolve is not None else bound


def _check_vector(name: str, value: torch.Tensor, gradients: torch.Tensor) -> None:
    if value.shape != gradients.shape[1:]:
        raise ValueError(
            f"The {name!r} parameter must have shape ({gradients.shape[1]},) like one gradient "
            f"row. Got shape {tuple(value.shape)} instead."
        )
    check_same_kind(f"{name} and gradients", [value, gradients])


def drop_non_finite_rows(gradients: torch.Tensor, f: int) -> tuple[torch.Tensor, int]:
    """Remove rows holding NaN or +-Inf; return the rest and ``f`` reduced by their count."""
    finite = finite_rows(gradients)  # [n] bool
    dropped = int((~finite).sum())
    if dropped == 0:
        return gradients, f
    if dropped > f:
        raise ValueError(
            f"The 'gradients' parameter has {dropped} rows with NaN or infinite values, more "
            f"than f = {f}; such rows are certainly Byzantine, so f must be at least {dropped}."
        )
    return gradients[finite], f - dropped  # [n - dropped, d]


def get(name: str, **options: Any) -> Aggregator:
    """The aggregator ``name`` (``"krum"``, or composed ``"nnm+krum"``) with its options bound.

    Each option goes to every stage whose function takes it; an option no stage takes is an
    error listing the valid ones.

    >>> get("nnm+krum").name
    'nnm+krum'
    >>> get("multi_krum", m=3).options
    {'m': 3}
    """
    if not isinstance(name, str):
        raise TypeError(f"The 'name' parameter must be a str. Got {name!r} instead.")
    *pre_names, rule_name = name.split("+")
    if rule_name in PRE_AGGREGATIONS:
        raise ValueError(
            f"{rule_name!r} is a pre-aggregation: put a rule after it, e.g. "
            f"'{rule_name}+median'. Rules: {', '.join(names())}."
        )
    pre = tuple(PRE_AGGREGATIONS.get(p) for p in pre_names)
    return Aggregator(pre, RULES.get(rule_name), options)


def names() -> list[str]:
    """Names of the registered aggregation rules (without pre-aggregations), sorted."""
    return RULES.names()


def pre_aggregation_names() -> list[str]:
    """Names of the registered pre-aggregations, which compose as ``"<pre>+<rule>"``."""
    return PRE_AGGREGATIONS.names()


def sqrt_or_none(value: float | None, factor: float) -> float | None:
    """``sqrt(factor) * value``, keeping ``None`` (no known bound) as ``None``."""
    return None if value is None else math.sqrt(factor) * value
