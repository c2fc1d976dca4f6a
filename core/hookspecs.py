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
    One line for ``jaxyard list``; defaults to the first line of the factory's docstring.

The callback validates each entry at once; an invalid entry, a name another plugin already
registered, or an exception raised by the hook marks the whole plugin as failed: it is
reported and skipped (fatal with ``--strict-plugins``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from jaxyard.core.entries import RegisterFn

PROJECT = "jaxyard"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- components: one registration hook per kind -------------------------------------------


@hookspec
def jaxyard_register_optimizers(register: RegisterFn) -> None:
    """Register optimizers.

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, learning_rate)`` and returns an
    ``optax.GradientTransformation``. ``learning_rate`` is an optax schedule (a callable of the
    step count): pass it to optax as the learning rate, do not scale gradients by it
    yourself. Gradient clipping (``run.clip_norm``) is chained in front by the engine.
    """


@hookspec
def jaxyard_register_schedulers(register: RegisterFn) -> None:
    """Register learning-rate schedules.

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, learning_rate, decay_steps)`` and returns an
    optax schedule (``step -> learning rate``). ``learning_rate`` is the run's peak rate;
    ``decay_steps`` is the number of steps the schedule spans: the run's total steps less its
    warmup. The engine puts the linear warmup of ``run.warmup_steps`` in front of any schedule.
    """


@hookspec
def jaxyard_register_models(register: RegisterFn) -> None:
    """Register models.

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, input_shape, num_classes, rngs)``, with the
    shape of one example and the number of classes taken from the loader and an
    ``nnx.Rngs`` holding ``params`` and ``dropout`` streams, and returns an ``nnx.Module``
    mapping a batch ``(batch, *input_shape)`` to logits ``(batch, num_classes)``. Layers whose
    behaviour differs in training (dropout, batch norm) must follow ``model.train()`` and
    ``model.eval()``.
    """


@hookspec
def jaxyard_register_loaders(register: RegisterFn) -> None:
    """Register data loaders (data sets).

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, seed)`` and returns a
    :class:`jaxyard.Dataset` (train, validation and test arrays held in memory: the engine
    puts them on the device and runs each epoch as one compiled loop) or a
    :class:`jaxyard.StreamingDataset` (batches yielded from Python, one jitted step each).
    """


@hookspec
def jaxyard_register_checkpointers(register: RegisterFn) -> None:
    """Register checkpointers.

    :param register: ``register(name, factory, params=..., description=...)``.

    The factory is called as ``factory(params, *, directory)`` with the run's checkpoint
    directory (a ``pathlib.Path``) and returns an object implementing
    :class:`jaxyard.core.checkpoint.Checkpointer`.
    """
