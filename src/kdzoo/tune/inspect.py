"""Reading a tune folder back: its study's best trials (``kdzoo report``) and Optuna's pictures
of the search (``kdzoo plot``): the optimisation history, the hyper-parameter importances and a
slice plot per hyper-parameter (:mod:`optuna.visualization.matplotlib`)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import KdzooError
from .space import shown
from .study import open_storage, optuna_module

STATE_FILE = "tune.json"


def is_tune_folder(path: str | Path) -> bool:
    return (Path(path) / STATE_FILE).is_file()


def load_tune_study(folder: str | Path) -> Any:
    """The study a tune folder's trials belong to (its tune.json names study and storage)."""
    state = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
    if "***" in state["storage"]:
        raise KdzooError(f"{folder}'s study is in a storage with a password, which tune.json "
                         "does not keep: open it with optuna.load_study(study_name="
                         f"{state['study']!r}, storage=URL)")
    storage = open_storage(state["storage"])
    return optuna_module().load_study(study_name=state["study"], storage=storage)



def trials_table(study: Any, top: int = 10) -> str:
    """The best ``top`` completed trials (markdown), and what every trial came to."""
    state = optuna_module().trial.TrialState
    counts: dict[str, int] = {}
    for trial in study.trials:
        name = "interrupted" if trial.user_attrs.get("interrupted") else trial.state.name.lower()
        counts[name] = counts.get(name, 0) + 1
    complete = sorted((t for t in study.trials if t.state == state.COMPLETE),
                      key=lambda t: (-t.value, t.number))
    lines = [f"study {study.study_name}: {len(study.trials)} trials (" +
             ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")", "",
             "| rank | trial | val top-1 (best epoch) | epochs | settings |",
             "|---|---|---|---|---|"]
    for rank, trial in enumerate(complete[:top], start=1):
        settings = ", ".join(f"{k}={shown(v)}" for k, v in trial.params.items())
        epochs = max(trial.intermediate_values, default=0)
        lines.append(f"| {rank} | {trial.number} | {trial.value:.2f} | {epochs} | {settings} |")
    pruned = [t for t in study.trials if t.state == state.PRUNED]
    if pruned:
        epochs = [max(t.intermediate_values, default=0) for t in pruned]
        line = f"pruned trials stopped after {sum(epochs) / len(epochs):.1f} epochs on average"
        cost = [_seconds(t) for t in pruned]
        full = [_seconds(t) for t in complete]
        if full:
            line += (f", {_mean(cost):.0f} s each against {_mean(full):.0f} s for a complete "
                     "trial")
        lines += ["", line]
    return "\n".join(lines)


def _seconds(trial: Any) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def plot_study(study: Any, out: Path, prefix: str = "") -> list[Path]:
    """optimization_history.png, param_importances.png (with two or more completed trials)
    and slice_<hyper-parameter>.png in ``out`` (names after ``prefix``); returns the files
    written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    visual = optuna_module().visualization.matplotlib
    state = optuna_module().trial.TrialState
    complete = [t for t in study.trials if t.state == state.COMPLETE]
    if not complete:
        raise KdzooError(f"study {study.study_name} has no completed trial to plot yet")
    params = sorted({k for t in complete for k in t.params})
    figures: dict[str, Any] = {"optimization_history.png": lambda: visual.
                               plot_optimization_history(study, target_name="val top-1")}
    if len(complete) >= 2 and params:
        figures["param_importances.png"] = lambda: visual.plot_param_importances(study)
    for name in params:
        figures[f"slice_{name}.png"] = lambda name=name: visual.plot_slice(
            study, params=[name], target_name="val top-1")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for filename, draw in figures.items():
            axes = draw()
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(out / f"{prefix}{filename}", dpi=100)
            plt.close(figure)
            written.append(out / f"{prefix}{filename}")
    return written
