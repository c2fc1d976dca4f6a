"""What the task and model checks run on: a small example of data a task accepts, and a tiny model for it.

The kit holds small, learnable data sets of the kinds jaxyard's built-in tasks train on
(:data:`KINDS_OF_DATA`). A task is checked on the first one whose ``context()`` and ``check()``
accept it, with a tiny model mapping the task's ``inputs`` to ``(rows, *output_shape(context))``
(an ``nnx.Linear`` on flattened float features, an ``nnx.Embed`` then an ``nnx.Linear`` on
integer tokens). A task whose batches are none of these gives its own example::

    class MyTask(jaxyard.Task):
        def kit_example(self, rows):
            '''(batch, make_model): ``rows`` rows of a batch this task trains on (NumPy arrays,
            learnable, the same for every call), and ``make_model(rngs)`` building a small
            nnx.Module its loss accepts.'''

Model checks build the model under test for a task's context (``task=`` of the kit, default
``classification``): :func:`model_keywords` is how a model factory is called. Nothing here
imports jax at import time.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from jaxyard.core.kit.harness import NUM_CLASSES, Failure, error_text

#: the kit's kinds of example data, in the order they are tried, and what each holds
KINDS_OF_DATA = {
    "classes": f"float features x (n, *input_shape), integer labels y (n,) in 0..{NUM_CLASSES - 1}, num_classes {NUM_CLASSES}",
    "values": "float features x (n, *input_shape), float targets y (n, 3)",
    "tags": "float features x (n, *input_shape), 0/1 float tags y (n, 3)",
    "tokens": "{'tokens': int32 (n, 9)} over a vocabulary of 11 (num_classes 11), each token a function of the one before",
}
TARGETS = 3  # the width of the kit's regression targets and tags (not 1: a model that hard-codes one output is caught)
VOCAB, SEQ = 11, 8  # the token example: a vocabulary of 11, sequences of SEQ + 1 tokens
SIZES = {"train": 48, "val": 16, "test": 16}


@attrs.frozen
class Example:
    """Data a task accepts: the data set, the task's context for it, the training split as a host
    batch, and (from the task's own ``kit_example``) the model to check the task with."""

    name: str
    data: Any  # a jaxyard.Dataset
    context: dict[str, Any]
    batch: Any  # the train split as a batch pytree of NumPy arrays
    make_model: Callable[[Any], Any] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """What a model factory is given: the context's ``input_shape``, else the loader's."""
        return tuple(self.context.get("input_shape") or self.data.input_shape)

    @property
    def rows(self) -> int:
        import jax

        return len(jax.tree.leaves(self.batch)[0])

    def take(self, index) -> Any:
        """Rows ``index`` (a slice or index array) of the batch."""
        import jax

        return jax.tree.map(lambda a: a[index], self.batch)


def example_data(kind: str, input_shape: tuple[int, ...] = (12,), seed: int = 0, classes: int = NUM_CLASSES):
    """The kit's data set of ``kind`` (:data:`KINDS_OF_DATA`; ``classes`` classes for ``classes``):
    a :class:`jaxyard.Dataset` whose targets follow from the features (or each token from the one
    before), the same in every split."""
    import numpy as np

    from jaxyard.core.train.data import Dataset, Split

    teacher = np.random.default_rng(1234).normal(size=(math.prod(input_shape), max(classes, TARGETS)))
    rng = np.random.default_rng(seed)

    def split(n: int):
        if kind == "tokens":
            tokens = np.empty((n, SEQ + 1), np.int32)
            tokens[:, 0] = rng.integers(0, VOCAB, size=n)
            for t in range(SEQ):
                tokens[:, t + 1] = (3 * tokens[:, t] + 1) % VOCAB
            return {"tokens": tokens}
        x = rng.normal(size=(n, *input_shape)).astype(np.float32)
        z = x.reshape(n, -1) @ teacher / math.sqrt(math.prod(input_shape))
        if kind == "classes":
            return Split(x, np.argmax(z[:, :classes], axis=1).astype(np.int32))
        if kind == "values":
            return Split(x, z[:, :TARGETS].astype(np.float32))
        if kind == "tags":
            return Split(x, (z[:, :TARGETS] > 0).astype(np.float32))
        raise ValueError(f"no example data of kind {kind!r}; kinds: {', '.join(KINDS_OF_DATA)}")

    return Dataset(split(SIZES["train"]), split(SIZES["val"]), split(SIZES["test"]), {"classes": classes, "tokens": VOCAB}.get(kind))


def host_batch(split) -> Any:
    """A split as the batch pytree a task sees, of NumPy arrays."""
    import jax
    import numpy as np

    from jaxyard.core.train.data import as_batch

    return jax.tree.map(np.asarray, as_batch(split))


def find_example(task, input_shape: tuple[int, ...] = (12,), *, classes: int = NUM_CLASSES) -> Example:
    """The task's own ``kit_example``, else the first of the kit's data sets whose ``context()``
    and ``check()`` it accepts (each split); a :class:`Failure` naming each refusal if none."""
    own = getattr(task, "kit_example", None)
    if own is not None:
        return _own_example(task, own)
    refusals = []
    for kind in KINDS_OF_DATA:
        data = example_data(kind, input_shape, classes=classes)
        batch = host_batch(data.train)
        try:
            context = dict(task.context(data, batch))
            for split in ("train", "val", "test"):
                task.check(host_batch(getattr(data, split)), f"the kit's {kind} example ({split})", context)
        except Exception as err:  # a refusal, whatever its type: the next kind of data
            refusals.append(f"{kind}: {refusal(err)}")
            continue
        return Example(kind, data, context, batch)
    raise Failure(f"it accepts none of the kit's example data ({'; '.join(refusals)})",
                  "give the task a method kit_example(rows) returning (batch, make_model): a learnable batch it trains on "
                  "and make_model(rngs) building a small nnx.Module its loss accepts (see jaxyard.core.kit.examples)")


def refusal(err: Exception) -> str:
    """A task's refusal in a few words: its UsageError's message, or any other error with its type."""
    from jaxyard.core.errors import JaxyardError

    text = error_text(err)[:200]
    return text if isinstance(err, JaxyardError) else f"{type(err).__name__}: {text}"


def _own_example(task, own) -> Example:
    import jax
    import numpy as np

    from jaxyard.core.train.data import Dataset, Split

    rows = SIZES["train"]
    try:
        batch, make_model = own(rows)
    except Exception as err:
        raise Failure(f"kit_example({rows}) raised {type(err).__name__}: {error_text(err)}",
                      "return (batch, make_model) from kit_example(rows)") from err
    batch = jax.tree.map(np.asarray, batch)
    sizes = {len(leaf) if leaf.ndim else None for leaf in jax.tree.leaves(batch)}
    if sizes != {rows} or not callable(make_model):
        raise Failure(f"kit_example({rows}) returned a batch with leading axes {sorted(sizes, key=str)} and make_model {make_model!r}",
                      f"return a batch of {rows} rows (every array's leading axis) and a callable make_model(rngs)")
    split = Split(*batch) if isinstance(batch, tuple) and len(batch) == 2 else batch
    data = Dataset(split, split, split)
    try:
        context = dict(task.context(data, batch))
    except Exception:  # the task's context may need more than the batch: its own model does not
        context = {}
    return Example("kit_example", data, context, batch, make_model)


def registry_of(s) -> Any:
    """The registry the subject's components come from (the kit's option, else the installed one)."""
    from jaxyard.core.kit.harness import default_registry

    return s.options.registry if s.options.registry is not None else default_registry()


def task_named(s, name: str):
    """Task ``name`` of the subject's registry, built with its default parameters."""
    from jaxyard.core.errors import UsageError
    from jaxyard.core.registry.params import build

    try:
        entry = registry_of(s).get("task", name)
    except UsageError as err:
        raise Failure(f"the kit checks it with task {name!r}, which is not registered: {error_text(err)}",
                      "pass task= the name of a registered task to the kit (jaxyard list tasks)") from None
    return entry.create(build(entry.params, {}, where=f"task {name!r}"))


def rngs_for(task, seed: int = 0):
    """The ``nnx.Rngs`` a model is built with, as the engine builds it: ``params``, ``dropout``,
    the task's own streams and a ``default`` for any other name a layer asks for."""
    from flax import nnx

    streams = {"params": seed, "dropout": seed + 1, "default": seed + 2}
    for i, name in enumerate(getattr(task, "rng_streams", ()) or ()):
        streams.setdefault(name, seed + 3 + i)
    return nnx.Rngs(**streams)


def model_keywords(factory: Callable[..., Any], input_shape: tuple[int, ...], context: Mapping[str, Any], rngs) -> dict[str, Any]:
    """The keywords a model factory is called with: ``input_shape``, ``rngs``, ``num_outputs`` and
    each other key of the task's context its signature names (all of them for ``**context``); a 0.2
    factory naming ``num_classes`` and not ``num_outputs`` gets ``num_classes=num_outputs``."""
    out: dict[str, Any] = {"input_shape": tuple(input_shape), "rngs": rngs, "num_outputs": context.get("num_outputs")}
    try:
        parameters = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # nothing to inspect: what every factory takes
        return out
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return {**{k: v for k, v in context.items() if k != "input_shape"}, **out}
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "num_outputs" not in names and "num_classes" in names:
        out["num_classes"] = out.pop("num_outputs")
    out.update({k: v for k, v in context.items() if k in names and k not in out and k != "input_shape"})
    return out


def output_shape(task, example: Example) -> tuple[int, ...] | None:
    """The task's per-row output shape for the example's context (None: it does not say)."""
    shape = task.output_shape(example.context)
    return None if shape is None else tuple(int(d) for d in shape)


def kit_model(task, example: Example, rngs):
    """The model the task checks use: the example's own, else a tiny one from ``task.inputs`` to
    ``(rows, *output_shape)`` (default: ``(num_outputs,)`` for float features, ``(*tokens,
    num_outputs)`` for integer ones)."""
    import numpy as np

    if example.make_model is not None:
        return example.make_model(rngs)
    inputs = task.inputs(example.batch)
    if not hasattr(inputs, "dtype"):
        raise Failure(f"its inputs(batch) of the kit's {example.name} example are a {type(inputs).__name__}, not one array",
                      "give the task a kit_example(rows) method returning (batch, make_model) (see jaxyard.core.kit.examples)")
    integer = np.issubdtype(inputs.dtype, np.integer)
    shape = output_shape(task, example)
    outputs = example.context.get("num_outputs")
    if shape is None:
        if not isinstance(outputs, int):
            raise Failure(f"its context for the kit's {example.name} example has no num_outputs and output_shape() is None",
                          "return num_outputs from context(), or give the task a kit_example(rows) method")
        shape = (*inputs.shape[1:], outputs) if integer else (outputs,)
    vocab = max(int(np.max(inputs)) + 1 if integer else 0, int(example.context.get("vocab_size") or 0))
    if integer and tuple(shape[: inputs.ndim - 1]) != tuple(inputs.shape[1:]):
        raise Failure(f"its output shape {shape} does not start with the shape of its integer inputs {inputs.shape[1:]}",
                      "give the task a kit_example(rows) method returning (batch, make_model)")
    return _tiny(inputs.shape[1:], shape, vocab if integer else None, rngs)


def _tiny(input_shape, out_shape, vocab, rngs):
    from flax import nnx

    class Tiny(nnx.Module):
        """Features: one Linear to the output. Tokens: an embedding, then one Linear per position."""

        def __init__(self):
            self.out_shape = tuple(out_shape)
            if vocab is None:
                self.embed = None
                self.linear = nnx.Linear(math.prod(input_shape), math.prod(out_shape), rngs=rngs)
            else:
                self.embed = nnx.Embed(vocab, 8, rngs=rngs)
                self.linear = nnx.Linear(8, math.prod(out_shape[len(input_shape):]), rngs=rngs)

        def __call__(self, x):
            h = x.reshape(x.shape[0], -1) if self.embed is None else self.embed(x)
            return self.linear(h).reshape(x.shape[0], *self.out_shape)

    return Tiny()
