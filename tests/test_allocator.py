"""The allocator setting: glibc's thresholds raised once, off with DPBR_KEEP_FREED_MEMORY=0,
and the same for child processes through the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dpbr_lib import allocator


def _in_child(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, **env},
    )
    return result.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_sets_glibc_thresholds_once_and_can_be_switched_off():
    code = (
        "from dpbr_lib import allocator; first = allocator.keep_freed_memory();"
        "second = allocator.keep_freed_memory();"
        "print(first, second, allocator.keep_freed_memory.cache_info().misses)"
    )
    assert _in_child(code) == "True True 1"  # mallopt is called by the first call only
    assert _in_child(code, DPBR_KEEP_FREED_MEMORY="0") == "False False 1"


def test_environment_names_glibc_variables_unless_switched_off(monkeypatch):
    monkeypatch.delenv(allocator.SWITCH_VARIABLE, raising=False)
    assert allocator.environment() == {
        "MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD),
    }
    monkeypatch.setenv(allocator.SWITCH_VARIABLE, "0")
    assert allocator.environment() == {}


def test_training_gives_the_same_numbers_with_and_without_it():
    code = (
        "from dpbr_lib import allocator, training; import sys;"
        "print(allocator.keep_freed_memory() if sys.argv[1] == 'on' else True);"
        "r = training.train({'steps': 4, 'eval_every': 2, 'batch_size': 10, 'rule': 'mda',"
        " 'attack': 'little', 'privacy': 'gaussian', 'epsilon': 0.5});"
        "print(r.summary['final_test_loss'], r.metrics.filter(regex='^(?!time_)').to_json())"
    )
    outputs = {
        flag: subprocess.run(
            [sys.executable, "-c", code, flag], capture_output=True, text=True, check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        ).stdout
        for flag in ("on", "off")
    }
    assert outputs["on"] == outputs["off"] and outputs["on"]
