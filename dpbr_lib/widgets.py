"""Widgets that stay live in the static book, without a kernel.

A figure is drawn for every point of a small grid (say every (ε, b) pair) at build time and
stored as a PNG in a :class:`ipywidgets.Image`. The images sit in nested
:class:`ipywidgets.Stack` s — one level per slider — and each slider's ``index`` is
:func:`ipywidgets.jslink` ed to the ``selected_index`` of every stack of its level. The links run
in the browser's widget manager, so moving a slider in the HTML page swaps the image with no
Python behind it (``interact`` would need a kernel). The notebook's executed output embeds the
widget state; the book serves the widget JavaScript itself (:mod:`dpbr_lib.book_build`).
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets

__all__ = ["figure_png", "grid_explorer"]


def figure_png(figure, *, dpi: int = 96) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it (no figure leaks into the output)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _label(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_explorer(
    render: Callable[..., object],
    axes: Mapping[str, Sequence[object]],
    *,
    descriptions: Mapping[str, str] | None = None,
    initial: Mapping[str, object] | None = None,
) -> widgets.VBox:
    """Sliders over ``axes`` that show ``render(**point)``, drawn beforehand for every point.

    Args:
        render: called once per grid point with one keyword per axis; returns a matplotlib
            figure (rendered with :func:`figure_png`) or PNG bytes.
        axes: ordered ``name -> values`` (one slider each, at most a few values per axis: the
            page holds ``prod(len(values))`` images).
        descriptions: slider labels by axis name (default: the name).
        initial: starting value by axis name (default: each axis's first value).

    Returns:
        A ``VBox`` of the sliders above the nested stacks of images.
    """
    names = list(axes)
    if not names:
        raise ValueError("The 'axes' parameter must name at least one axis. Got {} instead.")
    values = {name: list(axes[name]) for name in names}
    for name, options in values.items():
        if not options:
            raise ValueError(f"The 'axes' parameter must give values for {name!r}. Got [] instead.")
    descriptions = dict(descriptions or {})
    start = {name: values[name][0] for name in names} | dict(initial or {})
    for name, value in start.items():
        if name not in values or value not in values[name]:
            raise ValueError(
                f"The 'initial' parameter must pick a grid value per axis; {name}={value!r} is not "
                f"in {values.get(name)}."
            )

    images = {}
    for point in itertools.product(*(values[name] for name in names)):
        drawn = render(**dict(zip(names, point, strict=True)))
        png = drawn if isinstance(drawn, bytes) else figure_png(drawn)
        images[point] = widgets.Image(value=png, format="png", layout=widgets.Layout(width="auto"))

    start_index = [values[name].index(start[name]) for name in names]
    sliders = [
        widgets.SelectionSlider(
            options=[(_label(v), v) for v in values[name]],
            index=index,  # by position: a grid value may be None (e.g. "no noise")
            description=descriptions.get(name, name),
            continuous_update=True,
            style={"description_width": "initial"},
            layout=widgets.Layout(width="28em"),
        )
        for name, index in zip(names, start_index, strict=True)
    ]

    def stack(level: int, prefix: tuple) -> widgets.Widget:
        if level == len(names):
            return images[prefix]
        children = [stack(level + 1, (*prefix, v)) for v in values[names[level]]]
        node = widgets.Stack(children, selected_index=start_index[level])
        widgets.jslink((sliders[level], "index"), (node, "selected_index"))
        return node

    return widgets.VBox([*sliders, stack(0, ())])

