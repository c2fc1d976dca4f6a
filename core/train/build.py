"""Assembly: a run's components built from its configuration and checked to fit together.

Everything that can be refused is refused here, before a run directory is written or a step
compiled: the loader's arrays, the model's output shape, each factory's result.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxyard.core.errors import JaxyardError, UsageError, one_line
from jaxyard.core.registry.config import RunConfig
from jaxyard.core.scale.layout import Layout, make_layout
from jaxyard.core.task import Task
from jaxyard.core.train import steps
from jaxyard.core.train.averaging import ema_of_params
from jaxyard.core.train.carve import carve_validation
from jaxyard.core.train.data import Dataset, Split, StreamingDataset, as_batch, check_splits, close_stream
from jaxyard.core.train.faults import broken, calling
from jaxyard.core.train.initialise import initialiser, make_optimizer
from jaxyard.core.train.plan import check_plan, round_ends, total_batches
from jaxyard.core.train.traced import Programs, group_key, replaced, traceable, with_values


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
    schedule: Callable[[int | jax.Array], Any]  # a step count, or an array of them (vmapped, traced)
    epoch_lr: np.ndarray  # the rate at the end of each epoch (index 0: before training)
    steps_per_epoch: int
    warmup_steps: int
    total_steps: int
    num_params: int
    sizes: Mapping[str, int | None]
    programs: Programs = attrs.field(factory=Programs)  # compiled programs, shared by a sweep's runs
    group: str = ""  # the static group: equal for runs that can share compiled programs
    inputs: dict[str, Any] = attrs.field(factory=dict)  # traced hyperparameters, as device scalars
    make_tx: Callable[[dict[str, Any]], Any] | None = None  # the optimizer, from traced inputs
    layout: Layout = attrs.field(factory=Layout)  # one device, or a mesh the batch is split over
    task: Any = None  # the run's task (jaxyard.Task)
    task_of: Callable[[dict[str, Any]], Any] | None = None  # the task, from traced inputs (in the compiled programs)
    context: dict[str, Any] = attrs.field(factory=dict)  # what the model factory was told about the data
    valid: dict[str, Any] = attrs.field(factory=dict)  # per in-memory split: 1.0 for a real row, 0.0 for padding
    round_ends: tuple[int, ...] = ()  # the batch count at the end of each round (index 0: 0); a round ends in an evaluation

    @property
    def rounds(self) -> int:
        """Rounds of training, each followed by validation: epochs, or run.eval_every steps (run.steps in all)."""
        return len(self.round_ends) - 1

    @property
    def stepped(self) -> bool:
        """Rounds counted in steps (run.steps or run.eval_every set), not whole epochs."""
        return bool(self.config.run.steps or self.config.run.eval_every)


def enable_compile_cache(directory: str | os.PathLike) -> None:
    """Persist compiled programs under ``directory`` so a rerun of a configuration skips compiling."""
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build(config: RunConfig, programs: Programs | None = None) -> Built:
    """Load the data, build the task, model, schedule and optimizer, and check they fit together.

    With ``programs`` (a sweep's), the hyperparameters it traces that ``config`` has become
    inputs of the compiled programs, which runs of one static group share.
    """
    run = config.run
    layout = make_layout(run.devices, run.shard_params, run.batch_size)  # before anything is loaded: a bad count fails fast
    shared = programs is not None  # a sweep's: later runs of a static group reuse what the first one compiled
    programs = programs if programs is not None else Programs()
    traced = [name for name in programs.traced if name in traceable(config)]
    task = make_task(config)
    # a loader gives the same data for the same parameters and seed (resume relies on it): a sweep's trials
    # that share them share one loaded, checked, on-device copy
    data_key = ("data", config.loader.key, repr(config.loader.params), config.task.key, repr(config.task.params), run.seed,
                run.batch_size, run.accumulate_steps, run.drop_last, run.epochs, run.devices, run.shard_params, run.val_fraction)
    cached = shared and data_key in programs
    if cached:
        data, steps_per_epoch, context, valid = programs.get(data_key, lambda: None)
        example = None  # (the fit check reads shapes from the cached on-device data)
    else:
        data, steps_per_epoch = load_data(config)
        example = train_example(config, data)
        context = task_context(config, task, data, example)
    sizes = data.sizes()

    group = group_key(config, traced)
    checked = (group, "checked", repr(sorted(context.items())))  # one static group: one model, one data shape
    schedule, warmup, total = make_schedule(config, steps_per_epoch, compiled_check=not shared)
    tx = make_tx(config, schedule, task)
    model = initialiser(config, context, task)(run.seed)  # a built-in model: compiled once for any seed (a sweep's trials share it)
    optimizer = calling(config.optimizer, "initialising its state", lambda: make_optimizer(model, tx, compiled=not shared))
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if checked not in programs:
        check_fit(config, model, data, task=task, context=context, example=example)
        programs.get(checked, lambda: True)  # a sweep's later trials of the group skip the two shape checks

    model.eval()
    eval_graphdef, _ = steps.split(model, optimizer)
    model.train()
    train_graphdef, state = steps.split(model, optimizer)
    state = layout.place_state(state)
    if isinstance(data, Dataset) and not cached:
        def on_device(split) -> Any:
            placed = jax.tree.map(lambda a: layout.place_data(_canonical(a)), as_batch(split))
            return Split(*placed) if isinstance(split, Split) else placed

        valid = {s: layout.place_data(np.ones(sizes[s], np.float32)) for s in ("train", "val", "test")}  # padding rows: 0
        data = attrs.evolve(data, train=on_device(data.train), val=on_device(data.val), test=on_device(data.test))  # (a carved one stays one)
    elif not cached:
        valid = {}
    if shared and not cached:
        programs.get(data_key, lambda: (data, steps_per_epoch, context, valid))
    inputs = {name: jnp.asarray(traceable(config)[name], jnp.float32) for name in traced}

    def traced_schedule(values):  # the same schedule and optimizer, their traced hyperparameters now inputs
        return make_schedule(with_values(config, values), steps_per_epoch, check=False)[0]

    def traced_tx(values):
        return make_tx(with_values(config, values), traced_schedule(values), task_of(values))

    traced_task = any(name.startswith("task.") for name in traced)

    def task_of(values):  # the task, its traced parameters (label smoothing, a Huber delta) from the inputs
        return make_task(with_values(config, values), check=False) if traced_task else task

    def compute_task_of(values):  # the task the compiled programs call: its loss in run.precision (training and evaluation)
        return steps.in_precision(task_of(values), run.precision)

    # one small compiled program instead of eager schedule calls (each a compile the first time)
    ends = round_ends(config, steps_per_epoch)
    updates_at_epoch_end = np.asarray(ends, np.int32) // run.accumulate_steps
    if traced:  # the rates as a function of the inputs: compiled once for the group
        rates = programs.get((group, "rates"), lambda: jax.jit(lambda v, s: jax.vmap(traced_schedule(v))(s)))
        epoch_lr = np.asarray(rates(inputs, updates_at_epoch_end))
    else:
        epoch_lr = np.asarray(jax.jit(jax.vmap(schedule))(updates_at_epoch_end))
    return Built(
        config, data, train_graphdef, eval_graphdef, state, schedule, epoch_lr, steps_per_epoch, warmup, total, num_params,
        sizes, programs, group, inputs, traced_tx if traced else None, layout, task, compute_task_of, context, valid, ends,
    )


def _canonical(array):
    """A loader's array as the device holds it: 64-bit values as 32-bit (jax's default), others as they are."""
    array = np.asarray(array)
    return array.astype(jax.dtypes.canonicalize_dtype(array.dtype), copy=False)


def make_task(config: RunConfig, *, check: bool = True):
    """The run's task (``check``: its metrics checked, once per run; a traced rebuild skips it)."""
    from jaxyard.core.task import check_metrics

    task = config.task.create()
    if check:
        for attr in ("metrics", "loss", "summarize"):
            if not hasattr(task, attr):
                raise broken(config.task, f"returned {type(task).__name__}, which has no {attr!r} (see jaxyard.Task)")
        calling(config.task, "checking its metrics", lambda: check_metrics(config.task.name, dict(task.metrics)))
        monitor = config.run.monitor
        split, _, name = monitor.removesuffix("_ema").partition("_")
        if name not in task.metrics:
            valid = ", ".join(f"{split}_{m}" for split in ("val", "train") for m in task.metrics)
            raise UsageError(f"run.monitor = {monitor!r} is not a metric of task {config.task.name!r} (valid: {valid}; val_NAME_ema too)")
        if monitor.endswith("_ema") and (split != "val" or not config.run.ema_decay):
            raise UsageError(
                f"run.monitor = {monitor!r}: the averaged weights are evaluated on the val split only, with run.ema_decay > 0 "
                f"(it is {config.run.ema_decay}); monitor val_{name}_ema with --set run.ema_decay=0.999, or {split}_{name}"
            )
    return task


def train_example(config: RunConfig, data) -> Any:
    """Host (NumPy) rows of the training split as a batch pytree: the whole split in memory, or a
    streamed loader's first batch (read once: the fit check reuses it)."""
    if isinstance(data, Dataset):
        example = as_batch(data.train)
    else:
        example = first_batch(config, data, "train", config.run.batch_size)
        if example is None:
            raise UsageError(f"loader {config.loader.name!r} gave no training batch")
    return jax.tree.map(np.asarray, example)


def first_batch(config: RunConfig, data: StreamingDataset, split: str, batch_size: int) -> Any:
    """The first batch a streamed loader gives for ``split`` (None: none); the loader's own
    exception named in one line (:meth:`Choice.failure <jaxyard.core.registry.config.Choice.failure>`)."""
    batches = None
    try:
        batches = iter(data.batches(split, batch_size, 0))
        return next(batches, None)
    except JaxyardError:
        raise
    except Exception as err:
        raise config.loader.failure(err, f"giving its first {split} batch") from err
    finally:
        close_stream(batches)


def task_context(config: RunConfig, task, data, example: Any = None) -> dict[str, Any]:
    """What the model factory is told about the data (the loader's input shape, then the task's
    context), with every in-memory split checked by the task (``example``: :func:`train_example`'s,
    read here when not given)."""
    loader = config.loader.name
    if example is None:
        example = train_example(config, data)
    context = {"input_shape": tuple(data.input_shape)}
    if not isinstance(data, Dataset):  # its shapes first: the task reads it next
        check_streamed(config, None, context, data, example, f"loader {loader!r}: the first train batch", rows=config.run.batch_size)
    context.update(calling(config.task, "reading the data", lambda: dict(task.context(data, example))))
    context["input_shape"] = tuple(context["input_shape"])
    if not isinstance(data, Dataset):
        check_task_batch(config, task, example, f"loader {loader!r}: the first train batch", context)
        for split in ("val", "test"):  # refused now, not after hours of training or with a run directory written
            batch = first_batch(config, data, split, config.run.eval_batch_size)
            if batch is not None:
                check_streamed(config, task, context, data, batch, f"loader {loader!r}: the first {split} batch",
                               rows=config.run.eval_batch_size)
    else:
        for split in ("train", "val", "test"):
            where = f"loader {loader!r}: the {split} split"
            check_task_batch(config, task, jax.tree.map(np.asarray, as_batch(getattr(data, split))), where, context)
    return context


def check_streamed(config: RunConfig, task, context, data, batch, where: str, *, rows: int | None = None) -> None:
    """A streamed batch: rows that agree (at most ``rows``, the batch size asked for), the declared
    example shape, finite features, then (``task`` given) the task's check of its targets."""
    from jaxyard.core.task import features
    from jaxyard.core.train.data import input_shape_of, refuse_non_finite

    batch = jax.tree.map(np.asarray, batch)
    leaves = jax.tree.leaves(batch)
    counts = {len(a) if a.ndim else 0 for a in leaves}
    if len(counts) != 1:
        shapes = ", ".join(str(a.shape) for a in leaves)
        raise UsageError(f"{where} has arrays of shapes {shapes}; expected one row per example in each (labels: one per example)")
    if rows is not None and counts.pop() > rows:
        raise UsageError(f"{where} has {len(leaves[0])} rows, more than the {rows} asked for: "
                         f"batches(split, batch_size, epoch) must yield at most batch_size rows")
    shape = input_shape_of(batch)
    if shape != tuple(data.input_shape):
        raise UsageError(f"{where} has examples of shape {shape}; the loader declares input_shape {tuple(data.input_shape)}")
    if task is not None:
        check_task_batch(config, task, batch, where, context)
    try:
        x = features(batch)
    except (KeyError, IndexError, TypeError):
        return
    refuse_non_finite(np.asarray(x), f"{where}:")


def check_task_batch(config: RunConfig, task, batch, where: str, context) -> None:
    """The task's check of a split or a streamed batch; its own bug named as the task's."""
    try:
        task.check(batch, where, context)
    except JaxyardError:
        raise
    except Exception as err:
        raise broken(config.task, f"failed checking {where.split(': ', 1)[-1]}: {one_line(err)}") from err


def make_tx(config: RunConfig, schedule, task=None) -> optax.GradientTransformation:
    """The run's optimizer on ``schedule`` (as the task combines it: a GAN's two), with its
    gradient clipping, weight average and accumulation around it (values may be traced:
    nothing here branches on one)."""
    run = config.run

    def make(learning_rate=None, **params):
        choice = config.optimizer
        if params:  # concrete values validated; traced ones (a sweep's inputs) set as they are
            traced = {k: v for k, v in params.items() if isinstance(v, jax.core.Tracer)}
            try:
                values = attrs.evolve(choice.params, **{k: v for k, v in params.items() if k not in traced})
            except (TypeError, ValueError) as err:
                raise broken(config.task, f"asked optimizer {choice.name!r} for {params}: {one_line(err)}") from err
            choice = attrs.evolve(choice, params=replaced(values, traced) if traced else values)
        rate = schedule if learning_rate is None else (lambda step: schedule(step) * (learning_rate / run.learning_rate))
        made = choice.create(learning_rate=rate)
        if not (callable(getattr(made, "init", None)) and callable(getattr(made, "update", None))):
            hint = " (did you return optax.adam instead of calling it?)" if callable(made) else ""
            raise broken(choice, f"returned {type(made).__name__}, not an optax.GradientTransformation{hint}")
        return made

    own = task is not None and getattr(type(task), "optimizer", Task.optimizer) is not Task.optimizer
    tx = calling(config.task, "building its optimizer", lambda: task.optimizer(make)) if own else make()
    if own and not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise broken(config.task, f"optimizer() returned {type(tx).__name__}, not an optax.GradientTransformation")
    if run.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(run.clip_norm), tx)
    if run.ema_decay:
        tx = optax.chain(tx, ema_of_params(run.ema_decay))
    if run.accumulate_steps > 1:  # the steps above (and the schedule) count real updates
        tx = optax.MultiSteps(tx, every_k_schedule=run.accumulate_steps).gradient_transformation()
    return tx


def load_data(config: RunConfig) -> tuple[Dataset | StreamingDataset, int]:
    """The loader's data, checked, and the number of training steps per epoch."""
    run, name = config.run, config.loader.name
    data = config.loader.create(seed=run.seed)
    if not isinstance(data, (Dataset, StreamingDataset)):
        raise broken(config.loader, f"returned {type(data).__name__}, not a jaxyard Dataset or StreamingDataset")
    classes = data.num_classes
    if classes is not None and not _is_count(classes):
        raise broken(config.loader, f"gave num_classes = {classes!r}: it is the number of classes (or a vocabulary's size), "
                                     f"at least 1, or None where it means nothing (regression)")
    data = carve_validation(config, data)  # a loader without a val split: run.val_fraction of train (core/train/carve.py)
    sizes = data.sizes()
    if not sizes["train"]:
        raise UsageError(f"loader {name!r} must give the size of its train split (StreamingDataset sizes=...)")
    if run.batch_size > sizes["train"]:
        raise UsageError(
            f"run.batch_size = {run.batch_size} is larger than the {sizes['train']} training examples of loader {name!r}; "
            f"use at most {sizes['train']}"
        )
    if isinstance(data, Dataset):
        check_splits(name, data)
    # in memory, accumulated batches are grouped as run.batch_size x run.accumulate_steps would batch them (a stream's are not)
    groups = run.accumulate_steps if isinstance(data, Dataset) else 1
    steps_per_epoch = steps.batch_plan(sizes["train"], run.batch_size, run.drop_last, groups)[0]
    if (run.steps or run.eval_every) and isinstance(data, StreamingDataset) and not data.resumable:
        what = f"run.steps = {run.steps}" if run.steps else f"run.eval_every = {run.eval_every}"
        raise UsageError(f"{what}: loader {name!r} streams its batches and cannot report its position in them (StreamingDataset "
                         f"resumable=False), so its run trains and validates in whole epochs; use run.epochs, an in-memory "
                         f"loader, or a resumable stream (--loader grain, or grain_stream in a plugin: docs/grain.md)")
    check_plan(config, steps_per_epoch)
    return data, steps_per_epoch


def _is_count(value: Any) -> bool:
    """A whole number of at least 1 (10, np.int64(10), 10.0), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    number = float(value)
    return number >= 1 and number != float("inf") and number.is_integer()


def make_schedule(config: RunConfig, steps_per_epoch: int, *, check: bool = True,
                  compiled_check: bool = True) -> tuple[Callable[[int | jax.Array], Any], int, int]:
    """The run's learning-rate schedule: linear warmup, then the chosen schedule to the last step.

    Returns ``(schedule, warmup_steps, total_steps)``; the chosen schedule spans
    ``total_steps - warmup_steps``, the steps the run will actually take. Steps are optimizer
    updates: with ``run.accumulate_steps = k``, one per k batches.
    """
    run = config.run
    total = max(total_batches(config, steps_per_epoch) // run.accumulate_steps, 1)
    takes_warmup = getattr(config.scheduler.entry.factory, "warmup", True)  # a factory may say `warmup = False`
    warmup = min(run.warmup_steps, total) if takes_warmup else 0
    decay = config.scheduler.create(learning_rate=run.learning_rate, decay_steps=max(total - warmup, 1))
    if check:  # concrete values (not traced ones): the scheduler's result is checked once, here
        _check_schedule(config, decay, total - warmup, compiled=compiled_check)
    if not warmup:
        return decay, 0, total
    ramp = optax.linear_schedule(0.0, run.learning_rate, warmup)
    return optax.join_schedules([ramp, decay], [warmup]), warmup, total


def schedule_points(config: RunConfig, points: int = 11, *, steps_per_epoch: int | None = None) -> dict[str, Any]:
    """The learning rate at ``points`` evenly spaced steps of the run (and every step for a plot);
    ``steps_per_epoch`` given, the loader is not called."""
    if steps_per_epoch is None:
        _, steps_per_epoch = load_data(config)
    schedule, warmup, total = make_schedule(config, steps_per_epoch)
    every = np.asarray(jax.vmap(schedule)(jnp.arange(total + 1)))
    marks = sorted({round(i * total / max(points - 1, 1)) for i in range(points)} | ({warmup} if warmup else set()))
    k = config.run.accumulate_steps
    return {
        "steps_per_epoch": steps_per_epoch / k if k > 1 else steps_per_epoch,  # optimizer updates
        "warmup_steps": warmup,
        "total_steps": total,
        "table": [(int(m), float(every[m])) for m in marks],
        "every_step": every,
    }


def _check_schedule(config: RunConfig, schedule, span: int, *, compiled: bool = True) -> None:
    """A schedule is a callable of the step count giving a finite, non-negative scalar. ``compiled``:
    evaluated by one small program (op by op, a cosine decay is ~8 programs lowered and loaded at
    every start); not in a sweep, whose trials' hyperparameters would each make a new one."""
    choice = config.scheduler
    if not callable(schedule):
        raise broken(choice, f"returned {type(schedule).__name__}, not a schedule (a callable of the step count)")
    checked = (0, max(span, 0))

    def rates():
        if compiled:
            return jax.jit(lambda s: [jnp.asarray(schedule(s[0])), jnp.asarray(schedule(s[1]))])(np.asarray(checked, np.int32))
        return [jnp.asarray(schedule(jnp.asarray(s))) for s in checked]

    for step, rate in zip(checked, calling(choice, f"at step {checked[0]} or {checked[1]}", rates), strict=True):
        if rate.shape != () or not jnp.issubdtype(rate.dtype, jnp.floating) and not jnp.issubdtype(rate.dtype, jnp.integer):
            raise broken(choice, f"gives {rate.dtype}{list(rate.shape)} at step {step}, not a scalar learning rate")
        value = float(rate)
        if not (np.isfinite(value) and value >= 0):
            raise broken(choice, f"gives the learning rate {value} at step {step}; a rate must be finite and >= 0")


def check_fit(config: RunConfig, model, data, *, task=None, context=None, example: Any = None) -> None:
    """A model that does not take the loader's inputs, or whose output is not what the task
    reads (classification: ``(batch, num_classes)``), is refused now, from shapes alone
    (``example``: :func:`train_example`'s, when the caller has read it)."""
    if task is None:
        task = make_task(config, check=False)
    if example is None and not isinstance(data, Dataset):
        example = train_example(config, data)
    if context is None:
        context = task_context(config, task, data, example)
    batch = abstract_rows(data, context, 2, example)
    mask = jax.ShapeDtypeStruct((2,), jnp.float32)
    model.eval()  # layers that must be told (attention's dropout) are: shapes only, dropout off
    graphdef, state = nnx.split(model)
    shape = task.output_shape(context) if hasattr(task, "output_shape") else None
    loader, model_name = config.loader.name, config.model.name
    if shape is None:  # the task reads the model's output its own way: its loss, traced on two rows, is the check
        try:
            jax.eval_shape(lambda s, b, m: task.loss(nnx.merge(graphdef, s), b, m), state, batch, mask)
        except Exception as err:
            raise UsageError(
                f"task {config.task.name!r} ({config.task.entry.origin()}) cannot compute its loss with model {model_name!r} "
                f"on loader {loader!r}'s examples of shape {tuple(context['input_shape'])}: {one_line(err)[:300]}"
            ) from None
        return
    try:
        out = jax.eval_shape(lambda s, b: nnx.merge(graphdef, s)(task.inputs(b)), state, batch)
    except Exception as err:
        msg = " ".join(str(err).split())[:300]
        raise UsageError(
            f"model {model_name!r} does not accept inputs of shape {tuple(context['input_shape'])} "
            f"from loader {loader!r} (task {config.task.name!r}): {msg}"
        ) from None
    expected = (2, *shape)
    if getattr(out, "shape", None) != expected:
        got = getattr(out, "shape", type(out).__name__)
        if "num_classes" in context and tuple(shape) == (context["num_classes"],):
            raise UsageError(
                f"model {model_name!r} returns shape {got} for a batch of 2, but loader {loader!r} has "
                f"{context['num_classes']} classes: expected {expected}"
            )
        raise UsageError(
            f"model {model_name!r} returns shape {got} for a batch of 2; task {config.task.name!r} on loader {loader!r} expects {expected}"
        )


def abstract_rows(data, context, rows: int, example: Any = None):
    """Shapes and dtypes of ``rows`` rows of the training data (of ``example``, a streamed loader's
    first batch, read here when not given)."""
    if isinstance(data, Dataset):
        batch = as_batch(data.train)
    else:
        batch = example if example is not None else next(iter(data.batches("train", rows, 0)))

    def spec(a):
        a = a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a)
        return jax.ShapeDtypeStruct((rows, *a.shape[1:]), jax.dtypes.canonicalize_dtype(a.dtype))

    return jax.tree.map(spec, batch)
