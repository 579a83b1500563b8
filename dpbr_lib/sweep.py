"""Experiment grids: configs × seeds → one result file per run, cached by config hash.

:func:`run` expands a grid into runs, validates every config before the first run starts, skips
the runs whose result file already exists, and runs the rest on one of three executors:

- ``"inline"``: one after the other in this process, with its torch threads (on a busy
  2-core machine, ``torch.set_num_threads(1)`` makes small runs about ten times faster);
- ``"process"`` (default): a local pool of ``spawn``-started processes, all cores by default,
  ``torch.set_num_threads(cores // workers)`` in each;
- ``"dask"``: a Dask distributed cluster (``scheduler="tcp://HOST:PORT"``, a
  ``dask.distributed.Client``, or ``None`` for a local cluster). Workers return the record and
  this process writes it, so the results land in the same folder even when the workers do not
  share its file system (they need ``dpbr_lib`` installed).

**Resuming.** A run's file is ``<results_dir>/<config_hash>.parquet``, written atomically by
:meth:`dpbr_lib.results.Result.save` (hidden temporary file, then rename) as soon as the run
ends — by the pool worker that ran it, or by this process for Dask. A sweep killed at any point
(Ctrl-C, SIGKILL) therefore leaves only complete files, plus at most a hidden temporary file per
run that was being written; rerunning the same call skips every finished run and recomputes only
the others. Temporary files older than :data:`STALE_AFTER_S` are removed at start (younger ones
could belong to a sweep writing to the same folder right now and are simply ignored). Pool
workers exit on their own when the sweep process dies, so an orphan never keeps computing.

**Failures.** An exception in one run does not stop the sweep: it is reported at once on stderr
with the run's config, the other runs go on (and are saved), and at the end :class:`SweepError`
lists every failed run. A rerun retries only those. Ctrl-C stops the sweep at once (pool workers
are terminated; their unfinished runs are recomputed next time) and propagates.

**Schema.** The folder's ``manifest.json`` records :data:`dpbr_lib.results.RESULTS_SCHEMA` and
the library version; a folder holding runs of another schema fails before anything runs.

Grid format (see :func:`expand`)::

    {"epsilon": [None, 0.1], "batch_size": [10, 50],
     "rule/attack": [{"rule": "average", "attack": "none", "f_real": 0},
                     {"rule": "mda", "attack": "little", "attack_factor": 1.5}]}
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from dpbr_lib import __version__, allocator
from dpbr_lib._validation import check_choice, check_device, check_int
from dpbr_lib.results import (
    METADATA_KEY,
    RESULTS_SCHEMA,
    SUFFIX,
    Result,
    config_hash,
    load_summaries,
    result_files,
)

#: Name of the folder's manifest (schema and library version of its runs).
MANIFEST = "manifest.json"
#: Hidden temporary files older than this (seconds) are leftovers of a killed writer.
STALE_AFTER_S = 60.0
EXECUTORS = ("process", "inline", "dask")

Grid = Mapping[str, Sequence[Any]]
RunFn = Callable[[Any], Result]
ConfigFn = Callable[[dict[str, Any]], Any]


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the others finished and are saved.

    ``failures`` holds ``(config, error_text)`` pairs, ``config`` as the grid gave it (with its
    seed); ``summaries`` the finished runs' rows.
    """

    def __init__(self, failures: list[tuple[dict[str, Any], str]], summaries: pd.DataFrame):
        self.failures = failures
        self.summaries = summaries
        lines = [f"{len(failures)} run(s) of the sweep failed (the others are saved; "
                 "rerunning retries only the failed ones):"]
        shown = 20
        for config, error in failures[:shown]:
            last = error.strip().splitlines()[-1] if error.strip() else "?"
            lines.append(f"  {json.dumps(config, sort_keys=True)}\n    -> {last}")
        if len(failures) > shown:
            lines.append(f"  ... and {len(failures) - shown} more (see .failures)")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Job:
    """One planned run: the validated config object, its resolved dict, id and file."""

    config: Any  # what run_fn takes (a TrainConfig by default)
    raw: dict[str, Any]  # the grid's entries for this run, seed included
    record: dict[str, Any]  # config.to_dict(), every field resolved
    run_id: str  # config_hash(record)
    path: Path  # <results_dir>/<run_id>.parquet


# --------------------------------------------------------------------------- grid expansion


def expand(grid: Grid | Sequence[Grid], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The raw configs of ``grid`` × ``seeds``, in a fixed order (last key varies fastest, seeds
    innermost).

    ``grid`` maps a config field to the list of its values; the product over keys is taken. A key
    whose values are all dicts is a *zipped group* (the key is only a label, e.g.
    ``"rule/attack"``): each dict is a partial config, merged as one unit, so fields that must vary
    together (a rule, its attack and the attack's options) do. A list of grids gives the union of
    their products. ``seeds`` fills the ``seed`` field, which the grid must not set.
    """
    seeds = _check_seeds(seeds)
    grids = [grid] if isinstance(grid, Mapping) else grid
    if isinstance(grids, (str, bytes)) or not isinstance(grids, Sequence) or not grids:
        raise TypeError(
            "The 'grid' parameter must be a dict of lists or a non-empty list of such dicts. "
            f"Got {grid!r} instead."
        )
    configs: list[dict[str, Any]] = []
    for sub in grids:
        axes = _axes(sub)
        for combination in itertools.product(*axes):
            merged: dict[str, Any] = {}
            for part in combination:
                clash = sorted(merged.keys() & part.keys())
                if clash:
                    raise ValueError(
                        f"The grid sets {clash} twice in one config (a key and a zipped group, or "
                        f"two groups). Got {part!r} on top of {merged!r}."
                    )
                merged.update(part)
            configs.extend({**merged, "seed": seed} for seed in seeds)
    return configs


def _check_seeds(seeds: object) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise TypeError(
            "The 'seeds' parameter must be a non-empty sequence of ints, e.g. [0, 1, 2]. "
            f"Got {seeds!r} instead."
        )
    checked = [check_int("seeds", seed, low=0) for seed in seeds]
    if len(set(checked)) != len(checked):
        raise ValueError(f"The 'seeds' parameter must not repeat a seed. Got {seeds!r} instead.")
    return checked


def _axes(grid: object) -> list[list[dict[str, Any]]]:
    if not isinstance(grid, Mapping):
        raise TypeError(f"A grid must be a dict of lists. Got {grid!r} instead.")
    axes = []
    for key, values in grid.items():
        if not isinstance(key, str):
            raise TypeError(f"Grid keys must be strings. Got {key!r} instead.")
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise TypeError(
                f"The grid entry {key!r} must be a list of values. Got {values!r} instead."
            )
        if not values:
            raise ValueError(f"The grid entry {key!r} must list at least one value. Got [].")
        groups = [isinstance(value, Mapping) for value in values]
        if any(groups) and not all(groups):
            raise TypeError(
                f"The grid entry {key!r} mixes dicts (a zipped group) and plain values. "
                f"Got {values!r} instead."
            )
        parts = [dict(value) for value in values] if all(groups) else [{key: v} for v in values]
        for part in parts:
            if "seed" in part:
                raise ValueError(
                    "Seeds are set by the 'seeds' argument of the sweep, not by the grid. "
                    f"Got a 'seed' entry in {key!r}."
                )
        axes.append(parts)
    return axes


def plan(
    grid: Grid | Sequence[Grid],
    seeds: Sequence[int],
    results_dir: str | Path,
    config_fn: ConfigFn | None = None,
) -> list[Job]:
    """Validate every config of ``grid`` × ``seeds`` (all of them, before anything runs) and
    return one :class:`Job` per distinct run, in grid order."""
    config_fn = _default_config_fn() if config_fn is None else config_fn
    folder = Path(results_dir)
    raw = expand(grid, seeds)
    jobs: dict[str, Job] = {}
    for index, config in enumerate(raw):
        try:
            resolved = config_fn(config)
        except (TypeError, ValueError) as error:
            raise type(error)(
                f"Config {index + 1} of {len(raw)} of the grid is invalid, nothing was run: "
                f"{error}\n  config: {config!r}"
            ) from error
        record = resolved.to_dict()
        run_id = config_hash(record)
        jobs.setdefault(run_id, Job(resolved, config, record, run_id, folder / f"{run_id}{SUFFIX}"))
    return list(jobs.values())


def _default_config_fn() -> ConfigFn:
    from dpbr_lib.training import TrainConfig

    return TrainConfig.from_dict


def _default_run_fn(device: str | None = None) -> RunFn:
    from dpbr_lib.training import train

    return train if device is None else functools.partial(train, device=device)


# --------------------------------------------------------------------------- results folder


def check_folder(results_dir: str | Path) -> None:
    """Fail if ``results_dir`` holds runs of another :data:`RESULTS_SCHEMA` (manifest or files)."""
    folder = Path(results_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"The results folder {str(folder)!r} exists and is not a folder.")
    manifest = folder / MANIFEST
    found: dict[Any, str] = {}
    if manifest.is_file():
        try:
            content = json.loads(manifest.read_text())
            found[content["results_schema"]] = f"dpbr {content.get('library_version', '?')}"
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"The manifest {str(manifest)!r} is unreadable ({error}); it should hold "
                '{"results_schema": ..., "library_version": ...}.'
            ) from error
    else:  # a folder filled by something else than a sweep (dpbr train --results, a copy)
        for path in result_files(folder):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # see is_finished
                record = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
                found.setdefault(record["schema"], f"dpbr {record['version']}")
    other = {schema: by for schema, by in found.items() if schema != RESULTS_SCHEMA}
    if other:
        schema, by = next(iter(other.items()))
        raise ValueError(
            f"The results folder {str(folder)!r} holds runs of results schema {schema} ({by}); "
            f"this library (dpbr {__version__}) writes schema {RESULTS_SCHEMA}, whose configs or "
            "metrics mean something else. Use another --results folder, or move those runs away."
        )


def _write_manifest(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    if manifest.is_file():
        return
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(
        {"results_schema": RESULTS_SCHEMA, "library_version": __version__}, indent=2
    ) + "\n")
    os.replace(tmp, manifest)


def _clean_stale_temporaries(folder: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the hidden ``.<name>.parquet.<random>.tmp`` files of writers killed mid-write."""
    removed = []
    now = time.time()
    for path in folder.glob(f".*{SUFFIX}.*.tmp"):
        try:
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer just renamed it
            continue
    return removed


def is_finished(job: Job) -> bool:
    """Whether ``job.path`` is a complete result file of this very run."""
    if not job.path.is_file():
        return False
    try:
        record = json.loads(pq.read_schema(job.path).metadata[METADATA_KEY])
    except (OSError, ValueError, KeyError, TypeError) as error:
        _report(f"Result file {str(job.path)!r} is unreadable ({error}); recomputing it.")
        return False
    return record.get("run_id") == job.run_id


# --------------------------------------------------------------------------- execution


def run(
    grid: Grid | Sequence[Grid],
    seeds: Sequence[int],
    results_dir: str | Path,
    executor: str = "process",
    scheduler: Any = None,
    max_workers: int | None = None,
    progress: bool = True,
    run_fn: RunFn | None = None,
    config_fn: ConfigFn | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Run every config of ``grid`` × ``seeds`` not yet in ``results_dir``; return the summaries.

    Args:
        grid: field → list of values (product), zipped groups, or a list of grids; see
            :func:`expand`.
        seeds: the seeds each config is run with.
        results_dir: the folder of result files (created if missing).
        executor: ``"process"`` (local pool), ``"inline"`` or ``"dask"``.
        scheduler: for ``"dask"`` only: ``"tcp://HOST:PORT"``, a ``dask.distributed.Client``, or
            ``None`` for a local cluster of ``max_workers`` single-threaded processes.
        max_workers: pool size for ``"process"`` (default: all cores) and the local Dask cluster.
        progress: show a tqdm bar over the runs (with ETA).
        run_fn: ``config -> Result`` (default :func:`dpbr_lib.training.train`); must be picklable
            (a module-level function) for ``"process"`` and ``"dask"``.
        config_fn: ``dict -> config`` validating one raw config; the config's ``to_dict()`` is
            what is hashed (default ``TrainConfig.from_dict``).
        device: where the default ``run_fn`` trains (``"cpu"``, ``"cuda"``, ``"auto"``; see
            :func:`dpbr_lib.training.train`), checked here before any run. Not in the run's
            hash: a finished CPU run is not rerun on the GPU. With one GPU, ``executor="inline"``
            or a small ``max_workers`` keeps the processes from sharing it many times over.

    Returns:
        One row per run of the grid, in grid order, as :func:`dpbr_lib.results.load_summaries`
        gives it (``run_id``, ``version``, config fields, ``seed``, summary, ``path``).

    Raises:
        ValueError, TypeError: a bad argument, an invalid config, or a results folder of another
            schema — before any run starts.
        SweepError: after the sweep, if some runs failed.
    """
    check_choice("executor", executor, EXECUTORS)
    if scheduler is not None and executor != "dask":
        raise ValueError(
            f"The 'scheduler' parameter is only used with executor='dask'. Got "
            f"scheduler={scheduler!r} with executor={executor!r} instead."
        )
    if max_workers is not None:
        check_int("max_workers", max_workers, low=1)
    folder = Path(results_dir)
    check_folder(folder)
    jobs = plan(grid, seeds, folder, config_fn)
    if device is not None:
        if run_fn is not None:
            raise ValueError(
                "The 'device' parameter is only used with the default run_fn; pass the device "
                f"to your run_fn instead. Got device={device!r} with run_fn={run_fn!r}."
            )
        device = str(check_device("device", device))
    run_fn = _default_run_fn(device) if run_fn is None else run_fn

    _write_manifest(folder)
    _clean_stale_temporaries(folder)
    pending = [job for job in jobs if not is_finished(job)]
    failures: list[tuple[dict[str, Any], str]] = []
    if pending:
        bar = tqdm(
            total=len(pending),
            desc=f"sweep ({len(jobs) - len(pending)} of {len(jobs)} cached)",
            unit="run",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            execute = {"inline": _run_inline, "process": _run_pool, "dask": _run_dask}[executor]
            execute(pending, run_fn, bar, failures, max_workers=max_workers, scheduler=scheduler)
        finally:
            bar.close()
    summaries = _summaries(folder, [job.run_id for job in jobs])
    if failures:
        raise SweepError(failures, summaries)
    return summaries


def _summaries(folder: Path, run_ids: list[str]) -> pd.DataFrame:
    rows = load_summaries(folder)
    if rows.empty:
        return rows
    present = set(rows["run_id"])
    done = [run_id for run_id in run_ids if run_id in present]
    return rows.set_index("run_id").loc[done].reset_index()


def _report(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def _failed(job: Job, error: BaseException | str, failures: list) -> None:
    text = error if isinstance(error, str) else "".join(traceback.format_exception(error))
    failures.append((job.raw, text))
    _report(f"dpbr sweep: run {job.run_id[:12]} failed, the sweep goes on.\n"
            f"  config: {json.dumps(job.raw, sort_keys=True)}\n{text.rstrip()}")


def _execute(config: Any, path: Path, run_fn: RunFn) -> str:
    """Run one config and save its record (in the process that ran it); return the run id."""
    result = _checked(run_fn(config), path)
    return result.save(path).stem


def _checked(result: Result, path: Path) -> Result:
    """A record must belong to the config it was asked for, or the cache would never hit."""
    if result.run_id != path.stem:
        raise ValueError(
            f"run_fn returned the record of another config (run id {result.run_id[:12]}, "
            f"expected {path.stem[:12]}); its config must be config.to_dict()."
        )
    return result


def _run_inline(jobs: list[Job], run_fn: RunFn, bar: tqdm, failures: list, **_: Any) -> None:
    for job in jobs:
        try:
            _execute(job.config, job.path, run_fn)
        except Exception as error:  # reported with its config; the sweep goes on
            _failed(job, error, failures)
        bar.update()


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init_worker(threads: int, parent: int) -> None:
    """Pool-worker setup: torch threads, freed memory kept (:mod:`dpbr_lib.allocator`), Ctrl-C
    left to the parent, exit when the parent dies."""
    import torch

    torch.set_num_threads(threads)
    allocator.keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # orphaned: the sweep was killed; its unfinished runs are recomputed later

    threading.Thread(target=watch, daemon=True, name="dpbr-parent-watch").start()


def _run_pool(
    jobs: list[Job], run_fn: RunFn, bar: tqdm, failures: list, *, max_workers: int | None,
    **_: Any,
) -> None:
    import multiprocessing

    cores = _default_workers()
    workers = min(max_workers or cores, len(jobs))
    threads = max(1, cores // workers)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),  # fork is unsafe with torch threads
        initializer=_init_worker,
        initargs=(threads, os.getpid()),
    )
    futures: dict[Future, Job] = {}
    try:
        futures = {pool.submit(_execute, job.config, job.path, run_fn): job for job in jobs}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                error = future.exception()
                if isinstance(error, BrokenProcessPool):
                    raise RuntimeError(
                        "A worker of the process pool died: killed by the system (out of "
                        "memory?), or it could not start (a script that runs a sweep with "
                        "executor='process' needs the `if __name__ == '__main__':` guard). "
                        "Finished runs are saved; rerun to resume, or use executor='inline'."
                    ) from error
                if error is not None:
                    _failed(futures[future], error, failures)
                bar.update()
    except BaseException:  # Ctrl-C or a crash of this process: stop the workers now
        for future in futures:
            future.cancel()
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers (their runs are unfinished, hence not saved, hence redone)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _remote(config: Any, run_fn: RunFn) -> Result:
    """Dask task: the record travels back; the sweep process writes it."""
    return run_fn(config)


def _run_dask(
    jobs: list[Job], run_fn: RunFn, bar: tqdm, failures: list, *, max_workers: int | None,
    scheduler: Any, **_: Any,
) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if isinstance(scheduler, Client):
        client, own = scheduler, False
    elif scheduler is None:
        workers = max_workers or _default_workers()
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
        client, own = Client(cluster), True
    elif isinstance(scheduler, str):
        client, own = Client(scheduler), True
    else:
        raise TypeError(
            "The 'scheduler' parameter must be None, 'tcp://HOST:PORT' or a "
            f"dask.distributed.Client. Got {type(scheduler).__name__} instead."
        )
    futures = []
    try:
        futures = [client.submit(_remote, job.config, run_fn, pure=False) for job in jobs]
        owner = {future.key: job for future, job in zip(futures, jobs, strict=True)}
        for future in as_completed(futures):
            job = owner[future.key]
            if future.status == "error":
                _failed(job, future.exception(), failures)
            else:
                _checked(future.result(), job.path).save(job.path)
            future.release()
            bar.update()
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        if own:
            client.close()
        if cluster is not None:
            cluster.close()


__all__ = [
    "EXECUTORS",
    "MANIFEST",
    "Job",
    "SweepError",
    "check_folder",
    "expand",
    "is_finished",
    "plan",
    "run",
]
