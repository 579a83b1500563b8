"""One run, one record: the result of :func:`dpbr_lib.training.train` and its Parquet file.

A record holds the resolved config, the seed, the library version, the per-step metrics table and
a summary. :meth:`Result.save` writes it as ONE Parquet file, atomically (a hidden temporary file
in the target folder, flushed and fsync'ed, then ``os.replace``), so a killed run never leaves a
half-written result, and readers never see one: pyarrow skips names starting with ``.``.

Layout of the file, chosen so that ``pandas.read_parquet(folder)`` reads all the runs of a folder
in one call into a long table:

- rows: the metrics (one per training step);
- columns: the metrics, then ``run_id`` (the config hash), then every config field as a constant
  column, with a type fixed per field (``None`` is stored as a null of that type, so the files of
  one folder share one schema);
- schema metadata, key ``dpbr``: JSON with ``run_id``, ``schema``, ``config``, ``seed``,
  ``version`` and ``summary`` — the whole record, so :meth:`Result.load` round-trips.

The run id is :func:`config_hash`: sha256 of the canonical JSON of the config (which includes the
seed) and :data:`RESULTS_SCHEMA`. Bump :data:`RESULTS_SCHEMA` whenever the meaning of a config
field or a metric changes, so cached runs of the old semantics are not mistaken for new ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: Version of the meaning of configs and metrics; part of every run id.
RESULTS_SCHEMA = 1
#: Key of the record in the Parquet schema metadata.
METADATA_KEY = b"dpbr"
SUFFIX = ".parquet"

_ARROW_TYPES = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def canonical_json(obj: Any) -> str:
    """Sorted keys, no spaces; what :func:`config_hash` hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: dict[str, Any]) -> str:
    """Run id: sha256 hex digest of the canonical JSON of ``config`` and :data:`RESULTS_SCHEMA`.

    Hash the *resolved* config (``TrainConfig.from_dict(d).to_dict()``), whose values have one
    canonical type each (``0.5`` and ``1`` are floats there), so equal runs get equal ids.
    """
    if not isinstance(config, dict):
        raise TypeError(f"The 'config' parameter must be a dict. Got {type(config).__name__}.")
    payload = canonical_json({"config": config, "schema": RESULTS_SCHEMA})
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


@dataclass
class Result:
    """The record of one training run."""

    config: dict[str, Any]  # the resolved config, TrainConfig.to_dict() (includes the seed)
    seed: int  # the run's seed (also config["seed"])
    version: str  # dpbr_lib.__version__ that produced it
    metrics: pd.DataFrame  # one row per step (see dpbr_lib.training.METRIC_COLUMNS)
    summary: dict[str, Any] = field(default_factory=dict)  # final numbers of the run

    @property
    def run_id(self) -> str:
        return config_hash(self.config)

    def save(self, path: str | Path) -> Path:
        """Write the record to ``path`` atomically; a folder gets ``<run_id>.parquet`` inside.

        Returns the path of the written file.
        """
        path = Path(path)
        if path.is_dir():
            path = path / f"{self.run_id}{SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = self._table()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read a record written by :meth:`save`."""
        table = pq.read_table(path)
        record = _record(table.schema, path)
        metrics = table.drop_columns(
            [c for c in table.column_names if c == "run_id" or c in record["config"]]
        ).to_pandas()
        return cls(
            config=record["config"],
            seed=record["seed"],
            version=record["version"],
            metrics=metrics,
            summary=record["summary"],
        )

    def _table(self) -> pa.Table:
        collisions = set(self.metrics.columns) & (set(self.config) | {"run_id"})
        if collisions:
            raise ValueError(f"Metric columns clash with config fields: {sorted(collisions)}.")
        rows = len(self.metrics)
        table = pa.Table.from_pandas(self.metrics, preserve_index=False)
        table = table.append_column("run_id", pa.array([self.run_id] * rows, pa.string()))
        types = _config_types(self.config)
        for key in sorted(self.config):
            column = pa.array([self.config[key]] * rows, type=types[key])
            table = table.append_column(key, column)
        record = {
            "run_id": self.run_id,
            "schema": RESULTS_SCHEMA,
            "config": self.config,
            "seed": self.seed,
            "version": self.version,
            "summary": self.summary,
        }
        metadata = dict(table.schema.metadata or {})
        metadata[METADATA_KEY] = json.dumps(record, sort_keys=True).encode()
        return table.replace_schema_metadata(metadata)


def _config_types(config: dict[str, Any]) -> dict[str, pa.DataType]:
    """Arrow type per config field: from TrainConfig's annotations, else from the value."""
    from dpbr_lib.training import TrainConfig  # training imports this module

    declared = TrainConfig.column_types()
    types = {}
    for key, value in config.items():
        kind = declared.get(key) or (type(value) if value is not None else str)
        if kind not in _ARROW_TYPES:
            raise TypeError(f"Config field {key!r} has a type Parquet columns cannot hold: {kind}.")
        types[key] = _ARROW_TYPES[kind]
    return types


def _record(schema: pa.Schema, path: object) -> dict[str, Any]:
    metadata = schema.metadata or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{str(path)!r} is not a dpbr result file (no {METADATA_KEY!r} metadata).")
    return json.loads(metadata[METADATA_KEY])


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def result_files(folder: str | Path) -> list[Path]:
    """The finished result files of ``folder`` (temporary files are hidden), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith((".", "_")))


def load_results(folder: str | Path) -> pd.DataFrame:
    """All runs of ``folder`` as one long table (metrics rows, ``run_id`` and config columns).

    The same table as ``pandas.read_parquet(folder)``; empty if the folder holds no result.
    """
    files = result_files(folder)
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)


def load_summaries(folder: str | Path) -> pd.DataFrame:
    """One row per run of ``folder``: ``run_id``, ``seed``, ``version``, config and summary.

    Reads only the files' metadata (no metrics). Summary keys are prefixed with ``summary_``
    where they clash with a config field.
    """
    rows = []
    for path in result_files(folder):
        record = _record(pq.read_schema(path), path)
        row: dict[str, Any] = {"run_id": record["run_id"], "version": record["version"]}
        row.update(record["config"])
        row["seed"] = record["seed"]
        for key, value in record["summary"].items():
            row[f"summary_{key}" if key in row else key] = value
        row["path"] = str(path)
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "METADATA_KEY",
    "RESULTS_SCHEMA",
    "Result",
    "config_hash",
    "load_results",
    "load_summaries",
    "result_files",
]
