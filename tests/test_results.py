"""Run records: round trip, one long table per folder, run ids, atomic writes."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpbr_lib import results
from dpbr_lib.results import Result, config_hash, load_results, load_summaries
from dpbr_lib.training import METRIC_COLUMNS, TrainConfig


def make_result(steps: int = 4, **changes) -> Result:
    config = TrainConfig(**changes).to_dict()
    rng = np.random.default_rng(config["seed"])
    metrics = pd.DataFrame(
        rng.normal(size=(steps + 1, len(METRIC_COLUMNS))), columns=METRIC_COLUMNS
    )
    metrics["step"] = np.arange(steps + 1, dtype=np.int64)
    metrics.loc[1, "test_accuracy"] = math.nan
    summary = {"final_accuracy": 0.9, "epsilon_spent": math.nan, "diverged": False, "d": 123}
    return Result(config, config["seed"], "0.1.0", metrics, summary)


def test_round_trip_keeps_the_whole_record(tmp_path):
    result = make_result(privacy="gaussian", epsilon=0.2, attack="little", rule="mda")
    path = result.save(tmp_path / "run.parquet")
    back = Result.load(path)
    assert back.config == result.config and back.seed == result.seed
    assert back.version == result.version
    assert back.summary["final_accuracy"] == 0.9 and math.isnan(back.summary["epsilon_spent"])
    pd.testing.assert_frame_equal(back.metrics, result.metrics)


def test_a_folder_reads_as_one_long_table(tmp_path):
    a = make_result(steps=3, seed=0)  # epsilon None here ...
    b = make_result(steps=5, seed=1, privacy="gaussian", epsilon=0.5)  # ... a float there
    for r in (a, b):
        assert r.save(tmp_path).name == f"{r.run_id}.parquet"
    (tmp_path / f".{a.run_id}.parquet.abc.tmp").write_bytes(b"half a file")  # a killed write
    table = pd.read_parquet(tmp_path)  # one call, as the plots do
    assert len(table) == 4 + 6
    assert set(table["run_id"]) == {a.run_id, b.run_id}
    by_run = table.groupby("run_id")
    assert by_run["seed"].first().to_dict() == {a.run_id: 0, b.run_id: 1}
    eps = by_run["epsilon"].first()
    assert math.isnan(eps[a.run_id]) and eps[b.run_id] == 0.5
    assert set(METRIC_COLUMNS) <= set(table.columns)
    long = load_results(tmp_path)
    assert len(long) == len(table) and set(long.columns) == set(table.columns)


def test_summaries_have_one_row_per_run(tmp_path):
    runs = [make_result(seed=s) for s in range(3)]
    for r in runs:
        r.save(tmp_path)
    summaries = load_summaries(tmp_path)
    assert len(summaries) == 3
    assert set(summaries["run_id"]) == {r.run_id for r in runs}
    assert (summaries["final_accuracy"] == 0.9).all() and (summaries["rule"] == "average").all()
    assert sorted(summaries["seed"]) == [0, 1, 2]
    assert load_summaries(tmp_path / "missing").empty and load_results(tmp_path / "none").empty


def test_config_hash_is_sha256_of_canonical_json_with_schema():
    config = TrainConfig(seed=3).to_dict()
    payload = json.dumps(
        {"config": config, "schema": results.RESULTS_SCHEMA}, sort_keys=True, separators=(",", ":")
    )
    assert config_hash(config) == hashlib.sha256(payload.encode()).hexdigest()
    assert config_hash(dict(reversed(list(config.items())))) == config_hash(config)
    assert config_hash({**config, "seed": 4}) != config_hash(config)


def test_config_hash_changes_with_the_schema_version(monkeypatch):
    config = TrainConfig().to_dict()
    before = config_hash(config)
    monkeypatch.setattr(results, "RESULTS_SCHEMA", results.RESULTS_SCHEMA + 1)
    assert config_hash(config) != before


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    result = make_result()
    path = tmp_path / "run.parquet"
    original = make_result(seed=7).save(path).read_bytes()

    def broken(table, where, **kwargs):
        where.write(b"PAR1 partial")  # some bytes reach the temporary file, then the write dies
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        result.save(path)
    assert path.read_bytes() == original  # the old record is intact
    assert [p.name for p in tmp_path.iterdir()] == ["run.parquet"]  # no temporary file left
    with pytest.raises(OSError):
        result.save(tmp_path / "new.parquet")
    assert not (tmp_path / "new.parquet").exists()


def test_other_parquet_files_are_rejected(tmp_path):
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "foreign.parquet")
    with pytest.raises(ValueError, match="not a dpbr result file"):
        Result.load(tmp_path / "foreign.parquet")


def test_metric_names_may_not_shadow_config_fields(tmp_path):
    result = make_result()
    result.metrics["lr"] = 1.0
    with pytest.raises(ValueError, match="clash"):
        result.save(tmp_path)
