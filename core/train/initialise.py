"""A run's model created: the keys of its random streams, the model factory's call, one compiled
program from run.seed to the model (:class:`Initialiser`), and the check that it fits in memory
before anything is allocated."""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxyard.core.errors import UsageError
from jaxyard.core.registry.config import RunConfig
from jaxyard.core.train.faults import broken

# fold_in constants of the streams derived from run.seed (one place: resume must match); a task's
# own streams are TASK_STREAMS, TASK_STREAMS + 1, ...
PARAMS_STREAM, DROPOUT_STREAM, SHUFFLE_STREAM, DEFAULT_STREAM, TASK_STREAMS = 0, 1, 2, 3, 16


@functools.partial(jax.jit, static_argnums=1)
def seed_key(seed: int, stream: int):
    """The key of one random stream of the run (threefry, not the global default: resume elsewhere matches).
    Compiled: one program, not three op-by-op ones (``seed``: below 2**31, as run.seed is)."""
    return jax.random.fold_in(jax.random.key(seed, impl="threefry2x32"), stream)


def model_rngs(seed, task) -> nnx.Rngs:
    """The model's random streams: ``params`` and ``dropout``, the task's own, and a ``default``
    that any other stream a layer asks for draws from (``nnx.RNN``'s ``carry``). ``seed``: run.seed,
    or (inside :class:`Initialiser`'s program) a traced int32 holding it: the same keys."""
    streams = {"params": seed_key(seed, PARAMS_STREAM), "dropout": seed_key(seed, DROPOUT_STREAM)}
    for i, name in enumerate(getattr(task, "rng_streams", ()) or ()):
        streams.setdefault(name, seed_key(seed, TASK_STREAMS + i))
    return nnx.Rngs(default=seed_key(seed, DEFAULT_STREAM), **streams)


class Initialiser:
    """A run's model from run.seed, by one compiled program.

    Built op by op, the default MLP's keys and initialisers were ~20 programs, each lowered and
    read from the compile cache at every start (~0.15 s on 2 cores); one program is one trace,
    one lowering and one cache read. The trace also gives the shapes, so the memory check
    refuses a model too large before anything is compiled or allocated. The values are the
    op-by-op ones up to float32 rounding (the default MLP's: bit for bit; a fused initializer may
    round its last bit differently at some sizes). Calling it with another seed reuses the program.
    """

    def __init__(self, config: RunConfig, context: Mapping[str, Any], task):
        self.config, self.context, self.task = config, context, task
        self.traced = jax.jit(self._init).trace(np.int32(config.run.seed))
        self.graphdef = self._graphdef
        check_memory(config, nnx.merge(self.graphdef, self.traced.out_info))  # shapes only: nothing compiled nor allocated yet
        self.program: Any = None  # compiled on the first call

    def _init(self, seed):
        self._graphdef, state = nnx.split(create_model(self.config, self.context, model_rngs(seed, self.task)))
        return state

    def __call__(self, seed: int):
        """The model of run.seed ``seed``."""
        if self.program is None:
            self.program = self.traced.lower().compile()
        return nnx.merge(self.graphdef, self.program(np.int32(seed)))


# What a JAX array inside a compiled program cannot be turned into (a Python number, a NumPy array, a branch)
_UNTRACEABLE = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)


def make_optimizer(model, tx, *, compiled: bool = True):
    """``nnx.Optimizer(model, tx, wrt=nnx.Param)``, its state made by one compiled program (op by
    op, Adam's is a program per state array, each lowered and loaded at every start). An ``init``
    that cannot be traced (optax's contract is that it can) runs op by op, as before; so does
    one not ``compiled`` (a sweep's trial: a program per trial would be one more compile each)."""
    if not compiled:
        return nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split(model)
    made: dict[str, Any] = {}

    def init(state):
        made["graphdef"], optimizer_state = nnx.split(nnx.Optimizer(nnx.merge(graphdef, state), tx, wrt=nnx.Param))
        return optimizer_state

    try:
        optimizer_state = jax.jit(init)(state)
    except _UNTRACEABLE:
        return nnx.Optimizer(model, tx, wrt=nnx.Param)
    return nnx.merge(made["graphdef"], optimizer_state)


class EagerInitialiser:
    """A model plugin's model, as :class:`Initialiser` gives one but by the factory's own call at
    every build (op by op): a plugin's factory may read outside state (pretrained weights from a
    file), which a compiled program would bake in as constants and a cached one would keep stale."""

    def __init__(self, config: RunConfig, context: Mapping[str, Any], task):
        self.config, self.context, self.task = config, context, task
        check_memory(config, nnx.eval_shape(lambda: create_model(config, context, model_rngs(0, task))))  # shapes only

    def __call__(self, seed: int):
        return create_model(self.config, self.context, model_rngs(seed, self.task))


_RECENT: collections.OrderedDict[Any, Initialiser] = collections.OrderedDict()
_RECENT_LOCK = threading.Lock()
KEEP_RECENT = 8  # initialisers kept for a process that builds runs again (a notebook, a sweep, a test suite)
_PLAIN = (bool, int, float, str, type(None))


def initialiser(config: RunConfig, context: Mapping[str, Any], task) -> Initialiser | EagerInitialiser:
    """What makes ``config``'s model on ``context``. A built-in model (its values depend on its
    parameters, the context and run.seed alone) is one compiled :class:`Initialiser`, kept for the
    process's next build of the same model: another seed, another learning rate, a rerun in a
    notebook or a sweep's trials neither trace nor compile it again. A plugin's model is made by
    its factory's own call, every build (:class:`EagerInitialiser`)."""
    if config.model.entry.source != "builtin":
        return EagerInitialiser(config, context, task)
    streams = tuple(getattr(task, "rng_streams", ()) or ())
    if not all(_plain_value(v) for v in context.values()):  # (an array's repr is shortened: no key)
        return Initialiser(config, context, task)
    key = (config.model.entry.factory, repr(config.model.params), repr(sorted(context.items())), streams)
    with _RECENT_LOCK:
        found = _RECENT.get(key)
        if found is not None:
            _RECENT.move_to_end(key)
            return found
    made = Initialiser(config, context, task)
    with _RECENT_LOCK:
        _RECENT[key] = made
        while len(_RECENT) > KEEP_RECENT:
            _RECENT.popitem(last=False)
    return made


def _plain_value(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain_value(v) for v in value)
    return isinstance(value, _PLAIN)


def create_model(config: RunConfig, context: Mapping[str, Any], rngs: nnx.Rngs):
    """The chosen model for the task's context: the model factory's one call (``run`` builds it
    with the run's keys, ``check`` as shapes only). The factory gets ``input_shape``, ``rngs``
    and each other key of the context its signature names (all of them with ``**context``);
    a 0.2 factory naming ``num_classes`` alone gets ``num_outputs`` as it."""
    context = dict(context)
    input_shape = context.pop("input_shape")
    model = config.model.create(input_shape=input_shape, rngs=rngs, **_keywords(config.model.entry.factory, context))
    if not isinstance(model, nnx.Module):  # before anything traces it (as shapes, the result must be a pytree)
        raise broken(config.model, f"returned {type(model).__name__}, not an nnx.Module{_linen_hint(model)}")
    return model


def _linen_hint(model) -> str:
    """What to do with a flax.linen module, the other flax API."""
    from flax import linen

    if not isinstance(model, linen.Module):  # flax's own layers and a plugin's linen subclass alike
        return ""
    return (" (a flax.linen module: jaxyard trains flax.nnx modules; write it with flax.nnx, or wrap it: "
            "nnx.bridge.ToNNX(module, rngs=rngs) then nnx.bridge.lazy_init(wrapped, example_input))")


def _keywords(factory, context: dict[str, Any]) -> dict[str, Any]:
    import inspect

    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return context
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return context
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out = {k: v for k, v in context.items() if k in names}
    if "num_classes" in names and "num_classes" not in out and "num_outputs" in context:
        out["num_classes"] = context["num_outputs"]
    return out


def available_memory() -> tuple[int | None, str]:
    """Bytes the default device can still take (None if unknown), and the device's name."""
    device = jax.local_devices()[0]  # (in a job of several processes, jax.devices()[0] may be another's)
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.platform} device {device.id}"
    try:  # the CPU backend: the host's available memory
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024, "host"
    except (OSError, KeyError, ValueError):
        return None, "host"


def check_memory(config: RunConfig, abstract_model) -> None:
    """Refuse a model whose parameters, gradients and two optimizer moments cannot fit, before
    allocating any of it (a 30 GB allocation would otherwise end in a traceback or the OOM killer)."""
    leaves = jax.tree.leaves(nnx.state(abstract_model, nnx.Param))
    count = sum(int(np.prod(p.shape)) for p in leaves)
    nbytes = sum(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize for p in leaves)
    free, where = available_memory()
    if free is not None and 4 * nbytes > free:
        raise UsageError(
            f"model {config.model.name!r} has {count:,} parameters ({nbytes / 2**30:.1f} GiB); training needs at least "
            f"4x that (parameters, gradients, optimizer state): {4 * nbytes / 2**30:.1f} GiB, but the {where} has "
            f"{free / 2**30:.1f} GiB available. Choose smaller sizes"
        )
