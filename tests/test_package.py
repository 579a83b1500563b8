"""The package imports, the CLI lists its subcommands, the shared helpers behave."""

import subprocess
import sys

import pytest
import torch

from dpbr_lib import _validation as v
from dpbr_lib._registry import Registry
from dpbr_lib.cli import COMMANDS


def test_cli_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "dpbr_lib.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert name in out


def test_registry_error_lists_names_from_the_registry():
    registry = Registry[int]("widget")
    registry.register("b", 2)
    registry.register("a", 1)
    with pytest.raises(ValueError, match=r"Unknown widget 'c'\. Valid names: a, b\."):
        registry.get("c")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", 3)


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({"low": 0}, -1, r"'x' parameter must be an int in \[0, inf\)\. Got -1"),
        ({}, 1.5, r"must be an int"),
    ],
)
def test_check_int_messages(kwargs, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        v.check_int("x", value, **kwargs)


def test_check_float_open_interval_and_nan():
    assert v.check_float("eps", 0.5, low=0, low_open=True) == 0.5
    with pytest.raises(ValueError, match=r"\(0, inf\)"):
        v.check_float("eps", 0.0, low=0, low_open=True)
    with pytest.raises(ValueError):
        v.check_float("eps", float("nan"))


def test_check_gradients_rejects_bad_shapes_and_types():
    with pytest.raises(ValueError, match="2-D"):
        v.check_gradients(torch.zeros(3))
    with pytest.raises(ValueError, match="non-empty"):
        v.check_gradients(torch.zeros(0, 3))
    with pytest.raises(TypeError, match="floating"):
        v.check_gradients(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="one dtype and device"):
        v.check_same_kind("gradients", [torch.zeros(1), torch.zeros(1, dtype=torch.float64)])
