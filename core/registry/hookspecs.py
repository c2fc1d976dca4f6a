"""Hook specifications: the reference for plugin authors.

A plugin is a module (or any object) with functions marked ``@jaxyard.hookimpl`` whose names
are the hooks below. Each hook receives a ``register`` callback; call it once per component::

    register(name, factory, params=ParamsClass, description="one line")

``name``
    The component's name within its kind: lower case letters, digits, ``-`` and ``_``.
``factory``
    A callable building the component, called as ``factory(params, **context)`` with the
    keyword context listed in each hook below. Import jax, flax, optax or orbax *inside* the
    factory, never at the top of the plugin module: listing components must stay fast.
``params``
    An attrs class holding the component's parameters. Every field needs a default, a type
    annotation and a one-line doc (use :func:`jaxyard.param`); validators run before anything
    is compiled. Omit it for a component without parameters.
``description``
    One line for ``jaxyard list``. Required unless the factory has a docstring, whose first
    line is then used.

The callback validates each entry at once: the name, a factory whose signature takes the params
positionally and every keyword its hook passes (below), a params class whose fields each have
a type, a default and a doc. An invalid entry, a name another plugin already registered, or an
exception raised by the hook marks the whole plugin as failed: it is reported and skipped
(fatal with ``--strict-plugins``).

When a factory raises, or returns something that breaks its contract, the run stops before
anything is written with one line naming the kind, the component, the plugin and its
distribution (exit code 1; ``--debug`` shows the traceback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from jaxyard.core.registry.entries import RegisterFn
    from jaxyard.core.train.events import Run, RunResult

PROJECT = "jaxyard"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- components: one registration hook per kind -------------------------------------------


@hookspec
def jaxyard_register_tasks(register: RegisterFn) -> None:
    """Register tasks: what a run trains (the objective).

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params)`` and returns a :class:`jaxyard.Task`: the
    metrics it reports and their directions, its loss (traced inside the compiled epoch) as a
    masked mean plus additive sums, and what the model factory is told about the data
    (``num_outputs``, ``vocab_size``, ...). Parameters declared ``traced=True`` may be inputs of
    the compiled program in a sweep: compute with them, never branch on them.
    """


@hookspec
def jaxyard_register_optimizers(register: RegisterFn) -> None:
    """Register optimizers.

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, learning_rate)`` and returns an
    ``optax.GradientTransformation``. ``learning_rate`` is an optax schedule (a callable of the
    step count): pass it to optax as the learning rate, do not scale gradients by it
    yourself. Gradient clipping (``run.clip_norm``) is chained in front by the engine, gradient
    accumulation (``run.accumulate_steps``) wraps it in ``optax.MultiSteps``. The state may hold
    the parameter arrays themselves (``optax.contrib.sam``, a lookahead, an average): the engine
    copies repeated buffers before donating them.
    """


@hookspec
def jaxyard_register_schedulers(register: RegisterFn) -> None:
    """Register learning-rate schedules.

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, learning_rate, decay_steps)`` and returns an
    optax schedule (``step -> learning rate``). ``learning_rate`` is the run's peak rate;
    ``decay_steps`` is the number of steps the schedule spans: the run's total steps less its
    warmup (steps are optimizer updates). The engine puts the linear warmup of
    ``run.warmup_steps`` in front of any schedule, unless the factory says otherwise with an
    attribute ``factory.warmup = False`` (the built-in ``constant`` does: it is constant from the
    first step); the schedule then spans the whole run. A schedule with a warmup of its own sets
    it too.
    The result is checked before training: a callable giving a finite rate >= 0.
    """


@hookspec
def jaxyard_register_models(register: RegisterFn) -> None:
    """Register models.

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, input_shape, rngs)`` plus each key of the
    task's context it names (``num_outputs``, ``num_classes``, ``vocab_size``, ``seq_len``; a
    factory taking ``**context`` gets them all): the shape of one example, the width of the
    output the task reads (the classes of a classification, a regression's targets, a language
    model's vocabulary), and an ``nnx.Rngs`` with ``params`` and ``dropout`` streams, the task's own
    (:attr:`jaxyard.Task.rng_streams`) and a ``default`` any other stream name draws from. It
    returns an ``nnx.Module`` whose output the task reads (classification: logits
    ``(batch, num_outputs)``). Layers whose behaviour differs in training (dropout, batch
    norm) must follow ``model.train()`` and ``model.eval()``. A 0.2 factory naming
    ``num_classes`` (and not ``num_outputs``) gets the output width under that name.

    Mixed precision (``run.precision = "bf16"``): the engine calls the model with its
    ``nnx.Param`` values cast to bfloat16 and its float inputs in bfloat16 (integer inputs, such
    as tokens, as they are), and casts its float outputs back to float32 for the task; its other
    variables (batch statistics, random state) stay float32. The rule a model follows: compute
    in the dtype of its parameters and inputs. Do not cast to float32 inside, except where
    stability needs it (a softmax, a normalization's statistics), and then cast the result back
    to the input's dtype: flax's ``nnx.BatchNorm`` promotes its output to the float32 of its
    running statistics (the built-in cnn casts it back). Create parameters as float32 (flax's
    default ``param_dtype``). A model that breaks the rule still trains correctly, in float32.
    """


@hookspec
def jaxyard_register_loaders(register: RegisterFn) -> None:
    """Register data loaders (data sets).

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, seed)`` and returns a
    :class:`jaxyard.Dataset` (train, validation and test arrays held in memory: the engine
    puts them on the device and runs each epoch as one compiled loop) or a
    :class:`jaxyard.StreamingDataset` (batches yielded from Python, one jitted step each).
    ``seed`` is the run's seed (``run.seed``): use it for what should change with it (the order
    of streamed batches, say); make the data and its split depend on seeds of their own
    (parameters such as ``data_seed``), so a sweep over ``run.seed`` trains on the same data.
    In-memory splits and every streamed batch are checked (at most the batch size asked for,
    shapes, integer labels in range, finite features) with one line naming the loader and the
    batch; the first streamed batch of each split before anything is written. ``num_classes``
    is at least 1, or None.
    """


@hookspec
def jaxyard_register_checkpointers(register: RegisterFn) -> None:
    """Register checkpointers.

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, directory)`` with the run's checkpoint
    directory (a ``pathlib.Path``) and returns an object implementing
    :class:`jaxyard.Checkpointer`: storage only (``save``, ``load``, ``steps``, ``delete``,
    ``wait``, ``close``). Which step is latest or best, which steps to keep and how damaged
    steps are passed over is decided by jaxyard itself (:mod:`jaxyard.core.store.policy`), the same
    way for every checkpointer.
    """


@hookspec
def jaxyard_register_loggers(register: RegisterFn) -> None:
    """Register experiment loggers (``--logger NAME``, repeatable, or ``run.loggers``).

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, directory)`` with the run directory (a
    ``pathlib.Path``) and returns an object implementing :class:`jaxyard.Logger`:
    ``start(run)``, ``log_epoch(record)`` and ``finish(run, status)``. Import the logging
    library inside the factory; when it is missing raise :class:`jaxyard.MissingExtra` so the
    user is told which ``pip install`` to run.
    """


# --- events: the training loop, told to every plugin -------------------------------------
#
# Each event is called on every loaded plugin that implements it, on the host, between
# compiled epochs (never inside the step). ``run`` is a :class:`jaxyard.Run`: the resolved
# configuration, the run directory, the built components, the history so far, ``run.echo``
# for printing and ``run.stop(reason)`` to end training after the current epoch.
# Implementations may take any subset of the arguments. Usual pluggy ordering applies:
# ``tryfirst``/``trylast`` move an implementation to the front or back, and a
# ``wrapper=True`` implementation runs around all the others.
#
# A plugin that raises in an event stops the run with one line naming the plugin (exit code
# 1). Every epoch finished before it is already in metrics.jsonl and, when saved, in a
# checkpoint: ``jaxyard resume`` continues. Loggers are isolated further: a failing logger
# is reported once and dropped, and the run goes on.


@hookspec
def jaxyard_on_run_start(run: Run) -> None:
    """The run is built and about to train (or to continue: ``run.start_epoch > 0``).

    :param run: the run. ``run.config`` (a :class:`jaxyard.RunConfig`), ``run.config_dict``
        (the same as plain data, as config.toml holds it), ``run.directory``,
        ``run.components`` (``{kind: "name (param=value, ...)"}``), ``run.sizes``,
        ``run.num_params``, ``run.steps_per_epoch``, ``run.total_steps``,
        ``run.warmup_steps``, ``run.history`` (epochs already trained when resuming).
    """


@hookspec
def jaxyard_on_epoch_end(run: Run, record: dict) -> None:
    """An epoch has been trained and evaluated on the validation split.

    :param run: the run; call ``run.stop("reason")`` to end training after this epoch (the
        checkpoint of the last epoch is still saved and the test split evaluated).
    :param record: the epoch's metrics, the line metrics.jsonl gets: ``epoch``, ``step``,
        ``lr`` (the rate at the end of the epoch), ``train_loss``, ``train_acc``,
        ``val_loss``, ``val_acc``, ``train_time`` and ``val_time`` (seconds). It is already
        in ``run.history``. Do not modify it.
    """


@hookspec
def jaxyard_on_checkpoint_saved(run: Run, step: int, path: Path, record: dict) -> None:
    """A checkpoint was handed to the checkpointer (with asynchronous saves it may still be
    on its way to disk; it is durable before the next save or the end of the run).

    :param step: the training step saved.
    :param path: the run's checkpoint directory.
    :param record: the metrics of the epoch that ended at ``step``.
    """


@hookspec
def jaxyard_on_run_end(run: Run, result: RunResult) -> None:
    """Training is over and the test split evaluated; summary.json is written.

    :param result: a :class:`jaxyard.RunResult`: ``test`` (``test_loss``, ``test_acc``),
        ``history``, ``stopped_early`` and ``stop_reason``, ``timings``, ``run_dir``.
    """


@hookspec
def jaxyard_on_run_failed(run: Run, error: BaseException) -> None:
    """The run stopped on an error (a diverged loss, a failed save, a plugin's exception, an
    interrupt). Called once, before the error reaches the caller; an exception raised here
    is reported and ignored so that the original error is the one the user sees.

    :param run: the run as it was: ``run.history`` holds the epochs finished,
        ``run.last_checkpoint`` the last step saved (``jaxyard resume`` continues from it).
    :param error: the exception on its way to the caller.
    """
