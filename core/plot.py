"""Learning curves of one or more run directories:

    python -m core.plot RUN_DIR [RUN_DIR ...] [-o OUT.png]

Two panels against the epoch: training loss (log scale) and validation accuracy (%), one line
per run, labelled by its directory and the part of its config that differs between the runs; the
config they share (backend, H, B, lr, ...) is the title. Two runs of one config still have two
labels. The format is the one ``-o``'s suffix names (.png, .pdf, .svg, ...; PNG without one).
Needs matplotlib (``pip install 'dpmlp[plot]'``); without it: one line on stderr, exit code 2.
The default output is RUN_DIR/curves.png for one run, curves.png here for several.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from core.errors import UserError
from core.rundir import read_config, read_metrics

#: Always in a label, with their short names.
LABEL_KEYS = (("backend", "{}"), ("hidden", "H={}"), ("batch_size", "B={}"), ("lr", "lr={}"))
#: Added to the labels when they differ between the runs plotted.
OPTIONAL_KEYS = (("dtype", "{}"), ("ranks", "P={}"), ("reg", "reg={}"), ("scale", "scale={}"),
                 ("seed", "seed={}"), ("comm", "comm={}"), ("train_size", "N={}"))


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """The values labels are made of: the flags, with backend/comm/ranks/dtype as resolved."""
    config = read_config(run_dir)
    values = dict(config.get("flags", {}))
    for key in ("backend", "comm", "ranks", "dtype"):
        if config.get(key) is not None:
            values[key] = config[key]
    return values


def labels_for(runs: Sequence[dict[str, Any]]) -> list[str]:
    differing = [(k, f) for k, f in OPTIONAL_KEYS
                 if len({repr(r.get(k)) for r in runs}) > 1]
    labels = []
    for r in runs:
        parts = [f.format(r[k]) for k, f in LABEL_KEYS + tuple(differing) if r.get(k) is not None]
        labels.append(" ".join(parts) or "run")
    # Runs identical in every labelled key still need telling apart.
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            labels[i] = f"{label} #{seen[label]}"
    return labels


def _parts(run: dict[str, Any], keys) -> list[str]:
    return [f.format(run[k]) for k, f in keys if run.get(k) is not None]


def legend_labels(run_dirs: Sequence[str | Path], runs: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's directory (its name; the path as given where names repeat), with the config
    keys that differ between the runs in brackets."""
    names = [Path(d).name or str(d) for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    differing = [(k, f) for k, f in LABEL_KEYS + OPTIONAL_KEYS
                 if len({repr(r.get(k)) for r in runs}) > 1]
    labels = []
    for name, run in zip(names, runs):
        parts = _parts(run, differing)
        labels.append(f"{name} ({' '.join(parts)})" if parts else name)
    for i, label in enumerate(list(labels)):  # the same directory twice
        if labels.count(label) > 1:
            labels[i] = f"{label} #{labels[:i].count(label) + 1}"
    return labels


def common_title(runs: Sequence[dict[str, Any]]) -> str:
    """The config every run shares: backend, H, B, lr and the optional keys that agree."""
    same = [(k, f) for k, f in LABEL_KEYS + OPTIONAL_KEYS
            if len({repr(r.get(k)) for r in runs}) == 1]
    return " ".join(_parts(runs[0], same))


def _format_of(fig, out: Path) -> str:
    """The file format ``out``'s suffix names (png without a suffix); UserError otherwise."""
    ext = out.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if ext not in supported:
        raise UserError(f"-o {out}: matplotlib cannot write .{ext} files; use one of "
                        f"{', '.join('.' + e for e in sorted(supported))}")
    return ext


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Draw the curves of ``run_dirs`` into ``out`` (its suffix's format); returns its path."""
    runs = []  # the run directories first: a wrong path is the mistake to report
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        if not records:
            raise UserError(f"{Path(run_dir) / 'metrics.jsonl'}: no epoch recorded yet")
        runs.append((run_dir, run_summary(run_dir), records))
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'dpmlp[plot]' "
                        "(or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    labels = legend_labels(run_dirs, [summary for _, summary, _ in runs])

    columns = min(len(runs), 3)
    legend_rows = -(-len(runs) // columns)
    legend_height = 0.3 + 0.22 * legend_rows  # inches, below the panels
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2 + legend_height), dpi=100)
    handles = []
    for (run_dir, _, records), label in zip(runs, labels):
        epochs = [r["epoch"] for r in records]
        loss = [_finite(r.get("loss")) for r in records]
        acc = [None if r.get("val_accuracy") is None else 100 * float(r["val_accuracy"])
               for r in records]
        (line,) = ax_loss.plot(epochs, [math.nan if v is None else v for v in loss],
                               marker="o", markersize=3, label=label)
        handles.append(line)
        diverged = [e for e, r in zip(epochs, records) if _finite(r.get("loss")) is None]
        if diverged:  # a non-finite loss has no place on the axis: mark where it happened
            ax_loss.axvline(diverged[0], color=line.get_color(), linestyle=":", linewidth=1)
        if any(a is not None for a in acc):
            ax_acc.plot(epochs, [math.nan if a is None else a for a in acc], marker="o",
                        markersize=3, label=label, color=line.get_color())
    _label_axes(ax_loss, ax_acc, any(_finite(r.get("loss")) for _, _, recs in runs
                                     for r in recs))
    # One legend for both panels, below them, where it hides no curve.
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=9, frameon=False)
    fig.suptitle(common_title([summary for _, summary, _ in runs]), fontsize=10)
    fig.tight_layout(rect=(0, legend_height / (4.2 + legend_height), 1, 1))
    out = Path(out)
    try:
        fig.savefig(out, format=_format_of(fig, out))
    except OSError as exc:
        raise UserError(f"-o {out}: cannot write: {exc.strerror or exc}") from None
    except UserError:
        raise
    finally:
        plt.close(fig)
    return out


def _label_axes(ax_loss, ax_acc, log_scale: bool) -> None:
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy + L2 (log scale)")
    if log_scale:
        ax_loss.set_yscale("log")
    ax_acc.set_title("validation accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog=prog or "python -m core.plot",
                description="Learning curves (training loss, validation accuracy) of run "
                            "directories written with --run-dir.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default=None, metavar="OUT.png",
                   help="file to write, in the format its suffix names: .png, .pdf, .svg, ... "
                        "(default: RUN_DIR/curves.png for one run, ./curves.png)")
    return p


def main(argv=None, prog: str | None = None) -> int:
    try:
        args = build_parser(prog).parse_args(argv)
        out = args.output or (Path(args.run_dirs[0]) / "curves.png" if len(args.run_dirs) == 1
                              else Path("curves.png"))
        path = plot_runs(args.run_dirs, out)
    except UserError as exc:
        print(f"dpmlp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from core.startup import install_signal_handlers
    install_signal_handlers()
    sys.exit(main())
