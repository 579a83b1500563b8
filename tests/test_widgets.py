"""Offline widgets: the embedded state links each slider to the stacks that show the right image."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from ipywidgets.embed import embed_data
from test_book import build_smoke_book

from dpbr_lib.widgets import figure_png, grid_explorer

PREFIX = "IPY_MODEL_"


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> Path:
    return build_smoke_book(tmp_path_factory)


def _point_bytes(epsilon, batch_size) -> bytes:
    return f"eps={epsilon};b={batch_size}".encode()


def _state(view) -> dict:
    """The widget-manager state as the notebook (and so the static page) embeds it."""
    return embed_data(views=[view])["manager_state"]["state"]


def _ref(model_id: str) -> str:
    return model_id[len(PREFIX):]


def _image_bytes(model: dict) -> bytes:
    (buffer,) = [b for b in model["buffers"] if b["path"] == ["value"]]
    return base64.b64decode(buffer["data"])


def _links(state: dict) -> set[tuple[str, str, str, str]]:
    return {
        (_ref(m["state"]["source"][0]), m["state"]["source"][1],
         _ref(m["state"]["target"][0]), m["state"]["target"][1])
        for m in state.values()
        if m["model_name"] == "LinkModel"
    }


def test_two_sliders_drive_nested_stacks_in_the_embedded_state():
    epsilons, batches = [0.1, 0.5], [16, 64, 256]
    box = grid_explorer(_point_bytes, {"epsilon": epsilons, "batch_size": batches})
    state = _state(box)
    eps_slider, b_slider, outer = (_ref(c) for c in state[box.model_id]["state"]["children"])

    assert state[eps_slider]["model_name"] == "SelectionSliderModel"
    assert list(state[eps_slider]["state"]["_options_labels"]) == ["0.1", "0.5"]
    assert list(state[b_slider]["state"]["_options_labels"]) == ["16", "64", "256"]
    assert state[outer]["model_name"] == "StackModel"
    inner = [_ref(c) for c in state[outer]["state"]["children"]]
    assert len(inner) == len(epsilons)

    # Stack (i, j) shows the image drawn for (epsilon_i, batch_j), nothing else.
    for i, stack in enumerate(inner):
        images = [_ref(c) for c in state[stack]["state"]["children"]]
        assert [state[m]["model_name"] for m in images] == ["ImageModel"] * len(batches)
        assert [_image_bytes(state[m]) for m in images] == [
            _point_bytes(epsilons[i], b) for b in batches
        ]

    # The ε slider selects the outer stack; the b slider selects inside every inner stack.
    expected = {(eps_slider, "index", outer, "selected_index")} | {
        (b_slider, "index", stack, "selected_index") for stack in inner
    }
    touching = {link for link in _links(state) if link[0] in (eps_slider, b_slider)}
    assert touching == expected


def test_initial_point_sets_sliders_and_stacks():
    box = grid_explorer(
        _point_bytes, {"epsilon": [0.1, 0.5], "batch_size": [16, 64, 256]},
        initial={"batch_size": 256}, descriptions={"epsilon": "ε"},
    )
    eps_slider, b_slider, outer = box.children
    assert (eps_slider.description, eps_slider.index, b_slider.index) == ("ε", 0, 2)
    assert outer.selected_index == 0
    assert [stack.selected_index for stack in outer.children] == [2, 2]


def test_single_axis_renders_figures_as_png_and_closes_them():
    def draw(epsilon):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, epsilon])
        return fig

    before = set(plt.get_fignums())
    box = grid_explorer(draw, {"epsilon": [0.2, 0.8]})
    assert set(plt.get_fignums()) == before  # no figure left to leak into the notebook output
    slider, stack = box.children
    pngs = [bytes(image.value) for image in stack.children]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
    assert pngs[0] != pngs[1]
    assert (slider.value, stack.selected_index) == (0.2, 0)


def test_none_is_a_grid_value_like_any_other():
    box = grid_explorer(lambda epsilon: f"eps={epsilon}".encode(), {"epsilon": [None, 0.5]},
                        initial={"epsilon": 0.5})
    slider, stack = box.children
    assert slider.options == (("None", None), ("0.5", 0.5))
    assert (slider.index, slider.value, stack.selected_index) == (1, 0.5, 1)
    assert [bytes(image.value) for image in stack.children] == [b"eps=None", b"eps=0.5"]


def test_figure_png_closes_the_figure():
    fig = plt.figure()
    png = figure_png(fig)
    assert png[:4] == b"\x89PNG"
    assert not plt.fignum_exists(fig.number)


@pytest.mark.parametrize(
    ("axes", "initial", "message"),
    [
        ({}, None, "at least one axis"),
        ({"epsilon": []}, None, "give values for 'epsilon'"),
        ({"epsilon": [0.1]}, {"epsilon": 0.3}, "epsilon=0.3 is not in"),
        ({"epsilon": [0.1]}, {"b": 1}, "b=1 is not in"),
    ],
)
def test_bad_axes_fail_before_rendering(axes, initial, message):
    def render(**_):
        raise AssertionError("rendered despite bad input")

    with pytest.raises(ValueError, match=message):
        grid_explorer(render, axes, initial=initial)


def test_executed_theory_notebook_embeds_live_widget_state(smoke_book):
    """The book's executed notebook carries the slider/stack/link state the page needs."""
    notebook = json.loads((smoke_book / "_executed" / "theory_bounds.ipynb").read_text())
    state = notebook["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    views = [
        output["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
        for cell in notebook["cells"] if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    assert views, "the theory chapter shows no widget"
    for view in views:
        sliders = [_ref(c) for c in state[view]["state"]["children"][:-1]]
        assert [state[s]["model_name"] for s in sliders] == ["SelectionSliderModel"] * 2
        driven = {link[2] for link in _links(state) if link[0] in sliders}
        assert driven and all(state[m]["model_name"] == "StackModel" for m in driven)
