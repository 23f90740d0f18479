"""``kdzoo plot``: PNG figures of runs and zoos.

* ``accuracy.png``: test top-1 per epoch, one line per row of the results table (the mean over
  its seeds) with a band of ± one standard deviation;
* ``terms.png``: every loss term per epoch, one panel per row (means over seeds, log scale);
* ``results.png``: the final table as bars (the best-epoch test top-1 mean) with error bars.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..engine.rundir import read_metrics
from ..engine.summary import scores
from ..errors import KdzooError
from .collect import Row, Run, group_rows, mean_std
from .table import BEST_LABELS


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise KdzooError('kdzoo plot needs matplotlib: pip install matplotlib (the README\'s '
                         'install command installs it)') from None
    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def label(row: Row) -> str:
    pair = f"{row.teacher}→{row.student}" if row.teacher else row.student
    settings = ", ".join(f"{k.removeprefix('method.')}={v}" for k, v in row.differing.items())
    return f"{row.shown} ({pair}, {row.data}{', ' + settings if settings else ''})"


def _per_epoch(row: Row, values_of: Any) -> tuple[list[int], list[float], list[float]]:
    """Epochs and the mean and std over the row's runs of ``values_of(history)``'s values."""
    by_epoch: dict[int, list[float]] = {}
    for run in row.runs:
        for epoch, value in values_of(read_metrics(run.path)):
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [s or 0.0 for _, s in stats]


def _whole_epochs(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 2.5" ticks


def accuracy_figure(rows: list[Row], plt: Any) -> Any:
    figure, axes = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        epochs, means, stds = _per_epoch(
            row, lambda h: [(e, s["top1"]) for e, s in scores(h, "test")])
        line, = axes.plot(epochs, means, label=label(row), linewidth=1.6)
        axes.fill_between(epochs, [m - s for m, s in zip(means, stds)],
                          [m + s for m, s in zip(means, stds)], color=line.get_color(),
                          alpha=0.15, linewidth=0)
    _whole_epochs(axes)
    axes.set(xlabel="epoch", ylabel="test top-1 (%)",
             title="Test top-1 per epoch (mean over seeds, band: ± 1 std)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def terms_figure(rows: list[Row], plt: Any) -> Any:
    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure, grid = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines),
                                squeeze=False)
    for axes, row in zip(grid.flat, rows):
        names = list(dict.fromkeys(k for r in row.runs for m in read_metrics(r.path)
                                   for k in m["terms"]))
        for name in names:
            epochs, means, _ = _per_epoch(row, lambda h, n=name: [
                (m["epoch"], m["terms"][n]) for m in h if n in m["terms"]])
            positive = [(e, v) for e, v in zip(epochs, means) if v > 0]
            if positive:
                axes.plot(*zip(*positive), label=name, linewidth=1.4)
        axes.set_yscale("log")
        axes.set_title(label(row), fontsize=8)
        axes.set_xlabel("epoch", fontsize=8)
        _whole_epochs(axes)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    for axes in list(grid.flat)[len(rows):]:
        axes.set_visible(False)
    figure.suptitle("Loss terms per epoch (mean over seeds)", fontsize=10)
    figure.tight_layout()
    return figure


def results_figure(rows: list[Row], plt: Any) -> Any:
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    stats = [mean_std(r.values("best_top1")) for r in rows]
    means = [m or 0.0 for m, _ in stats]
    stds = [s or 0.0 for _, s in stats]
    positions = list(range(len(rows)))
    axes.barh(positions, means, xerr=stds, capsize=3, color="#4c72b0", alpha=0.85)
    axes.set_yticks(positions, [label(r) for r in rows], fontsize=7)
    axes.invert_yaxis()
    low = min((m - s for m, s in zip(means, stds)), default=0.0)
    high = max((m + s for m, s in zip(means, stds)), default=100.0)
    # room right of the longest error bar for its label
    axes.set_xlim(max(0.0, low - 2), min(100.0, high + 0.12 * (high - low + 4)))
    selections = {r.selection for r in rows}
    axes.set_xlabel(BEST_LABELS[selections.pop() if len(selections) == 1 else "mixed"] +
                    " (%), mean ± std over seeds")
    for position, mean, std in zip(positions, means, stds):
        # written after the error bar, so the bar's cap never crosses the number
        text = f" {mean:.2f} ± {std:.2f}" if std else f" {mean:.2f}"
        axes.text(mean + std, position, text, va="center", fontsize=7)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def plot(runs: list[Run], out: str | Path) -> dict[str, dict[str, Any]]:
    """Write the three figures into ``out``; returns {name: {"path", "series"}} (the number of
    lines, panels or bars drawn)."""
    plt = _pyplot()
    rows = group_rows(runs)
    if not rows:
        raise KdzooError("no finished runs to plot: let the runs finish (or `kdzoo zoo` them)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, make in (("accuracy", accuracy_figure), ("terms", terms_figure),
                       ("results", results_figure)):
        figure = make(rows, plt)
        path = out / f"{name}.png"
        figure.savefig(path, dpi=120)
        axes = [a for a in figure.axes if a.get_visible()]
        series = {"accuracy": len(axes[0].lines), "terms": len(axes),
                  "results": len(axes[0].patches)}[name]
        written[name] = {"path": str(path), "series": series}
        plt.close(figure)
    return written
