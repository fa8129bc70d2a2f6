"""core.progress: plain lines off a terminal, a tqdm bar on one, the summary, the fallbacks."""

from __future__ import annotations

import io
import re
import sys

import pytest

from core import progress as pg


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def run_epochs(p, epochs=3, steps=4, batch=25, accs=(0.8, 0.95, 0.9)):
    for epoch in range(1, epochs + 1):
        p.start_epoch(epoch)
        for step in range(steps):
            p.on_step(batch, loss=lambda: 0.5)
        p.end_epoch(epoch, 1.0 / epoch, accs[epoch - 1], seconds=0.5)


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = pg.Progress(epochs=3, steps_per_epoch=4, stream=out)
    assert not p.uses_bar
    run_epochs(p)
    summary = p.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    # The start of each line is what the CLI tests (and scripts) parse.
    assert re.match(r"^epoch\s+1/3\s+loss 1\.0000\s+val acc\s+80\.00%\s+time 0\.500 s\s+200 samples/s$",
                    lines[0]), lines[0]
    assert lines[3] == summary
    assert summary == ("done: 3 epoch(s), 300 samples in 1.5 s (200 samples/s); "
                       "best val acc 95.00% at epoch 2")


def test_quiet_keeps_only_the_summary():
    out = io.StringIO()
    p = pg.Progress(epochs=3, steps_per_epoch=4, stream=out, quiet=True)
    run_epochs(p)
    p.finish()
    assert out.getvalue().splitlines() == [p.summary()]


def test_disabled_on_other_ranks_prints_nothing():
    out = FakeTTY()
    p = pg.Progress(epochs=3, steps_per_epoch=4, stream=out, enabled=False)
    run_epochs(p)
    assert p.finish() is None and out.getvalue() == ""
    with p.task("test", 10) as t:
        t.update(10)


def test_bar_on_a_terminal_then_the_epoch_line():
    pytest.importorskip("tqdm")
    out = FakeTTY()
    p = pg.Progress(epochs=2, steps_per_epoch=4, stream=out, refresh=0.0)
    assert p.uses_bar
    calls = []

    def loss():
        calls.append(1)
        return 0.25

    p.start_epoch(1)
    for _ in range(4):
        p.on_step(25, loss=loss)
    text = out.getvalue()
    assert "epoch 1/2" in text and "steps" in text and "samples/s" in text and "loss 0.2500" in text
    assert calls  # the running loss was asked for (at the redraw cadence)
    p.end_epoch(1, 0.3, 0.9, 1.0)
    assert "epoch   1/2  loss 0.3000" in out.getvalue()
    with p.task("test set", 100) as t:
        t.update(100)
    assert "test set" in out.getvalue()


def test_running_loss_is_not_computed_every_step():
    pytest.importorskip("tqdm")
    p = pg.Progress(epochs=1, steps_per_epoch=1000, stream=FakeTTY(), refresh=3600)
    calls = []
    p.start_epoch(1)
    for _ in range(1000):
        p.on_step(10, loss=lambda: calls.append(1) or 0.1)
    p.close()
    assert calls == []  # a GPU backend is not synchronised per step


def test_resume_inside_an_epoch_starts_the_bar_there():
    pytest.importorskip("tqdm")
    out = FakeTTY()
    p = pg.Progress(epochs=2, steps_per_epoch=10, stream=out, refresh=0.0)
    p.start_epoch(2, first_step=6)
    p.on_step(5)
    p.close()
    assert "7/10" in out.getvalue()


def test_without_tqdm_the_plain_lines_are_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    out = FakeTTY()
    p = pg.Progress(epochs=3, steps_per_epoch=4, stream=out)
    assert not p.uses_bar
    run_epochs(p)
    p.finish()
    assert len(out.getvalue().splitlines()) == 4


def test_summary_without_validation_or_epochs():
    p = pg.Progress(epochs=1, steps_per_epoch=1, stream=io.StringIO())
    assert p.summary() == "done: no epoch trained"
    p.start_epoch(1)
    p.on_step(10)
    p.end_epoch(1, 0.5, None, 2.0)
    assert p.summary() == "done: 1 epoch(s), 10 samples in 2.0 s (5 samples/s)"
