"""core.rundir: config.json, metrics.jsonl (append, flush, truncation on resume), pre-flight."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from core import __version__
from core.errors import UserError
from core.rundir import CONFIG, METRICS, RunDir, read_config, read_metrics


def flags(**over):
    values = dict(hidden=16, reg=1e-5, lr=1.0, epochs=3, batch_size=100, seed=0,
                  dtype="float32", scale="unit", backend=None, comm="auto", data_dir=None,
                  save=None, run_dir="x")
    values.update(over)
    return argparse.Namespace(**values)


def record(run, epoch, loss=0.5, acc=0.9):
    return run.epoch_record(epoch=epoch, step=epoch * 5, loss=loss, val_accuracy=acc,
                            seconds=2.0, samples=500)


def test_prepare_creates_the_directory_and_checks_it(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    assert run.path.is_dir() and not run.has_run()
    with pytest.raises(UserError) as info:
        RunDir.prepare(tmp_path / "missing" / "run")
    assert "--run-dir" in str(info.value) and "does not exist" in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        RunDir.prepare(tmp_path / "file")


def test_config_holds_flags_and_environment(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    run.write_config(flags(), backend="numpy", comm="single", ranks=1, dtype="float32",
                     devices=["cpu"])
    config = json.loads((run.path / CONFIG).read_text())
    assert config["flags"]["hidden"] == 16 and config["flags"]["backend"] is None
    assert config["flags"]["batch_size"] == 100 and "run_dir" in config["flags"]
    assert (config["backend"], config["comm"], config["ranks"]) == ("numpy", "single", 1)
    assert config["dtype"] == "float32" and config["devices"] == ["cpu"]
    assert config["dpmlp_version"] == __version__
    assert "numpy" in config["packages"] and config["python"]
    assert run.has_run()
    assert [p.name for p in run.path.iterdir()] == [CONFIG]  # no temporary left


def test_resume_keeps_the_previous_config(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    run.write_config(flags(), backend="numpy", comm="single", ranks=1, dtype="float32")
    run.write_config(flags(epochs=6), backend="numpy", comm="mpi", ranks=2, dtype="float32",
                     resumed_from=tmp_path / "run")
    config = read_config(run.path)
    assert config["ranks"] == 2 and config["resumed_from"] == str(tmp_path / "run")
    assert [p["ranks"] for p in config["previous"]] == [1]


def test_metrics_one_line_per_epoch_flushed(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    for epoch in (1, 2):
        run.append_metrics(record(run, epoch, loss=1.0 / epoch))
        # Readable at once, by another process, while the run goes on.
        lines = (run.path / METRICS).read_text().splitlines()
        assert len(lines) == epoch
    recs = read_metrics(run.path)
    assert [r["epoch"] for r in recs] == [1, 2]
    r = recs[0]
    assert set(r) >= {"epoch", "step", "loss", "val_accuracy", "seconds", "samples_per_s", "time"}
    assert r["samples_per_s"] == 250.0 and r["step"] == 5 and r["val_accuracy"] == 0.9


def test_non_finite_loss_is_valid_json(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    run.append_metrics(record(run, 1, loss=math.inf))
    run.append_metrics(record(run, 2, loss=math.nan, acc=None))
    for line in (run.path / METRICS).read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    recs = read_metrics(run.path)
    assert recs[0]["loss"] == math.inf and math.isnan(recs[1]["loss"])
    assert recs[1]["val_accuracy"] is None


def test_truncate_on_resume_keeps_each_epoch_once(tmp_path):
    run = RunDir.prepare(tmp_path / "run")
    for epoch in (1, 2, 3, 4):
        run.append_metrics(record(run, epoch))
    with open(run.path / METRICS, "a") as fh:
        fh.write('{"epoch": 5, "lo')  # torn by a killed writer
    # Resumed from a checkpoint at the end of epoch 2 (or inside epoch 3):
    assert run.truncate_metrics(2) == 3
    assert [r["epoch"] for r in read_metrics(run.path)] == [1, 2]
    for epoch in (3, 4):
        run.append_metrics(record(run, epoch))
    assert [r["epoch"] for r in read_metrics(run.path)] == [1, 2, 3, 4]
    assert run.truncate_metrics(4) == 0


def test_truncate_without_metrics_is_fine(tmp_path):
    assert RunDir.prepare(tmp_path / "run").truncate_metrics(3) == 0


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(UserError, match="metrics.jsonl: not found"):
        read_metrics(tmp_path)
    (tmp_path / METRICS).write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_metrics(tmp_path)
