"""core.cli: the ``dpmlp`` console command's dispatch and --version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from core import __version__, cli

REPO = Path(__file__).resolve().parent.parent


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dpmlp {__version__}"


def test_unknown_command_is_one_line_exit_2(capsys):
    assert cli.main(["fly"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fly" in err[0] and "train" in err[0]


def test_no_command_prints_usage_exit_2(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("usage: dpmlp {train,bench,plot,backends}")


def test_backends_lists_numpy():
    proc = subprocess.run([sys.executable, "-m", "core.cli", "backends"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "numpy" in proc.stdout


def test_bench_mistake_is_one_line_exit_2(capsys):
    """dpmlp bench goes through the same error policy as python -m core.bench."""
    assert cli.main(["bench", "--gemm", "fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dpmlp: error: --gemm fast: choose from simt, tf32x3"]


def test_plot_dispatch(tmp_path, capsys):
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl: not found" in capsys.readouterr().err
