"""core.plot: learning curves of run directories to a PNG."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from core import plot
from core.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent


def make_run(path, hidden=16, lr=1.0, epochs=5, diverge_at=None, dtype="float32"):
    run = RunDir.prepare(path)
    flags = dict(hidden=hidden, lr=lr, batch_size=100, reg=1e-5, epochs=epochs, seed=0,
                 scale="unit", dtype=dtype, backend=None)
    run.write_config(flags, backend="numpy", comm="single", ranks=1, dtype=dtype)
    for e in range(1, epochs + 1):
        loss = float("inf") if diverge_at and e >= diverge_at else 0.6 / e ** (0.5 + lr / 4)
        run.append_metrics(run.epoch_record(epoch=e, step=50 * e, loss=loss,
                                            val_accuracy=0.9 + 0.07 * (1 - 1 / e) * lr,
                                            seconds=1.0, samples=5000))
    return run.path


def png_size(path):
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_labels_name_the_config_and_what_differs(tmp_path):
    a = make_run(tmp_path / "a", hidden=16, lr=1.0)
    b = make_run(tmp_path / "b", hidden=64, lr=0.5, dtype="float64")
    labels = plot.labels_for([plot.run_summary(a), plot.run_summary(b)])
    assert labels == ["numpy H=16 B=100 lr=1.0 float32", "numpy H=64 B=100 lr=0.5 float64"]
    same = plot.labels_for([plot.run_summary(a), plot.run_summary(a)])
    assert same[0] != same[1]


def test_legend_names_each_run_by_its_directory_and_the_title_the_shared_config(tmp_path):
    a = make_run(tmp_path / "a", hidden=16, lr=1.0)
    b = make_run(tmp_path / "b", hidden=64, lr=0.5, dtype="float64")
    c = make_run(tmp_path / "c", hidden=16, lr=1.0)
    runs = [plot.run_summary(d) for d in (a, b)]
    assert plot.legend_labels([a, b], runs) == ["a (H=16 lr=1.0 float32)",
                                                "b (H=64 lr=0.5 float64)"]
    assert plot.common_title(runs).startswith("numpy B=100 P=1 reg=1e-05")
    # two runs of one config: told apart by their directories
    same = [plot.run_summary(d) for d in (a, c)]
    assert plot.legend_labels([a, c], same) == ["a", "c"]
    assert plot.common_title(same).startswith("numpy H=16 B=100 lr=1.0 float32")


def test_png_with_expected_size_and_labels(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the 'plot' extra) is not installed")
    runs = [make_run(tmp_path / "a", 16, 1.0), make_run(tmp_path / "b", 64, 0.5),
            make_run(tmp_path / "c", 256, 2.0, diverge_at=4)]
    out = tmp_path / "curves.png"
    seen = {}
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen["legend"] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        seen["titles"] = [ax.get_title() for ax in fig.axes]
        return original(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = spy
    try:
        plot.plot_runs(runs, out)
    finally:
        matplotlib.figure.Figure.savefig = original
    assert out.stat().st_size > 10_000
    assert png_size(out) == (1100, 420 + 52)  # 11 x 4.2 in at 100 dpi, one legend row below
    assert seen["titles"] == ["training loss", "validation accuracy"]
    assert seen["legend"] == ["a (H=16 lr=1.0)", "b (H=64 lr=0.5)", "c (H=256 lr=2.0)"]


@pytest.mark.parametrize("suffix, magic", [(".pdf", b"%PDF"), (".svg", b"<?xml"),
                                           (".png", b"\x89PNG")])
def test_output_format_follows_the_suffix(tmp_path, suffix, magic):
    pytest.importorskip("matplotlib", reason="matplotlib (the 'plot' extra) is not installed")
    out = tmp_path / f"curves{suffix}"
    assert plot.main([str(make_run(tmp_path / "a")), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


def test_unknown_output_format_is_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the 'plot' extra) is not installed")
    out = tmp_path / "curves.docx"
    assert plot.main([str(make_run(tmp_path / "a")), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dpmlp: error: -o {out}: matplotlib cannot write .docx files; use "
                          f"one of ") and err.count("\n") == 1
    assert not out.exists()


def test_command_line(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the 'plot' extra) is not installed")
    run = make_run(tmp_path / "a")
    proc = subprocess.run([sys.executable, "-m", "core.plot", str(run)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (run / "curves.png").stat().st_size > 0
    assert proc.stdout.strip() == f"wrote {run / 'curves.png'}"


def test_missing_matplotlib_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "a")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot.main([str(run), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_not_a_run_dir_is_one_line_exit_2(tmp_path, capsys):
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0] and str(tmp_path) in err[0]
