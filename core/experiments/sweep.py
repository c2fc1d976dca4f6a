"""Sweeps: many configurations of one run, as trials of an Optuna study, compiled once per static group.

A sweep directory holds ``sweep.json`` (the space, the sampler, the budget), ``base.toml`` (the
resolved configuration every trial starts from), the study (``study.log``, an Optuna journal
file, unless ``--storage`` names another), ``trials/NNNN/`` (each trial's ordinary run
directory: its config.toml reruns it alone, with the destinations it names given again) and
``sweep.jsonl`` (one line per finished trial).

Workers (processes) share the study: each asks it for the next trial under a lock on the sweep
directory, so no trial is lost or run twice, and trains its trials in one process: the
hyperparameters it varies that are traced (``jaxyard.param(traced=True)``) are inputs of one
compiled program per static group.

From Python, as the ``sweep`` command does: :func:`new` writes the directory (the trials' defaults
included), then :func:`run_worker` runs the trials in this process, or :func:`spawn_workers` in
several, and :func:`leaderboard` ranks them. The search space is :mod:`jaxyard.core.experiments.space`,
the Optuna study :mod:`jaxyard.core.experiments.study`, ``sweep.jsonl`` and what ``--resume`` runs
again :mod:`jaxyard.core.experiments.recovery`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from jaxyard.core import metrics as M
from jaxyard.core.errors import JaxyardError, TrainingError, UsageError, one_line
from jaxyard.core.experiments import recovery
from jaxyard.core.experiments.recovery import RESULTS as RESULTS
from jaxyard.core.experiments.recovery import _append, _params, environmental
from jaxyard.core.experiments.recovery import check_storage as check_storage
from jaxyard.core.experiments.recovery import recover as recover
from jaxyard.core.experiments.recovery import results as results
from jaxyard.core.experiments.space import Dim, as_text, grid, max_epochs, split_values
from jaxyard.core.experiments.space import fixed_text as fixed_text  # `x as x`: still importable from here
from jaxyard.core.experiments.space import parse_spec as parse_spec
from jaxyard.core.experiments.space import split_top as split_top
from jaxyard.core.experiments.study import LOCK as LOCK
from jaxyard.core.experiments.study import STUDY_FILE as STUDY_FILE
from jaxyard.core.experiments.study import grid_params, import_optuna, locked, next_trial, open_study, suggest
from jaxyard.core.experiments.study import storage_of as storage_of
from jaxyard.core.registry.hookspecs import hookimpl
from jaxyard.core.store.rundir import write_atomic

SPEC = "sweep.json"
BASE = "base.toml"
TRIALS = "trials"
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "hyperband", "none")


@attrs.frozen
class SweepSpec:
    """What ``sweep.json`` holds: everything a worker needs besides the registry."""

    dims: tuple[Dim, ...]
    sampler: str
    trials: int
    prune: str
    monitor: str
    epochs: int
    storage: str | None
    study: str
    seed: int
    #: the task's metrics and their directions (None: a sweep.json of 0.2, classification's)
    metrics: Mapping[str, str] | None = attrs.field(default=None, hash=False)

    @property
    def direction(self) -> str:
        """``minimize`` or ``maximize``: the monitored metric's direction in the task."""
        return "minimize" if M.minimized(self.monitor, self.metrics) else "maximize"

    @property
    def headline(self) -> str:
        """The test metric a trial's line and the leaderboard show: ``test_NAME`` for the task's
        first metric besides the loss (``test_acc`` for classification), else ``test_loss``."""
        return f"test_{M.headline(self.metrics)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1, "study": self.study, "storage": self.storage, "sampler": self.sampler, "trials": self.trials,
            "prune": self.prune, "monitor": self.monitor, "direction": self.direction, "metrics": M.of(self.metrics),
            "epochs": self.epochs, "seed": self.seed, "space": {d.name: d.to_json() for d in self.dims},
            "dims": [attrs.asdict(d) for d in self.dims],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepSpec:
        """The spec of a sweep.json's data; a ValueError (or KeyError, TypeError) naming the first bad value."""
        kinds: dict[str, type | tuple[type, ...]] = {
            "sampler": str, "trials": int, "prune": str, "monitor": str, "epochs": int, "storage": (str, type(None)), "study": str,
            "seed": int, "dims": list,
        }
        for key, kind in kinds.items():
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise ValueError(f"{key} = {data[key]!r}")
        if data["sampler"] not in SAMPLERS or data["prune"] not in PRUNERS or data["trials"] < 1:
            raise ValueError(f"sampler {data['sampler']!r}, prune {data['prune']!r}, trials {data['trials']!r}")
        if not isinstance(data.get("metrics"), (dict, type(None))):
            raise ValueError(f"metrics = {data['metrics']!r}")
        dims = tuple(Dim(**{**d, "values": tuple(d["values"])}) for d in data["dims"])
        return cls(dims, data["sampler"], data["trials"], data["prune"], data["monitor"], data["epochs"], data["storage"],
                   data["study"], data["seed"], data.get("metrics"))


def resolver(registry, settings=None, *, config_file: str | None = None, loggers: Iterable[str] = ()) -> Callable[[list[str]], Any]:
    """``resolve(["KIND.KEY=VALUE", ...])`` -> the RunConfig with those values, through ``registry``
    (and the registry files' ``settings``; default: none) over ``config_file``, with ``loggers``
    added to ``run.loggers``: what :func:`new` and :func:`create` take."""
    from jaxyard.core.registry.config import resolve_config
    from jaxyard.core.registry.settings import Settings

    settings = settings if settings is not None else Settings()
    return lambda values: resolve_config(registry, settings, config_file=config_file, sets=values, loggers=loggers)


def new(
    resolve: Callable[[list[str]], Any],
    *,
    options: Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    out: str | os.PathLike | None = None,
    sampler: str | None = None,
    trials: int | None = None,
    prune: str = "median",
    storage: str | None = None,
) -> Path:
    """Write a new sweep directory from a run's values, each single or swept: what ``jaxyard sweep`` does.

    Each of ``options`` (``run`` settings by name, e.g. ``{"learning_rate": "1e-4,3e-4"}``) and
    ``sets`` (``KIND.KEY=VALUE``) is a fixed value or a dimension (:func:`jaxyard.core.experiments.space.parse_spec`);
    the rest is :func:`create`'s. For example::

        directory = sweep.new(sweep.resolver(build_registry()), options={"learning_rate": "1e-4,3e-4,1e-3"})
        sweep.run_worker(directory, registry=...)

    :param resolve: the configuration of values (:func:`resolver`).
    :param out: the sweep's directory (default: ``run.runs_dir/sweep-<timestamp>``).
    :returns: the directory; :func:`run_worker` runs its trials.
    """
    fixed, dims = split_values(options, sets)
    return create(out, resolve=resolve, fixed=fixed, dims=dims, sampler=sampler, trials=trials, prune=prune, storage=storage)


def create(
    directory: str | os.PathLike | None,
    *,
    resolve: Callable[[list[str]], Any],
    fixed: Iterable[str] = (),
    dims: list[Dim],
    sampler: str | None = None,
    trials: int | None = None,
    prune: str = "median",
    storage: str | None = None,
) -> Path:
    """Write a new sweep directory (refused if it holds anything) after checking every value.

    A sweep's trials plot no curves (``run.curves = false``: sweep.png and ``compare --png`` plot
    them together) and save one checkpoint, at their end (``run.save_every`` = the most epochs of
    any trial: a killed trial is run again, not resumed), unless ``fixed`` or ``dims`` set these.

    :param directory: the sweep's directory, new or empty (None: ``run.runs_dir/sweep-<timestamp>``).
    :param resolve: ``resolve(["KIND.KEY=VALUE", ...])`` -> the configuration with those values (a
        RunConfig); the base configuration and each swept value are checked through it before
        anything is written.
    :param fixed: the values every trial has, as ``KIND.KEY=VALUE``.
    :param dims: the swept dimensions.
    """
    first = [f"{d.name}={d.texts_for_check()[0]}" for d in dims]  # the base configuration has each dimension's first value
    fixed, base = _with_trial_defaults(resolve, list(fixed), dims, first)
    if not directory:
        directory = Path(base.run.runs_dir) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    import_optuna()
    if not dims:
        raise UsageError("nothing to sweep: give a parameter several values, e.g. --lr 1e-4,3e-4,1e-3 or --set optimizer.b2=0.99,0.999")
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise UsageError(f"{sorted(n for n in names if names.count(n) > 1)[0]} is swept twice")
    lists_only = all(d.is_list for d in dims)
    sampler = sampler or ("grid" if lists_only else "tpe")
    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if prune not in PRUNERS:
        raise UsageError(f"--prune {prune!r}: expected one of {', '.join(PRUNERS)}")
    size = len(grid(dims)) if lists_only else None
    if sampler == "grid":
        bad = [d for d in dims if not d.is_list]
        if bad:
            raise UsageError(
                f"--sampler grid: {bad[0].name} is a distribution ({bad[0].kind}); grids take lists (a,b,c); use --sampler tpe or random"
            )
        assert size is not None  # only lists: the grid's size is known
        trials = size if trials is None else min(trials, size)
    elif trials is None:
        if size is None:
            raise UsageError("a search over distributions needs --trials N (how many configurations to try)")
        trials = size
    if trials < 1:
        raise UsageError(f"--trials {trials}: expected at least 1")
    from jaxyard.core.scale.layout import make_layout

    for d in dims:  # every value of every dimension builds a valid configuration, or one line says which fails
        for text in d.texts_for_check():
            try:
                config = resolve([*fixed, *first, f"{d.name}={text}"])
                make_layout(config.run.devices, config.run.shard_params, config.run.batch_size)  # devices, batch split
            except UsageError as err:
                raise UsageError(f"sweep {d.name}={text}: {err}") from None
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"sweep directory {directory} exists and is not a directory; choose another --out")
    if directory.exists() and any(directory.iterdir()):
        raise UsageError(f"sweep directory {directory} is not empty; choose another --out, or `jaxyard sweep --resume {directory}`")
    run = base.run
    spec = SweepSpec(tuple(dims), sampler, trials, prune, run.monitor, max_epochs(run.epochs, dims), storage,
                     directory.resolve().name, run.seed, M.of_config(base))
    M.direction(spec.monitor, spec.metrics)  # a monitor that is not a metric of the task: refused before anything is written
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:  # the study first (a bad --storage is one line), then the files: a failure leaves nothing behind
        study = open_study(directory, spec, create=True)
        if sampler == "grid":
            for point in grid(dims)[:trials]:
                study.enqueue_trial(grid_params(dims, point))
        (directory / TRIALS).mkdir()
        write_atomic(directory / BASE, base.to_toml())
        write_atomic(directory / SPEC, json.dumps(spec.to_json(), indent=2) + "\n")
    except BaseException:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        else:  # an empty directory was given: empty again
            for path in directory.iterdir():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise
    return directory


def _with_trial_defaults(resolve: Callable[[list[str]], Any], fixed: list[str], dims: list[Dim], first: list[str]) -> tuple[list[str], Any]:
    """``fixed`` with the trial defaults that neither it nor ``dims`` sets put in front, and the
    base configuration (``fixed`` and ``first``, each dimension's first value) they give; the
    default ``run.save_every`` follows the epochs the base resolves to."""
    given = {text.partition("=")[0].strip() for text in fixed} | {d.name for d in dims}
    if "run.curves" not in given:  # sweep.png and `compare --png` plot the trials
        fixed.insert(0, "run.curves=false")
    base = resolve([*fixed, *first])
    if "run.save_every" not in given:  # one checkpoint per trial, at its end: a killed trial is run again, not resumed
        epochs = [base.run.epochs, *(int(v) for d in dims if d.name == "run.epochs" and d.is_list for v in d.values)]
        fixed.insert(0, f"run.save_every={max(epochs)}")
        base = resolve([*fixed, *first])
    return fixed, base


def load_spec(directory: str | os.PathLike) -> SweepSpec:
    path = Path(directory) / SPEC
    try:
        return SweepSpec.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UsageError(f"{directory} is not a sweep directory (no {SPEC})") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:  # not UTF-8, not JSON, a bad value
        raise UsageError(f"{path} is damaged ({one_line(err)}); start a new sweep") from None


def resume(directory: str | os.PathLike, *, storage: str | None = None, echo: Callable[[str], None] = lambda line: None,
           warn: Callable[[str], None] | None = None) -> SweepSpec:
    """Ready the sweep in ``directory`` to go on, as ``sweep --resume`` does before running trials
    (:func:`jaxyard.core.experiments.recovery.reopen`): ``storage`` is the ``--storage`` given,
    needed when sweep.json names one. Returns its spec."""
    spec = load_spec(directory)
    recovery.reopen(Path(directory), spec, storage=storage, echo=echo, warn=warn)
    return spec


def outcome(directory: str | os.PathLike, failed_workers: Sequence[int] = ()) -> str | None:
    """The one line a sweep that the machine failed ends with (None: it did not): trials failed by
    a full disk or the like, ``failed_workers``, and that ``sweep --resume`` retries them."""
    return recovery.summary(Path(directory), load_spec(directory).trials, failed_workers)


class Pruning:
    """An event plugin for one trial: reports the monitored metric each round (an epoch, or
    run.eval_every steps) and stops the run when the study's pruner says the trial is hopeless."""

    def __init__(self, trial, monitor: str, epochs: int, directory: Path):
        self.trial, self.monitor, self.epochs, self.directory, self.pruned = trial, monitor, epochs, Path(directory), False

    @hookimpl
    def jaxyard_on_epoch_end(self, run, record):
        value = record.get(self.monitor)
        if value is None or Path(run.directory) != self.directory:  # its own trial only (--vectorize trains several)
            return
        self.trial.report(float(value), int(record["epoch"]))
        if record["epoch"] < run.epochs and self.trial.should_prune():  # the last round (epoch): nothing left to save
            self.pruned = True
            run.stop(f"pruned by the sweep at epoch {record['epoch']} ({self.monitor} {value:.4f})")


def run_worker(
    directory: str | os.PathLike,
    *,
    registry,
    worker: int = 0,
    vectorize: bool = False,
    echo: Callable[[str], None] = lambda line: None,
    warn: Callable[[str], None] | None = None,
    compile_cache=None,
    wave: int = 16,
    sets: Sequence[str] = (),
) -> dict[str, int]:
    """Run trials of the sweep in ``directory`` until its budget is spent; one process, one
    compiled program per static group. With ``vectorize``, the trials taken together that share
    a static group train as one vmapped program (each still its own run). Returns counts:
    trials by state, and ``compiles``.

    :param sets: ``--set`` items every trial is given over base.toml, as the user's word: the
        destinations base.toml names (:func:`jaxyard.core.registry.config.outside_sets`), which a
        data file cannot choose."""
    runner = Worker(Path(directory), registry, worker, echo, warn, compile_cache, sets)
    runner.wave = wave
    try:
        return runner.run(vectorize)
    except OSError as err:  # the sweep's own files (the study, sweep.jsonl): the machine's fault, one line
        where = f" ({err.filename})" if err.filename else ""
        raise TrainingError(f"the sweep stopped: {err.strerror or one_line(err)}{where}; once that is fixed, "
                            f"`jaxyard sweep --resume {directory}` goes on (the trial it was on is run again)") from err


def vectorized(choice: str = "auto") -> bool:
    """``--vectorize on|off|auto``: whether a worker trains a static group's trials as one vmapped
    program (auto: on GPU and TPU, off on CPU, where it is slower)."""
    if choice == "auto":
        import jax

        return jax.default_backend() != "cpu"
    return choice == "on"


def worker_wave(directory: str | os.PathLike, workers: int) -> int:
    """The trials one of ``workers`` workers takes at once when vectorizing: its share, at most 16."""
    return min(16, max(1, -(-load_spec(directory).trials // workers)))


def spawn_workers(
    directory: str | os.PathLike,
    workers: int,
    *,
    forwarded: Sequence[str] = (),
    vectorize: bool = False,
    compile_cache: bool = True,
    echo: Callable[[str], None] = lambda line: None,
    warn: Callable[[str], None] | None = None,
    sets: Sequence[str] = (),
) -> list[int]:
    """Run the sweep in ``directory`` in ``workers`` processes (``jaxyard sweep --resume DIR
    --worker-index I``), each line of their output echoed prefixed ``[worker I]``; waits for all.
    A worker that failed leaves its trials to ``jaxyard sweep --resume``, which ``warn`` says.

    :param forwarded: the global options the workers are given (:func:`jaxyard.core.scale.launch.global_options`).
    :param compile_cache: False: the workers do not use JAX's persistent compilation cache.
    :param sets: ``--set`` items each worker gives its trials (:func:`run_worker`).
    :returns: the indices of the workers that failed.
    """
    from jaxyard.core.scale.launch import run_workers

    storage = load_spec(directory).storage  # the command line's word, given again to each worker (check_storage)
    commands = [
        [*forwarded, "sweep", "--resume", str(directory), "--worker-index", str(i), "--vectorize", "on" if vectorize else "off",
         *["--no-compile-cache"] * (not compile_cache), *(["--storage", storage] if storage else []),
         *[arg for item in sets for arg in ("--set", item)]]
        for i in range(workers)
    ]
    failed = [i for i, code in enumerate(run_workers(commands, echo=echo)) if code]
    if failed:
        (warn or echo)(f"Worker(s) {', '.join(map(str, failed))} stopped with an error; "
                       f"`jaxyard sweep --resume {directory}` requeues their trials")
    return failed


class Worker:
    """One process's share of a sweep: asks the study for trials, trains them, tells it."""

    wave = 16  # trials taken at once when vectorizing (several workers: each its share)

    def __init__(self, directory: Path, registry, worker: int, echo, warn, compile_cache, sets: Sequence[str] = ()):
        from jaxyard.core.train.traced import Programs

        self.sets = list(sets)
        self.directory, self.registry, self.echo, self.warn, self.compile_cache = directory, registry, echo, warn, compile_cache
        self.spec = load_spec(directory)
        self.study = open_study(directory, self.spec, worker=worker)
        self.programs = Programs(d.name for d in self.spec.dims)
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}

    def run(self, vectorize: bool) -> dict[str, int]:
        if not vectorize:
            while (trial := next_trial(self.directory, self.study, self.spec)) is not None:
                self.finish(*self.train(*self.prepare(trial)))
        else:
            while wave := self._wave():
                self._train_wave(wave)
        return {**self.counts, "compiles": self.programs.compiles}

    def _wave(self) -> list:
        out: list[Any] = []  # optuna trials
        while len(out) < self.wave and (trial := next_trial(self.directory, self.study, self.spec)) is not None:
            out.append(trial)
        return out

    def prepare(self, trial):
        """(trial, its line, its configuration or None when it cannot be built, its start time)."""
        from jaxyard.core.registry.config import resolve_config
        from jaxyard.core.registry.settings import Settings

        started = time.perf_counter()
        values = suggest(trial, self.spec.dims)
        line: dict[str, Any] = {"trial": trial.number, "params": _params(values), "run_dir": None, "best": None,
                                "final": None, "test": None, "value": None, "error": None, "environment": None}
        try:
            config = resolve_config(self.registry, Settings(), config_file=str(self.directory / BASE),
                                    sets=[*self.sets, *(f"{k}={v}" for k, v in values.items())])
        except JaxyardError as err:
            line.update(error=str(err), environment=environmental(err))
            config = None
        return trial, line, config, started

    def train(self, trial, line, config, started, make_loop=None):
        """Train one trial (its events: pruning); returns what :meth:`finish` records."""
        from optuna.trial import TrialState

        from jaxyard.core.store.policy import Monitor
        from jaxyard.core.train.engine import train

        out = self.directory / TRIALS / f"{trial.number:04d}"
        if config is None:
            line["state"] = "failed"
            return trial, line, TrialState.FAIL, started
        pm = self.registry.plugin_manager
        pruning = Pruning(trial, self.spec.monitor, config.run.epochs, out)
        name = f"jaxyard.sweep.pruning.{trial.number}"
        try:
            pm.register(pruning, name=name)
            try:
                result = train(config, out_dir=out, warn=self.warn, compile_cache=self.compile_cache, programs=self.programs,
                               make_loop=make_loop)
            finally:
                pm.unregister(name=name)
        except (JaxyardError, OSError) as err:  # a diverged or broken configuration, a full disk: the trial ends, not the sweep
            line.update(state="failed", error=str(err) if isinstance(err, JaxyardError) else one_line(err),
                        environment=environmental(err), run_dir=_relative(out, self.directory) if out.exists() else None)
            return trial, line, TrialState.FAIL, started
        except BaseException:  # interrupted: the trial is queued again for `sweep --resume`
            with contextlib.suppress(Exception):
                self.study._storage.set_trial_user_attr(trial._trial_id, "retried", True)
                self.study.tell(trial, state=TrialState.FAIL)
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
            raise
        monitor = Monitor(self.spec.monitor, config.run.min_delta, mode=M.direction(self.spec.monitor, self.spec.metrics))
        best = monitor.best(result.history)
        value = float(best[self.spec.monitor]) if best and self.spec.monitor in best else None
        state = TrialState.PRUNED if pruning.pruned else TrialState.COMPLETE
        line.update(state="pruned" if pruning.pruned else "complete", run_dir=_relative(out, self.directory),
                    best=dict(best) if best else None, final=result.history[-1] if result.history else None,
                    test=result.test, value=value, stop_reason=result.stop_reason)
        if value is None or value != value:
            state, line["state"] = TrialState.FAIL, "failed"
        return trial, line, state, started

    def finish(self, trial, line, state, started) -> None:
        """Tell the study, append the trial's line, print it."""
        from optuna.trial import TrialState

        line["seconds"] = round(time.perf_counter() - started, 3)
        if line.get("environment"):  # the machine's fault: `sweep --resume` runs it again (recover)
            trial.set_user_attr("environment", line["environment"])
        if state == TrialState.COMPLETE:
            self.study.tell(trial, line["value"])
        else:
            self.study.tell(trial, state=state)
        with locked(self.directory):
            _append(self.directory, line)
        self.counts[line["state"]] += 1
        self.echo(trial_line(line, self.spec))

    def _train_wave(self, wave: list) -> None:
        """The wave's trials by static group: a group of several trains as one vmapped program,
        each member in its own thread; a lone trial trains as usual."""
        import threading

        from jaxyard.core.experiments.vectorize import VectorGroup
        from jaxyard.core.train.traced import group_key

        prepared = [self.prepare(trial) for trial in wave]
        groups: dict[str, list] = {}
        for item in prepared:
            key = group_key(item[2], self.programs.traced) if item[2] is not None else f"unbuilt-{item[0].number}"
            groups.setdefault(key, []).append(item)
        for members in groups.values():
            if len(members) == 1:
                self.finish(*self.train(*members[0]))
                continue
            group = VectorGroup(len(members))
            outcomes: list = [None] * len(members)

            def member(i, item, outcomes, group):
                try:
                    outcomes[i] = self.train(*item, make_loop=group.member(i))
                except BaseException as err:  # noqa: BLE001 (re-raised below, in the worker's thread)
                    outcomes[i] = err
                finally:
                    group.leave(i)

            threads = [threading.Thread(target=member, args=(i, item, outcomes, group), daemon=True) for i, item in enumerate(members)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for done in outcomes:
                if isinstance(done, BaseException):
                    raise done
                self.finish(*done)


def _relative(path: Path, directory: Path) -> str:
    return str(path.relative_to(directory))


def trial_line(line: dict[str, Any], spec: SweepSpec) -> str:
    """One finished trial, as the sweep prints it."""
    params = "  ".join(f"{short(k)}={v:.4g}" if isinstance(v, float) else f"{short(k)}={as_text(v)}" for k, v in line["params"].items())
    if line["state"] == "failed":
        return f"Trial {line['trial']:>3} failed    {params}  {line['error']}"
    test, key = line.get("test") or {}, spec.headline
    shown = f"  {key} {test[key]:.4f}" if isinstance(test.get(key), (int, float)) else ""
    epoch = (line.get("best") or {}).get("epoch")
    return f"Trial {line['trial']:>3} {line['state']:<9} {params}  {spec.monitor} {line['value']:.4f} (epoch {epoch}){shown}  {line['seconds']:.1f} s"


def short(name: str) -> str:
    """``run.learning_rate`` -> ``learning_rate``; ``optimizer.b2`` stays."""
    return name.split(".", 1)[1] if name.startswith("run.") else name


def leaderboard(directory: str | os.PathLike) -> tuple[list[str], list[list[Any]], dict[str, Any] | None]:
    """(headers, rows, best line): the trials sorted by the monitored metric, best first
    (pruned after complete ones, failed last), with the task's headline test metric
    (:attr:`SweepSpec.headline`: ``test_acc`` for classification)."""
    spec = load_spec(directory)
    lines = results(directory)
    sign = 1 if spec.direction == "minimize" else -1
    rank = {"complete": 0, "pruned": 1, "failed": 2}
    lines.sort(key=lambda r: (rank.get(r["state"], 3), sign * r["value"] if r.get("value") is not None else 0, r["trial"]))
    names = [d.name for d in spec.dims]
    headers = ["trial", "state", *map(short, names), spec.monitor, "epoch", spec.headline, "seconds", "run_dir"]
    rows = [
        [r["trial"], r["state"], *(r["params"].get(n) for n in names), r.get("value"), (r.get("best") or {}).get("epoch"),
         (r.get("test") or {}).get(spec.headline), r.get("seconds"), r.get("run_dir")]
        for r in lines
    ]
    best = next((r for r in lines if r["state"] == "complete" and r.get("value") is not None), None)
    return headers, rows, best


def destinations(directory: str | os.PathLike, registry, sets: Sequence[str] = ()) -> list[str]:
    """The ``--set`` items ``sweep --resume`` gives its trials: the destinations base.toml names, which
    a data file cannot choose, given again (the refusal prints the command). Any other ``--set`` is
    refused first: base.toml holds the sweep's configuration."""
    from jaxyard.core.registry.config import outside_sets, resolve_config
    from jaxyard.core.registry.entries import KINDS
    from jaxyard.core.registry.settings import Settings

    load_spec(directory)  # a sweep directory, or one line saying it is not
    base = str(Path(directory) / BASE)
    # base.toml's destinations, not refused here (unbuilt): a --set that is not one is refused first
    named = {item.partition("=")[0]: item for item in outside_sets(resolve_config(registry, Settings(), config_file=base, unbuilt=KINDS))}
    given = {item.partition("=")[0].strip(): item for item in sets}
    for key, item in given.items():
        if key not in named:
            raise UsageError(f"--set {item!r} cannot change a sweep being resumed (its {BASE} holds its configuration; only a "
                             f"destination it names is given again); start a new sweep")
    missing = [item for key, item in named.items() if key not in given]
    if missing:
        key, _, value = missing[0].partition("=")
        table, _, name = key.rpartition(".")
        command = " ".join([f"jaxyard sweep --resume {shlex.quote(str(directory))}", *(f"--set {shlex.quote(i)}" for i in named.values())])
        raise UsageError(f"{base}: [{table}] {name} = {value!r} sends the trials' data outside their run directories, which a data "
                         f"file cannot choose; to allow it, give it yourself: {command}")
    resolve_config(registry, Settings(), config_file=base, sets=sets)  # the rest of base.toml, as its trials will resolve it
    return list(given.values())
