"""The sweep: grid expansion, up-front validation, the cache, resuming after SIGKILL and Ctrl-C,
failure reports, the results-folder schema check, and the Dask executor against the local pool.

Most tests run a cheap stand-in for ``train`` (:func:`fake_train`: a real ``TrainConfig`` in,
a real ``Result`` out, optionally slow and logging its calls); the executor comparison runs the
real ``train`` on tiny configs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from dpbr_lib import __version__, sweep
from dpbr_lib.results import RESULTS_SCHEMA, Result, config_hash, load_summaries, result_files
from dpbr_lib.training import TrainConfig

TESTS = Path(__file__).resolve().parent

# A valid tiny config: 3-worker average on digits; the fake never trains it.
BASE = {"n": 3, "f": 1, "batch_size": 5, "steps": 2, "width": 2}


def fake_train(config: TrainConfig, delay: float = 0.0, log: str | None = None) -> Result:
    """Stand-in for ``train``: logs ``pid run_id`` when it starts, sleeps, returns a record whose
    numbers depend on the config (so different runs have different rows)."""
    record = config.to_dict()
    if log is not None:
        with open(log, "a") as handle:  # one short O_APPEND write per call: atomic on POSIX
            handle.write(f"{os.getpid()} {config_hash(record)}\n")
    time.sleep(delay)
    accuracy = (config.batch_size + config.seed) / 100
    metrics = pd.DataFrame({"step": [0, 1, 2], "test_accuracy": [0.1, np.nan, accuracy]})
    summary = {"final_accuracy": accuracy, "epsilon_spent": float("nan")}
    return Result(record, config.seed, __version__, metrics, summary)


def failing_train(config: TrainConfig) -> Result:
    if config.batch_size == 7:
        raise RuntimeError("boom at b = 7")
    return fake_train(config)


class Counter:
    """An inline ``run_fn`` that counts its calls and remembers their run ids."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, config: TrainConfig) -> Result:
        self.ids.append(config_hash(config.to_dict()))
        return fake_train(config)


def grid_of(batch_sizes: list[int]) -> dict:
    return {"batch_size": batch_sizes, **{k: [v] for k, v in BASE.items() if k != "batch_size"}}


# --------------------------------------------------------------------------- grid expansion


def test_expand_takes_the_product_with_zipped_groups_and_unions():
    grid = {
        "epsilon": [None, 0.1],
        "rule/attack": [{"rule": "average"}, {"rule": "mda", "attack": "little"}],
    }
    configs = sweep.expand(grid, seeds=[1, 2])
    assert len(configs) == 2 * 2 * 2
    assert configs[0] == {"epsilon": None, "rule": "average", "seed": 1}
    assert configs[3] == {"epsilon": None, "rule": "mda", "attack": "little", "seed": 2}
    assert configs[-1] == {"epsilon": 0.1, "rule": "mda", "attack": "little", "seed": 2}
    union = sweep.expand([{"steps": [1]}, {"steps": [2, 3]}], seeds=[0])
    assert [c["steps"] for c in union] == [1, 2, 3]


@pytest.mark.parametrize(
    ("grid", "seeds", "error", "match"),
    [
        ({"steps": 5}, [0], TypeError, "'steps' must be a list"),
        ({"steps": []}, [0], ValueError, "at least one value"),
        ({"seed": [1]}, [0], ValueError, "'seeds' argument"),
        ({"g": [{"rule": "mda"}, "x"]}, [0], TypeError, "mixes dicts"),
        ({"rule": ["mda"], "g": [{"rule": "median"}]}, [0], ValueError, r"sets \['rule'\] twice"),
        ({"steps": [1]}, 3, TypeError, "'seeds' parameter must be a non-empty sequence"),
        ({"steps": [1]}, [0, 0], ValueError, "must not repeat"),
        ({"steps": [1]}, [-1], ValueError, "'seeds' parameter must be an int in"),
    ],
)
def test_expand_rejects_malformed_grids(grid, seeds, error, match):
    with pytest.raises(error, match=match):
        sweep.expand(grid, seeds)


def test_bad_grid_key_fails_before_any_run(tmp_path):
    counter = Counter()
    grids = [grid_of([5, 6]), {**grid_of([8]), "batchsize": [9]}]  # the typo is in the last one
    with pytest.raises(ValueError, match=r"Config 3 of 3 .*nothing was run.*'batchsize'"):
        sweep.run(grids, [0], tmp_path, executor="inline", progress=False, run_fn=counter)
    bad_value = {**grid_of([5]), "rule": ["average", "no_such_rule"]}
    with pytest.raises(ValueError, match="no_such_rule"):
        sweep.run(bad_value, [0], tmp_path, executor="inline", progress=False, run_fn=counter)
    assert counter.ids == []
    assert result_files(tmp_path) == []


def test_bad_arguments_fail_with_their_names(tmp_path):
    with pytest.raises(ValueError, match="'executor' parameter"):
        sweep.run(grid_of([5]), [0], tmp_path, executor="threads")
    with pytest.raises(ValueError, match="only used with executor='dask'"):
        sweep.run(grid_of([5]), [0], tmp_path, scheduler="tcp://localhost:1")
    with pytest.raises(ValueError, match="'max_workers' parameter"):
        sweep.run(grid_of([5]), [0], tmp_path, max_workers=0)
    with pytest.raises(ValueError, match="'device' parameter"):
        sweep.run(grid_of([5]), [0], tmp_path, device="tpu")
    with pytest.raises(ValueError, match="only used with the default run_fn"):
        sweep.run(grid_of([5]), [0], tmp_path, device="cpu", run_fn=Counter())


# --------------------------------------------------------------------------- cache


def test_rerun_skips_finished_runs_and_returns_their_summaries(tmp_path):
    counter = Counter()
    first = sweep.run(grid_of([5, 6]), [0, 1], tmp_path, executor="inline", progress=False,
                      run_fn=counter)
    assert len(counter.ids) == 4 == len(set(counter.ids))
    assert list(first["run_id"]) == counter.ids  # grid order
    assert list(first["final_accuracy"]) == [0.05, 0.06, 0.06, 0.07]
    pd.testing.assert_frame_equal(  # the same rows as reading the folder
        first.sort_values("run_id").reset_index(drop=True),
        load_summaries(tmp_path).sort_values("run_id").reset_index(drop=True),
    )

    again = sweep.run(grid_of([5, 6]), [0, 1], tmp_path, executor="inline", progress=False,
                      run_fn=counter)
    assert len(counter.ids) == 4  # nothing recomputed
    pd.testing.assert_frame_equal(again, first)

    # a wider grid computes only its new runs; explicit defaults hash like implied ones
    wider = sweep.run({**grid_of([5, 6, 8]), "rule": ["average"]}, [0, 1], tmp_path,
                      executor="inline", progress=False, run_fn=counter)
    assert len(counter.ids) == 6
    assert len(wider) == 6
    manifest = json.loads((tmp_path / sweep.MANIFEST).read_text())
    assert manifest == {"results_schema": RESULTS_SCHEMA, "library_version": __version__}


def test_a_failed_run_is_reported_with_its_config_and_the_others_finish(tmp_path, capsys):
    with pytest.raises(sweep.SweepError, match=r"(?s)1 run\(s\).*\"batch_size\": 7.*boom") as info:
        sweep.run(grid_of([5, 7, 8]), [0], tmp_path, executor="inline", progress=False,
                  run_fn=failing_train)
    assert "boom at b = 7" in capsys.readouterr().err  # reported when it happened
    assert [config["batch_size"] for config, _ in info.value.failures] == [7]
    assert list(info.value.summaries["batch_size"]) == [5, 8]
    counter = Counter()  # a rerun retries only the failed run
    done = sweep.run(grid_of([5, 7, 8]), [0], tmp_path, executor="inline", progress=False,
                     run_fn=counter)
    assert len(counter.ids) == 1
    assert list(done["batch_size"]) == [5, 7, 8]


def test_a_record_of_another_config_is_refused(tmp_path):
    def wrong(config: TrainConfig) -> Result:
        return fake_train(config.replace(steps=3))

    with pytest.raises(sweep.SweepError, match="record of another config"):
        sweep.run(grid_of([5]), [0], tmp_path, executor="inline", progress=False, run_fn=wrong)
    assert result_files(tmp_path) == []


# --------------------------------------------------------------------------- schema


def test_a_folder_of_another_schema_fails_before_anything_runs(tmp_path):
    counter = Counter()
    old = tmp_path / "old"
    old.mkdir()
    (old / sweep.MANIFEST).write_text(json.dumps(
        {"results_schema": RESULTS_SCHEMA + 1, "library_version": "9.9"}
    ))
    with pytest.raises(ValueError, match=rf"schema {RESULTS_SCHEMA + 1} \(dpbr 9.9\).*writes "
                                         rf"schema {RESULTS_SCHEMA}"):
        sweep.run(grid_of([5]), [0], old, executor="inline", progress=False, run_fn=counter)

    # no manifest (runs saved by hand): the files' own records are checked
    loose = tmp_path / "loose"
    loose.mkdir()
    path = fake_train(TrainConfig.from_dict(BASE)).save(loose)
    table = pq.read_table(path)
    record = json.loads(table.schema.metadata[b"dpbr"])
    record["schema"] = RESULTS_SCHEMA + 2
    pq.write_table(table.replace_schema_metadata({b"dpbr": json.dumps(record).encode()}), path)
    with pytest.raises(ValueError, match=rf"schema {RESULTS_SCHEMA + 2}"):
        sweep.run(grid_of([5]), [0], loose, executor="inline", progress=False, run_fn=counter)
    assert counter.ids == []


# --------------------------------------------------------------------------- interruptions

SWEEP_SCRIPT = """
import functools, signal, sys
# Python's own Ctrl-C handler, as in a terminal: a launcher running in the background (nohup,
# `cmd &` in a script) passes SIGINT down ignored, and the child would keep ignoring it.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
from dpbr_lib import sweep
from test_sweep import fake_train, grid_of
run_fn = functools.partial(fake_train, delay={delay}, log={log!r})
sweep.run(grid_of(list(range(5, 5 + {runs}))), [0], {folder!r}, executor="process",
          max_workers=2, progress=False, run_fn=run_fn)
"""


def _start_sweep(folder: Path, log: Path, runs: int, delay: float) -> subprocess.Popen:
    script = SWEEP_SCRIPT.format(tests=str(TESTS), delay=delay, log=str(log), runs=runs,
                                 folder=str(folder))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a command started in a shell
    )


def _wait_for_files(folder: Path, count: int, process: subprocess.Popen, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while len(result_files(folder)) < count:
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended early:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("the sweep did not finish enough runs in time")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (dead, not yet reaped by its parent) still answers: read its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _wait_dead(pids: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "pool workers outlived the killed sweep"
        time.sleep(0.1)


def _check_resume(folder: Path, log: Path, runs: int) -> None:
    """After an interruption: every file is complete, and a rerun computes exactly the rest."""
    finished = {path.stem for path in result_files(folder)}
    for path in result_files(folder):  # no corrupt file
        assert Result.load(path).run_id == path.stem
    started = {line.split()[1] for line in log.read_text().splitlines()}
    assert finished <= started
    assert 0 < len(finished) < runs

    stale = folder / f".{'0' * 64}.parquet.abcdef.tmp"  # a temporary file left by a dead writer
    stale.write_bytes(b"half a parquet file")
    os.utime(stale, (time.time() - 2 * sweep.STALE_AFTER_S,) * 2)
    counter = Counter()
    summaries = sweep.run(grid_of(list(range(5, 5 + runs))), [0], folder, executor="inline",
                          progress=False, run_fn=counter)
    assert len(summaries) == runs
    assert not finished & set(counter.ids)  # finished runs are not recomputed ...
    assert finished | set(counter.ids) == set(summaries["run_id"])  # ... nor lost
    assert len(counter.ids) == runs - len(finished)
    assert not stale.exists()


def test_resume_after_sigkill_of_the_sweep_process(tmp_path):
    folder, log, runs = tmp_path / "results", tmp_path / "calls.log", 10
    process = _start_sweep(folder, log, runs, delay=0.5)
    _wait_for_files(folder, 3, process)
    os.kill(process.pid, signal.SIGKILL)  # `kill -9 PID`: the pool workers are orphaned
    process.wait(timeout=30)
    workers = {int(line.split()[0]) for line in log.read_text().splitlines()}
    assert process.pid not in workers  # the runs ran in pool workers
    _wait_dead(workers)  # they notice and exit by themselves
    _check_resume(folder, log, runs)


def test_resume_after_ctrl_c(tmp_path):
    folder, log, runs = tmp_path / "results", tmp_path / "calls.log", 10
    process = _start_sweep(folder, log, runs, delay=0.5)
    _wait_for_files(folder, 3, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "KeyboardInterrupt" in err
    workers = {int(line.split()[0]) for line in log.read_text().splitlines()}
    _wait_dead(workers)
    _check_resume(folder, log, runs)


# --------------------------------------------------------------------------- executors

REAL = {  # two tiny real runs: 4-worker CNNs of width 2 on digits, with and without an attack
    "n": [4], "f": [1], "batch_size": [8], "steps": [4], "width": [2], "eval_every": [2],
    "rule/attack": [
        {"rule": "average"},
        {"rule": "mda", "attack": "little", "attack_factor": 1.5, "attack_negative": True},
    ],
}


def _numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """A table without what legitimately differs between executors: timings and paths."""
    drop = [c for c in frame.columns
            if c.startswith("time_") or c in ("wall_time", "time_per_step", "path")]
    return frame.drop(columns=drop).sort_values(["run_id", "step"] if "step" in frame else
                                                "run_id").reset_index(drop=True)


@pytest.fixture
def one_thread():
    """Inline runs share this process's torch threads: one, as the pool and Dask workers use
    (two intra-op threads on two busy cores slow the tiny runs down tenfold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_dask_cluster_gives_the_same_records_as_in_process_runs(tmp_path, one_thread):
    distributed = pytest.importorskip("dask.distributed")
    local = sweep.run(REAL, [0, 1], tmp_path / "local", executor="inline", progress=False)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = sweep.run(REAL, [0, 1], tmp_path / "dask", executor="dask", scheduler=client,
                           progress=False)
        assert client.status == "running"  # a given client is left open for its owner
    assert len(local) == 4
    pd.testing.assert_frame_equal(_numbers(local), _numbers(remote))
    from dpbr_lib.results import load_results

    pd.testing.assert_frame_equal(_numbers(load_results(tmp_path / "local")),
                                  _numbers(load_results(tmp_path / "dask")))
    counter = Counter()
    again = sweep.run(REAL, [0, 1], tmp_path / "dask", executor="inline", progress=False,
                      run_fn=counter)
    assert counter.ids == []  # all cached
    pd.testing.assert_frame_equal(again, remote)
