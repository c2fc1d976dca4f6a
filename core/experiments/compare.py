"""Runs side by side: what differs in their configs, how their metrics compare, their curves.

Reads run directories (config.toml, metrics.jsonl, summary.json) and sweep directories
(sweep.jsonl, sweep.json), tolerating runs from earlier versions (no summary.json, no timings).
Which metrics a run has, and which way each improves, are its task's, as its summary.json records
them (``"metrics"``); a run without them (0.2's, or one stopped before its summary) has 0.2's
loss and accuracy (:data:`jaxyard.core.metrics.DIRECTIONS`).
Pure Python: no jax; matplotlib only inside the plotting functions.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from jaxyard.core import metrics as M
from jaxyard.core.errors import JaxyardError, UsageError, did_you_mean
from jaxyard.core.store import rundir as rd

SWEEP_TRIALS = "sweep.jsonl"
SWEEP_META = "sweep.json"
MAX_LINES = 10  # curves overlaid in one compare figure
TOP_TRIALS = 5  # curves in the sweep figure
# config keys that never change the numbers: where files go, what is logged, how often to save
IGNORED = {
    "run.out", "run.runs_dir", "run.loggers", "run.eval_batch_size", "run.save_every",
    "run.keep_latest", "run.keep_best", "run.profile", "run.checkpointer",
}
IGNORED_PREFIXES = ("logger.", "checkpointer.")
_MISSING = object()


@attrs.frozen
class RunRecord:
    """One run read back: its label, directory, flattened config, epoch records and summary."""

    label: str
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    trial: dict[str, Any] | None = None  # its sweep.jsonl line, when it came from a sweep

    @property
    def directions(self) -> dict[str, M.Direction]:
        """Its task's metrics, each with its direction (``{"loss": "min", "acc": "max"}``), as
        its summary.json records them; without them, 0.2's."""
        return M.of_summary(self.summary)


@attrs.frozen
class Sweep:
    """A sweep directory read back: its monitor, direction, space and trials (last line per trial wins)."""

    path: Path
    monitor: str
    direction: str
    space: dict[str, Any]
    trials: list[dict[str, Any]]


# --- reading -------------------------------------------------------------------------------------


def load_runs(paths: Iterable[str | os.PathLike]) -> list[RunRecord]:
    """Read each run directory, each sweep directory's trials in trial order, and each folder of
    them (``runs/``, a sweep's ``trials/``): the run and sweep directories in it, at any depth
    (``runs/lr/s0``; not inside a run or a sweep directory), in natural order by name (``2`` before ``10``)."""
    paths = list(paths)
    found: list[tuple[Path, dict | None, str | None]] = []  # (run dir, trial, sweep name)
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UsageError(f"{path} does not exist; expected a run directory (with {rd.CONFIG}) or a sweep directory (with {SWEEP_TRIALS}), "
                             "or a folder of them")
        held = [path] if _holds_runs(path) else _held(path, set())
        if not held:
            raise UsageError(
                f"{path} is not a run directory (no {rd.CONFIG}) nor a sweep directory (no {SWEEP_TRIALS}), and holds none; "
                "give a directory that `jaxyard run` or `jaxyard sweep` wrote, or a folder of them"
            )
        for held_dir in held:
            if (held_dir / rd.CONFIG).is_file():
                found.append((held_dir, None, None))
            else:
                found.extend((run_dir, trial, _name(held_dir)) for trial, run_dir in _trial_dirs(load_sweep(held_dir)))
    seen: set[Path] = set()
    unique = []
    for path, trial, sweep_name in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, trial, sweep_name))
    if not unique:
        where = ", ".join(str(p) for p in paths)
        raise UsageError(f"no runs to compare in {where}: no trial of the sweep has a run directory yet; wait for one to finish")
    labels = _labels([(path, sweep_name) for path, _, sweep_name in unique])
    return [_load_run(path, label, trial) for (path, trial, _), label in zip(unique, labels, strict=True)]


def _holds_runs(path: Path) -> bool:
    """A run directory (config.toml) or a sweep directory (sweep.jsonl)."""
    return (path / rd.CONFIG).is_file() or (path / SWEEP_TRIALS).is_file()


def _held(folder: Path, seen: set[Path]) -> list[Path]:
    """The run and sweep directories in ``folder`` and in its folders, depth first in natural order
    by name; a folder reached twice (a link) is read once."""
    out = []
    for path in sorted(_subdirs(folder), key=_natural):
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        out.extend([path] if _holds_runs(path) else _held(path, seen))
    return out


def _natural(path: Path) -> tuple[list[Any], str]:
    """Sorts names as a person would: ``run2`` before ``run10``."""
    return [int(part) if part.isdecimal() else part.lower() for part in re.split(r"(\d+)", path.name)], path.name


def _subdirs(path: Path) -> list[Path]:
    """The directories directly in ``path`` (none when it is a file or unreadable)."""
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read a sweep directory's sweep.jsonl (and sweep.json when present)."""
    path = Path(path)
    if not (path / SWEEP_TRIALS).is_file():
        raise UsageError(f"{path} is not a sweep directory (no {SWEEP_TRIALS}); give a directory that `jaxyard sweep` wrote")
    meta = _read_json(path / SWEEP_META) or {}
    by_number: dict[Any, dict] = {}
    for line in _read_jsonl(path / SWEEP_TRIALS):
        number = line.get("trial")
        if not isinstance(number, (int, str, type(None))):
            raise UsageError(f"{path / SWEEP_TRIALS}: trial {number!r} is not a trial number; it was not written by jaxyard, or it was edited")
        by_number.pop(number, None)  # a retried trial: the last line wins
        by_number[number] = line
    trials = sorted(by_number.values(), key=lambda t: t["trial"] if isinstance(t.get("trial"), int) else math.inf)
    monitor, metrics, direction, space = (meta.get(key) for key in ("monitor", "metrics", "direction", "space"))  # as written, or not
    monitor = monitor if isinstance(monitor, str) and monitor else "val_loss"
    metrics = metrics if isinstance(metrics, dict) else None
    if direction not in ("minimize", "maximize"):
        direction = "minimize" if M.minimized(monitor, metrics) else "maximize"
    return Sweep(path, monitor, str(direction), dict(space) if isinstance(space, dict) else {}, trials)


def flatten_config(data: dict[str, Any]) -> dict[str, Any]:
    """``run.KEY`` for the [run] table, ``KIND.KEY`` for the chosen component of each kind (its
    name is ``run.KIND``), ``KIND.NAME.KEY`` where a kind has several tables (loggers)."""
    out = {f"run.{key}": value for key, value in data.get("run", {}).items()}
    for kind, tables in data.items():
        if kind == "run" or not isinstance(tables, dict):
            continue
        single = kind != "logger" and len(tables) == 1
        for name, table in tables.items():
            prefix = f"{kind}." if single else f"{kind}.{name}."
            for key, value in (table.items() if isinstance(table, dict) else ()):
                out[prefix + key] = value
    return out


def _load_run(path: Path, label: str, trial: dict | None) -> RunRecord:
    data = _read_toml(path / rd.CONFIG)
    metrics_file = _metrics_file(path, data)
    records: dict[Any, dict] = {}
    for record in _read_jsonl(path / metrics_file) if (path / metrics_file).is_file() else ():
        records.pop(record.get("epoch"), None)  # a repeated epoch: the last record wins
        records[record.get("epoch")] = record
    summary = _read_json(path / rd.SUMMARY)
    return RunRecord(label, path, flatten_config(data), list(records.values()), summary, trial)


def _read_toml(path: Path) -> dict[str, Any]:
    """A run's config.toml, or one line naming it: not UTF-8, not TOML, nested too deeply, unreadable."""
    fault = "it is not a run jaxyard wrote, or it was edited"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; {fault}") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path} is not valid TOML ({err}); {fault}") from None
    except RecursionError:  # tomllib recurses per level: `a = [[[[...]]]]` thousands deep
        raise UsageError(f"{path} is not valid TOML (arrays or tables nested too deeply); {fault}") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {err.strerror or err}") from None


def _metrics_file(path: Path, data: dict[str, Any]) -> str:
    """The run's epoch records: its jsonl logger's file, inside the run directory (else metrics.jsonl)."""
    logger = data.get("logger")
    table = logger.get("jsonl") if isinstance(logger, dict) else None
    name = table.get("filename", rd.METRICS) if isinstance(table, dict) else rd.METRICS
    if not isinstance(name, str) or not _inside(name):
        raise UsageError(f"{path / rd.CONFIG}: logger.jsonl.filename {name!r} is not a file inside the run directory; it was edited")
    return name


def _inside(relative: str) -> bool:
    """Whether ``relative`` names a path inside a directory: relative, without '..' or '~'."""
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts and not relative.startswith("~")


def _trial_dirs(sweep: Sweep):
    """(trial, run dir) for each trial that has a run directory; a failed one without is skipped."""
    for trial in sweep.trials:
        run_dir = trial.get("run_dir")
        if not run_dir:
            continue
        if not isinstance(run_dir, str) or not _inside(run_dir):
            raise UsageError(
                f"{sweep.path / SWEEP_TRIALS}: trial {trial.get('trial')}'s run_dir {run_dir!r} is not a directory inside the sweep "
                "(trials/NNNN); it was not written by jaxyard, or it was edited"
            )
        path = sweep.path / run_dir
        if not (path / rd.CONFIG).is_file():
            if trial.get("state") == "failed":
                continue
            raise UsageError(
                f"{sweep.path / SWEEP_TRIALS}: trial {trial.get('trial')}'s run directory {path} has no {rd.CONFIG}; was it moved or deleted?"
            )
        yield trial, path


def _labels(items: list[tuple[Path, str | None]]) -> list[str]:
    """The directory's name (``SWEEP/NAME`` for a trial), longer where two would be the same."""

    def label(path: Path, sweep: str | None, parts: int) -> str:
        names = path.resolve().parts[-parts:]
        return "/".join(([sweep] if sweep else []) + list(names))

    labels = [label(p, s, 1) for p, s in items]
    for parts in (2, 3):
        clashes = {x for x in labels if labels.count(x) > 1}
        labels = [label(p, s, parts) if x in clashes else x for (p, s), x in zip(items, labels, strict=True)]
    counts: dict[str, int] = {}
    out = []
    for x in labels:
        counts[x] = counts.get(x, 0) + 1
        out.append(x if labels.count(x) == 1 else f"{x}#{counts[x]}")
    return out


def _name(path: Path) -> str:
    return path.resolve().name


def _read_json(path: Path) -> dict | None:
    """A JSON object file, or None when missing or unreadable (an interrupted or older run)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return data if isinstance(data, dict) else None


def _read_jsonl(path: Path) -> list[dict]:
    """One object per line; a torn last line (a killed writer) is left out."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {err.strerror or err}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # not UTF-8 (a ValueError), not JSON, nested too deeply
            if number == len(lines):
                break
            raise UsageError(f"{path}:{number} is not a JSON line; it was not written by jaxyard, or it was edited") from None
        if isinstance(item, dict):
            out.append(item)
    return out


# --- comparing -----------------------------------------------------------------------------------


def differing(runs: Sequence[RunRecord]) -> list[str]:
    """The config keys whose values differ between runs (missing counts as a value), in file order;
    keys that never change the numbers (where files go, loggers, checkpoint cadence) left out."""
    keys = list(dict.fromkeys(k for r in runs for k in r.config))
    out = []
    for key in keys:
        if key in IGNORED or key.startswith(IGNORED_PREFIXES):
            continue
        if len({_canonical(r.config.get(key, _MISSING)) for r in runs}) > 1:
            out.append(key)
    return out


def metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The metrics (``SPLIT_NAME`` and its ``_ema`` average, for a metric NAME of the run's task)
    recorded per epoch by any of ``runs``, sorted."""
    return sorted({k for r in runs for rec in r.history for k in rec if M.is_metric(k, r.directions)})


def check_metric(runs: Sequence[RunRecord], metric: str) -> str:
    """``metric`` if some run records it per epoch, else a UsageError naming the valid ones."""
    return _check_metric(metric, metrics(runs))


def _check_metric(metric: str, valid: list[str]) -> str:
    if metric in valid:
        return metric
    if not valid:
        raise UsageError(f"metric {metric!r}: these runs recorded no epochs yet (no metrics.jsonl records)")
    raise UsageError(f"metric {metric!r} is not recorded by these runs{did_you_mean(metric, valid)} (valid: {', '.join(valid)})")


def task_metrics(runs: Sequence[RunRecord]) -> list[str]:
    """The base metrics of the runs' tasks, in task order (the first run's first)."""
    return list(dict.fromkeys(m for r in runs for m in r.directions))


def default_metric(runs: Sequence[RunRecord]) -> str:
    """What ``compare`` ranks by when not told: ``val_NAME`` for the first metric of the runs'
    task besides the loss that they record (``val_acc`` for classification, ``val_mse`` for
    regression, ``val_perplexity`` for next_token), else ``val_loss``."""
    recorded = set(metrics(runs))
    return next((f"val_{m}" for m in task_metrics(runs) if m != M.LOSS and f"val_{m}" in recorded), f"val_{M.LOSS}")


def direction(runs: Sequence[RunRecord], metric: str) -> str:
    """``"min"`` or ``"max"``: which way ``metric`` improves in the tasks of the runs that record
    it (a UsageError when two of them disagree: runs of different tasks)."""
    ways: dict[str, str] = {}
    for r in runs:
        if any(metric in rec for rec in r.history) and M.is_metric(metric, r.directions):
            ways.setdefault(M.direction(metric, r.directions), r.label)
    if len(ways) > 1:
        raise UsageError(f"metric {metric!r} is minimized in {ways['min']} but maximized in {ways['max']}: "
                         "their tasks differ; compare runs of one task")
    return next(iter(ways), "min")


def test_columns(runs: Sequence[RunRecord]) -> list[str]:
    """The test metrics the runs' summaries may hold: ``test_NAME`` for each metric of their
    tasks, the loss last (``test_acc``, ``test_loss`` for classification)."""
    names = task_metrics(runs)
    return [f"test_{m}" for m in [*(m for m in names if m != M.LOSS), *(m for m in names if m == M.LOSS)]]


def summarize(runs: Sequence[RunRecord], metric: str | None = None) -> dict[str, Any]:
    """Plain data for ``--json``: the metric (default: :func:`default_metric`), which way it
    improves, the differing keys and one entry per run, best first."""
    metric = metric or default_metric(runs)
    check_metric(runs, metric)
    way = direction(runs, metric)
    keys = differing(runs)
    tests = test_columns(runs)
    sign = 1.0 if way == "min" else -1.0
    entries = []
    for r in runs:
        scored = [(sign * rec[metric], i, rec) for i, rec in enumerate(r.history) if _finite(rec.get(metric))]
        best = min(scored, key=lambda s: s[:2])[2] if scored else None  # on a tie, the earlier epoch
        test = (r.summary or {}).get("test") or {}
        final = r.history[-1].get(metric) if r.history else None
        entries.append({
            "label": r.label,
            "path": str(r.path),
            "config": {k: r.config.get(k) for k in keys},
            "epochs": (r.summary or {}).get("epochs_run", len(r.history)),
            "final": final,
            "best": best[metric] if best else None,
            "best_epoch": best.get("epoch") if best else None,
            **{k: test.get(k) for k in tests},
            "state": (r.trial or {}).get("state"),
        })
    entries.sort(key=lambda e: (e["best"] is None, sign * e["best"] if e["best"] is not None else 0.0))
    return {"metric": metric, "direction": way, "differing": keys, "tests": tests, "runs": entries}


def table(runs: Sequence[RunRecord], metric: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Headers and one row per run, best ``metric`` first (default: :func:`default_metric`): label,
    the differing config values, epochs run, final and best ``metric``, and the test metrics
    (:func:`test_columns`) where a summary holds them."""
    data = summarize(runs, metric)
    metric = data["metric"]
    tests = [k for k in data["tests"] if any(e[k] is not None for e in data["runs"])]
    states = ["state"] if any(e["state"] for e in data["runs"]) else []  # a sweep's trials: complete, pruned, failed
    headers = ["run", *states, *data["differing"], "epochs", f"final {metric}", f"best {metric}", *tests]
    rows = [
        [e["label"], *([e["state"] or ""] if states else []), *(e["config"][k] for k in data["differing"]), e["epochs"], e["final"],
         e["best"], *(e[k] for k in tests)]
        for e in data["runs"]
    ]
    return headers, rows


def format_rows(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[list[str]]:
    """:func:`table`'s rows as text: settings as written (``0.0003``), metrics to 4 decimals."""
    settings = range(1, headers.index("epochs")) if "epochs" in headers else range(0)
    return [[format_cell(v, metric=i not in settings) for i, v in enumerate(row)] for row in rows]


def format_cell(value: Any, *, metric: bool = False) -> str:
    """A table cell: blank for missing, lower-case booleans, JSON for lists; a float to 4 decimals
    when it is a ``metric``, else in its shortest form."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not metric:
            return f"{value:.6g}"
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _canonical(value: Any) -> str:
    return "<missing>" if value is _MISSING else json.dumps(value, sort_keys=True, default=str)


# --- figures -------------------------------------------------------------------------------------


def plot_compare(runs: Sequence[RunRecord], metric: str | None, path: str | os.PathLike) -> Path:
    """Overlay ``metric`` (None: :func:`default_metric`) per epoch, one line per run (the best
    ``MAX_LINES`` by it), as a PNG."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from jaxyard.core.experiments.plot import DPI, _save

    data = summarize(runs, metric)
    metric = data["metric"]
    by_label = {r.label: r for r in runs}
    ranked = [e for e in data["runs"] if e["best"] is not None]
    shown = ranked[:MAX_LINES]
    fig = Figure(figsize=(10, 5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for e in shown:
        epochs, values = _curve(by_label[e["label"]].history, metric)
        ax.plot(epochs, values, "o-", markersize=3, label=f"{e['label']} (best {e['best']:.4g})")
    note = f" (best {len(shown)} of {len(ranked)} runs)" if len(ranked) > len(shown) else ""
    ax.set(title=f"{metric} per epoch{note}", xlabel="epoch", ylabel=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize="small")
    return _save(fig, Path(path))


def plot_sweep(sweep_dir: str | os.PathLike, path: str | os.PathLike, metric: str | None = None) -> Path:
    """The sweep figure: the monitored value against each swept parameter (pruned trials marked,
    failed ones left out), and ``metric`` per epoch for the best ``TOP_TRIALS`` trials, as a PNG."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from jaxyard.core.experiments.plot import DPI, _save

    sweep = load_sweep(sweep_dir)
    metric = metric or sweep.monitor or "val_loss"
    trials = [t for t in sweep.trials if t.get("state") != "failed"]
    scored = [t for t in trials if _finite(t.get("value"))]
    params = list(dict.fromkeys([*sweep.space, *(k for t in sweep.trials for k in (t.get("params") or {}))]))
    sign = 1.0 if sweep.direction.startswith("min") else -1.0
    top = sorted(scored, key=lambda t: sign * t["value"])[:TOP_TRIALS]
    curves, records = [], []
    for t in top:
        run_dir = sweep.path / t["run_dir"] if t.get("run_dir") else None
        if run_dir is not None and (run_dir / rd.CONFIG).is_file():
            record = _load_run(run_dir, f"{t.get('trial')}", t)
            curves.append((t, record.history))
            records.append(record)
    if curves:
        check_metric(records, metric)

    panels = len(params) + 1
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(5 * cols, 4 * rows), dpi=DPI)  # fixed margins: half the time of a constrained layout
    width, height = 5 * cols, 4 * rows  # margins in inches: room for tick labels, axis labels and the title
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.7 / height, wspace=0.3, hspace=0.4)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, params, strict=False):  # more axes than parameters: the curve panel and spare cells follow
        _param_panel(ax, name, sweep.space.get(name) or {}, scored, sweep.monitor)
    ax = axes[len(params)]
    for t, history in curves:
        epochs, values = _curve(history, metric)
        style = "x--" if t.get("state") == "pruned" else "o-"
        ax.plot(epochs, values, style, markersize=3, label=f"trial {t.get('trial')} ({t['value']:.4g})")
    ax.set(title=f"{metric} per epoch, best {len(curves)} trials", xlabel="epoch", ylabel=metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    for extra in axes[panels:]:
        extra.set_visible(False)
    states = [t.get("state") for t in sweep.trials]
    fig.suptitle(
        f"{_name(sweep.path)}: {sweep.direction} {sweep.monitor}; {states.count('complete')} complete, "
        f"{states.count('pruned')} pruned, {states.count('failed')} failed"
    )
    return _save(fig, Path(path))


def _param_panel(ax, name: str, spec: dict, trials: list[dict], monitor: str) -> None:
    """The monitored value against parameter ``name``: log, linear or categorical x-axis."""
    points = [(t["params"][name], t["value"], t.get("state") == "pruned") for t in trials if name in (t.get("params") or {})]
    xs = [x for x, _, _ in points]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs) and spec.get("kind") != "choice"
    if numeric:
        positions = xs
        log = bool(xs) and all(x > 0 for x in xs) and (spec.get("kind") == "log" or max(xs) >= 100 * min(xs))
        if log:
            ax.set_xscale("log")
    else:
        order = [_canonical(c) for c in spec.get("choices") or spec.get("values") or ()]
        categories = list(dict.fromkeys([*order, *(_canonical(x) for x in xs)]))
        positions = [categories.index(_canonical(x)) for x in xs]
        ax.set_xticks(range(len(categories)), [format_cell(json.loads(c)) for c in categories])
    for pruned, marker, label in ((False, "o", "complete"), (True, "x", "pruned")):
        chosen = [(p, y) for p, (_, y, was) in zip(positions, points, strict=True) if was == pruned]
        if chosen:
            ax.scatter([p for p, _ in chosen], [y for _, y in chosen], marker=marker, label=label,
                       color="tab:blue" if not pruned else "tab:red")
    ax.set(title=name, xlabel=name, ylabel=monitor)
    ax.grid(alpha=0.3)
    if any(pruned for *_, pruned in points):
        ax.legend(fontsize="small")


def _curve(history: list[dict], metric: str) -> tuple[list, list]:
    points = [(r.get("epoch"), r.get(metric)) for r in history if isinstance(r.get(metric), (int, float))]
    return [e for e, _ in points], [v for _, v in points]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rerun_command(run_dir: str | os.PathLike, registry) -> str:
    """The command that reruns a sweep's trial alone: ``jaxyard run --config RUN_DIR/config.toml``,
    with the destinations it names given again (``--set logger.mlflow.tracking_uri=...``: a data
    file cannot choose them, and ``run`` refuses them without)."""
    from jaxyard.core.registry.config import outside_sets, resolve_config
    from jaxyard.core.registry.entries import KINDS
    from jaxyard.core.registry.settings import Settings

    path = Path(run_dir) / "config.toml"
    try:
        items = outside_sets(resolve_config(registry, Settings(), config_file=str(path), unbuilt=KINDS))
    except (JaxyardError, OSError):  # unreadable now: the command as it stands
        items = []
    return " ".join(["jaxyard run --config", shlex.quote(str(path)), *(f"--set {shlex.quote(item)}" for item in items)])
