"""The training engine: ``train(config)``, ``resume(run_dir)`` and ``evaluate(run_dir)``.

The engine builds each component through the registry, puts in-memory data on the device,
compiles one epoch (shuffle, batches and optimizer steps in a single ``lax.scan``) and one
evaluation, and brings metrics back to the host once per epoch. Printing goes through the
``echo`` callback so the library stays silent unless asked.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxyard.core import rundir as rd
from jaxyard.core import state as st
from jaxyard.core import steps
from jaxyard.core.checkpoint import CheckpointError
from jaxyard.core.config import RunConfig
from jaxyard.core.data import Dataset, Split, StreamingDataset
from jaxyard.core.errors import TrainingError, UsageError

Echo = Callable[[str], None]
Progress = Callable[..., Any]  # click.progressbar's signature: (length=, label=) -> context manager
RULE = "-" * 40


def _silent(_: str) -> None:
    pass


@attrs.frozen
class RunResult:
    run_dir: Path
    history: list[dict]
    test: dict[str, float]
    stopped_early: bool
    timings: dict[str, float]


@attrs.define
class Built:
    """A run's components, built and on the device, ready to train or evaluate.

    ``data`` is the loader's StreamingDataset, or its Dataset with every split moved to the
    device (the host copies are let go: at 100k examples that is 300 MB).
    """

    config: RunConfig
    data: Dataset | StreamingDataset
    train_graphdef: Any
    eval_graphdef: Any
    state: Any
    schedule: Callable[[int], Any]
    epoch_lr: np.ndarray  # the rate at the end of each epoch (index 0: before training)
    steps_per_epoch: int
    num_params: int


def enable_compile_cache(directory: str | os.PathLike) -> None:
    """Persist compiled programs under ``directory`` so a rerun of a configuration skips compiling."""
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build(config: RunConfig, echo: Echo = _silent) -> Built:
    """Load the data, build the model, schedule and optimizer, and check they fit together."""
    run = config.run
    echo(f"\n2. Loading data ({config.loader.name})...")
    data, steps_per_epoch = load_data(config, echo)

    echo("\n3. Creating model...")
    key = jax.random.key(run.seed, impl="threefry2x32")  # not the global default: resume elsewhere matches
    rngs = nnx.Rngs(params=jax.random.fold_in(key, 0), dropout=jax.random.fold_in(key, 1))
    model = config.model.create(input_shape=tuple(data.input_shape), num_classes=data.num_classes, rngs=rngs)
    if not isinstance(model, nnx.Module):
        raise UsageError(f"model {config.model.name!r} returned {type(model).__name__}, not an nnx.Module")
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    _check_fit(config, model, data)
    echo(f"  Model created: {config.model.name}, {num_params:,} parameters ({_describe(config.model.params)})")

    echo("\n4. Setting up optimizer and scheduler...")
    schedule, warmup, total = make_schedule(config, steps_per_epoch)
    if run.warmup_steps >= total:
        echo(f"  Note: run.warmup_steps = {run.warmup_steps} covers the whole run of {total} steps: the rate only rises")
    tx = config.optimizer.create(learning_rate=schedule)
    if run.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(run.clip_norm), tx)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    echo(f"  Optimizer: {config.optimizer.name} ({_describe(config.optimizer.params)})")
    echo(
        f"  Scheduler: {config.scheduler.name}, peak lr {run.learning_rate:g}, "
        f"warmup {warmup} steps, {total} steps in all ({steps_per_epoch} per epoch)"
    )
    model.eval()
    eval_graphdef, _ = nnx.split((model, optimizer))
    model.train()
    train_graphdef, state = nnx.split((model, optimizer))
    if isinstance(data, Dataset):
        data = Dataset(*(Split(jnp.asarray(s.x), jnp.asarray(s.y)) for s in (data.train, data.val, data.test)), data.num_classes)
    # one small compiled program instead of eager schedule calls (each a compile the first time)
    epoch_lr = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(run.epochs + 1) * steps_per_epoch))
    return Built(config, data, train_graphdef, eval_graphdef, state, schedule, epoch_lr, steps_per_epoch, num_params)


def load_data(config: RunConfig, echo: Echo = _silent) -> tuple[Dataset | StreamingDataset, int]:
    """The loader's data, checked, and the number of training steps per epoch."""
    run, name = config.run, config.loader.name
    data = config.loader.create(seed=run.seed)
    if not isinstance(data, (Dataset, StreamingDataset)):
        raise UsageError(f"loader {name!r} returned {type(data).__name__}, not a jaxyard Dataset or StreamingDataset")
    sizes = data.sizes()
    for split, label in (("train", "Train"), ("val", "Validation"), ("test", "Test")):
        echo(f"  {label} samples: {sizes[split] if sizes[split] is not None else 'streamed'}")
    if not sizes["train"]:
        raise UsageError(f"loader {name!r} must give the size of its train split (StreamingDataset sizes=...)")
    if isinstance(data, Dataset):
        _check_dataset(name, data)
    return data, steps.batch_plan(sizes["train"], run.batch_size, run.drop_last)[0]


def make_schedule(config: RunConfig, steps_per_epoch: int) -> tuple[Callable[[int], Any], int, int]:
    """The run's learning-rate schedule: linear warmup, then the chosen schedule to the last step.

    Returns ``(schedule, warmup_steps, total_steps)``; the chosen schedule spans
    ``total_steps - warmup_steps``, the steps the run will actually take.
    """
    run = config.run
    total = steps_per_epoch * run.epochs
    warmup = min(run.warmup_steps, total)
    decay = config.scheduler.create(learning_rate=run.learning_rate, decay_steps=max(total - warmup, 1))
    if not warmup:
        return decay, 0, total
    ramp = optax.linear_schedule(0.0, run.learning_rate, warmup)
    return optax.join_schedules([ramp, decay], [warmup]), warmup, total


def schedule_points(config: RunConfig, points: int = 11) -> dict[str, Any]:
    """The learning rate at ``points`` evenly spaced steps of the run (and every step for a plot)."""
    _, steps_per_epoch = load_data(config)
    schedule, warmup, total = make_schedule(config, steps_per_epoch)
    every = np.asarray(jax.vmap(schedule)(jnp.arange(total + 1)))
    marks = sorted({round(i * total / max(points - 1, 1)) for i in range(points)} | ({warmup} if warmup else set()))
    return {
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup,
        "total_steps": total,
        "table": [(int(m), float(every[m])) for m in marks],
        "every_step": every,
    }


def _check_dataset(name: str, data: Dataset) -> None:
    """Splits with as many labels as examples, at least one of each, labels below num_classes."""
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        if len(part.x) != len(part.y) or len(part.y) == 0 or np.ndim(part.y) != 1:
            raise UsageError(f"loader {name!r}: the {split} split has {len(part.x)} examples and labels of shape {np.shape(part.y)}")
        if part.x.shape[1:] != data.train.x.shape[1:]:
            raise UsageError(f"loader {name!r}: {split} examples have shape {part.x.shape[1:]}, train examples {data.train.x.shape[1:]}")
        if not np.issubdtype(part.y.dtype, np.integer):
            raise UsageError(f"loader {name!r}: {split} labels must be integers, got dtype {part.y.dtype}")
        low, high = int(np.min(part.y)), int(np.max(part.y))
        if low < 0 or high >= data.num_classes:
            raise UsageError(
                f"loader {name!r}: {split} labels range over {low}..{high}, outside 0..{data.num_classes - 1} (num_classes)"
            )


def _check_fit(config: RunConfig, model, data) -> None:
    """A model whose output is not (batch, num_classes) for the loader's inputs is refused now."""
    x = jax.ShapeDtypeStruct((2, *data.input_shape), jnp.float32)
    graphdef, state = nnx.split(model)
    try:
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    except Exception as err:
        msg = " ".join(str(err).split())[:300]
        raise UsageError(
            f"model {config.model.name!r} does not accept inputs of shape {tuple(data.input_shape)} "
            f"from loader {config.loader.name!r}: {msg}"
        ) from None
    if getattr(out, "shape", None) != (2, data.num_classes):
        raise UsageError(
            f"model {config.model.name!r} returns shape {getattr(out, 'shape', type(out).__name__)} for a batch of 2, "
            f"but loader {config.loader.name!r} has {data.num_classes} classes: expected (2, {data.num_classes})"
        )


class Loop:
    """Runs epochs of a built run; the compiled functions are made once, on the first epoch."""

    def __init__(self, built: Built):
        self.b = built
        run = built.config.run
        self.key = jax.random.fold_in(jax.random.key(run.seed, impl="threefry2x32"), 2)
        self.evaluate_fn = steps.make_evaluate(built.eval_graphdef, run.eval_batch_size)
        if isinstance(built.data, Dataset):
            self.epoch_fn = steps.make_train_epoch(built.train_graphdef, len(built.data.train), run.batch_size, run.drop_last)
        else:
            self.step_fn = steps.make_train_step(built.train_graphdef)
            self.eval_step = steps.eval_step(built.eval_graphdef)
        self.compiled = None  # the epoch program, compiled ahead of time on the first epoch
        self.compile_seconds: float | None = 0.0 if isinstance(built.data, Dataset) else None  # streamed: not separable

    def train_epoch(self, epoch: int, progress: Progress | None = None):
        """Train one epoch; returns the device-side (loss sum, correct, count).

        ``progress(length=steps, label=...)`` makes a bar (click.progressbar) for data fed
        from Python; an in-memory epoch is a single compiled call with nothing to report.
        """
        b = self.b
        key = jax.random.fold_in(self.key, epoch)
        if isinstance(b.data, Dataset):
            x, y = b.data.train.x, b.data.train.y
            if self.compiled is None:
                t0 = time.perf_counter()
                self.compiled = self.epoch_fn.lower(b.state, x, y, key).compile()
                self.compile_seconds += time.perf_counter() - t0
            b.state, sums = self.compiled(b.state, x, y, key)
            return sums
        total = jnp.zeros(3)
        bs = b.config.run.batch_size
        with progress(length=b.steps_per_epoch, label=f"Epoch {epoch}") if progress else nullcontext() as bar:
            for xb, yb in b.data.batches("train", bs, epoch):
                xb, yb, mask = _pad(xb, yb, bs)
                if b.config.run.drop_last and mask.sum() < bs:
                    continue
                b.state, sums = self.step_fn(b.state, xb, yb, mask)
                total = total + sums
                if bar is not None:
                    bar.update(1)
        return total

    def evaluate(self, split: str):
        b = self.b
        if isinstance(b.data, Dataset):
            part = getattr(b.data, split)
            return self.evaluate_fn(b.state, part.x, part.y)
        total = jnp.zeros(3)
        bs = b.config.run.eval_batch_size
        for xb, yb in b.data.batches(split, bs, 0):
            total = total + self.eval_step(b.state, *_pad(xb, yb, bs))
        return total


def _pad(x, y, size):
    """A streamed batch padded to ``size`` rows (one compiled shape), with its mask."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    n = len(y)
    if n > size or len(x) != n:
        raise UsageError(f"a streamed batch has {len(x)} examples and {n} labels; expected at most {size} of each")
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    if n < size:
        x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(size - n, y.dtype)])
    return x, y, mask


def _means(sums) -> tuple[float, float]:
    loss_sum, correct, count = (float(s) for s in sums)
    return loss_sum / max(count, 1.0), correct / max(count, 1.0)


def train(
    config: RunConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    echo: Echo = _silent,
    progress: Progress | None = None,
    compile_cache: str | os.PathLike | None = None,
) -> RunResult:
    """Train ``config`` in a new run directory and evaluate on the test split.

    :param out_dir: the run's directory (must be new or empty); default ``run.out/<timestamp>-...``.
    :param echo: called with each line of progress (the CLI passes ``click.echo``).
    :param progress: makes a per-epoch progress bar for streamed data (the CLI passes
        ``click.progressbar`` when writing to a terminal).
    :param compile_cache: a directory for JAX's persistent compilation cache (None: off).
    """
    started = time.perf_counter()
    run = config.run
    config_toml = config.to_toml()
    run_dir = rd.RunDir.new(out_dir, base=run.out, name=f"{run.model}-{run.optimizer}-{run.loader}")
    if compile_cache:
        enable_compile_cache(compile_cache)
    try:
        _header(echo, config, run_dir.path)
        built = build(config, echo)  # every component is built and checked before anything is written
    except BaseException:
        run_dir.discard()
        raise
    run_dir.write_config(config_toml)
    return _fit(built, run_dir, echo, progress, resume_from=None, started=started)


def resume(
    run_dir: str | os.PathLike, *, registry=None, echo: Echo = _silent, progress: Progress | None = None, compile_cache=None
) -> RunResult:
    """Continue an interrupted run from its newest intact checkpoint, with its saved config."""
    started = time.perf_counter()
    config = load_run_config(run_dir, registry)
    if compile_cache:
        enable_compile_cache(compile_cache)
    _header(echo, config, Path(run_dir))
    return _fit(build(config, echo), rd.RunDir(run_dir), echo, progress, resume_from="latest", started=started)


def evaluate(run_dir: str | os.PathLike, *, checkpoint: str = "latest", registry=None, echo: Echo = _silent) -> dict[str, Any]:
    """Evaluate a saved checkpoint (``latest``, ``best`` or a step number) on the test split."""
    config = load_run_config(run_dir, registry)
    built = build(config, echo)
    ckpt = config.checkpointer.create(directory=Path(run_dir) / rd.CHECKPOINTS)
    try:
        restored = _restore(ckpt, built, checkpoint, echo)
    finally:
        with suppress(Exception):  # only reads were made: nothing pending to lose
            ckpt.close()
    loss, acc = _means(jax.device_get(Loop(built).evaluate("test")))
    echo(f"\nTest (checkpoint step {restored.step}, epoch {restored.meta.get('epoch')}):")
    echo(f"  Test Loss: {loss:.4f}")
    echo(f"  Test Accuracy: {acc:.4f}")
    return {"step": restored.step, "epoch": restored.meta.get("epoch"), "test_loss": loss, "test_acc": acc}


def load_run_config(run_dir: str | os.PathLike, registry=None) -> RunConfig:
    from jaxyard.core.config import resolve_config
    from jaxyard.core.registry import build_registry
    from jaxyard.core.settings import Settings

    path = Path(run_dir) / rd.CONFIG
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a jaxyard run directory (no {rd.CONFIG})")
    registry = registry or build_registry()
    return resolve_config(registry, Settings(), config_file=str(path))


def _restore(ckpt, built: Built, which: str, echo: Echo):
    if which in ("latest", "best"):
        restored = ckpt.restore(which=which)
    elif which.isdigit():
        restored = ckpt.restore(int(which))
    else:
        raise UsageError(f"--checkpoint {which!r}: expected latest, best or a step number")
    for step, cause in restored.skipped:
        echo(f"  Skipped damaged checkpoint step {step}: {cause}")
    built.state = st.unflatten(built.state, restored.arrays, step=restored.step)
    return restored


def _header(echo: Echo, config: RunConfig, path: Path) -> None:
    run = config.run
    echo("=" * 60)
    echo("jaxyard training run")
    echo("=" * 60)
    echo("\n1. Setting up configuration...")
    echo(f"  Run directory: {path}")
    for kind in ("model", "optimizer", "scheduler", "loader", "checkpointer"):
        choice = config.choices[kind]
        echo(f"  {kind.capitalize()}: {choice.name}")
    echo(f"  Epochs: {run.epochs}")
    echo(f"  Batch size: {run.batch_size}")
    echo(f"  Seed: {run.seed}")


def _fit(
    built: Built, run_dir: rd.RunDir, echo: Echo, progress: Progress | None, *, resume_from: str | None, started: float
) -> RunResult:
    config, run = built.config, built.config.run
    ckpt = config.checkpointer.create(directory=run_dir / rd.CHECKPOINTS)
    loop = Loop(built)
    history: list[dict] = []
    early = {"best": None, "bad_epochs": 0, "stopped": False}
    last_saved = None
    try:
        start = 0
        if resume_from:
            try:
                restored = _restore(ckpt, built, resume_from, echo)
            except CheckpointError as err:
                if ckpt.steps():
                    raise
                if (run_dir / rd.SUMMARY).exists():
                    raise UsageError(
                        f"{run_dir.path} finished and has no checkpoint to resume from "
                        f"(checkpointer {config.checkpointer.name!r}); nothing to do"
                    ) from None
                echo(f"  No checkpoint to resume from ({err}); starting again from epoch 1")
            else:
                start, history, early = restored.meta["epoch"], list(restored.meta["history"]), dict(restored.meta["early_stopping"])
                last_saved = restored.step
                echo(f"  Resuming after epoch {start} (checkpoint step {restored.step})")
            run_dir.rewrite_metrics(history)

        echo("\n5. Starting training...")
        echo(RULE)
        t_train = time.perf_counter()
        for epoch in range(start + 1, run.epochs + 1):
            if early["stopped"]:
                break
            t0 = time.perf_counter()
            train_sums = jax.device_get(loop.train_epoch(epoch, progress))
            t1 = time.perf_counter()
            val_sums = jax.device_get(loop.evaluate("val"))
            t2 = time.perf_counter()
            (train_loss, train_acc), (val_loss, val_acc) = _means(train_sums), _means(val_sums)
            step = epoch * built.steps_per_epoch
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                where = f"the last good checkpoint is step {last_saved}" if last_saved else "no checkpoint was saved"
                raise TrainingError(
                    f"training diverged at epoch {epoch}: train loss {train_loss}, val loss {val_loss}; {where} "
                    f"in {run_dir / rd.CHECKPOINTS}. Lower run.learning_rate or set run.clip_norm"
                )
            record = {
                "epoch": epoch,
                "step": step,
                "lr": float(built.epoch_lr[epoch]),
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "train_time": round(t1 - t0, 6),
                "val_time": round(t2 - t1, 6),
            }
            history.append(record)
            run_dir.append_metrics(record)
            echo(f"Epoch {epoch}/{run.epochs}")
            echo(f"  Train - Loss: {train_loss:.4f}, Acc: {train_acc:.4f}")
            echo(f"  Val   - Loss: {val_loss:.4f}, Acc: {val_acc:.4f}")
            _early_stopping(early, record, run)
            if early["stopped"]:
                echo(f"  Early stopping: {run.monitor} did not improve for {run.patience} epochs")
            if epoch % run.save_every == 0 or epoch == run.epochs or early["stopped"]:
                meta = {"epoch": epoch, "step": step, "metrics": record, "history": history, "early_stopping": early}
                ckpt.save(step, st.flatten(built.state), meta)
                last_saved = step
                echo(f"  Checkpoint saved: step {step} (epoch {epoch})")
        echo(RULE)
        train_seconds = time.perf_counter() - t_train
        ckpt.wait()
    except BaseException:
        with suppress(Exception):  # the error on its way out is the one to report
            ckpt.close()
        raise
    ckpt.close()
    compiled = f" (compiling {loop.compile_seconds:.2f} s)" if loop.compile_seconds is not None else ""
    echo(f"  Training took {train_seconds:.2f} s{compiled}")

    echo("\n6. Evaluating on test set...")
    test_loss, test_acc = _means(jax.device_get(loop.evaluate("test")))
    echo(f"  Test Loss: {test_loss:.4f}")
    echo(f"  Test Accuracy: {test_acc:.4f}")

    timings = {"total_s": time.perf_counter() - started, "train_s": train_seconds, "compile_s": loop.compile_seconds}
    test = {"test_loss": test_loss, "test_acc": test_acc}
    summary = {"test": test, "epochs_run": len(history), "stopped_early": early["stopped"], "timings": timings, "versions": _versions()}
    rd.write_atomic(run_dir / rd.SUMMARY, _json(summary))

    echo("\n7. Plotting training curves...")
    if history:
        from jaxyard.core.plot import plot_curves

        png = plot_curves(history, run_dir / rd.CURVES)
        echo(f"  Training curves saved to {png}")
    echo(f"\nRun finished in {timings['total_s']:.1f} s: {run_dir.path}")
    return RunResult(run_dir.path, history, test, early["stopped"], timings)


def _versions() -> dict[str, str]:
    """What produced the numbers: bit-identical results need the same libraries and backend."""
    import flax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__, "backend": jax.default_backend()}


def _early_stopping(early: dict, record: dict, run) -> None:
    if not run.patience:
        return
    value = record[run.monitor]
    sign = 1.0 if run.monitor.endswith("loss") else -1.0
    if early["best"] is None or sign * (early["best"] - value) > run.min_delta:
        early["best"], early["bad_epochs"] = value, 0
    else:
        early["bad_epochs"] += 1
        early["stopped"] = early["bad_epochs"] >= run.patience


def _describe(params) -> str:
    values = attrs.asdict(params, recurse=False)
    return ", ".join(f"{k}={v!r}" for k, v in values.items()) or "no parameters"


def _json(data) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"
