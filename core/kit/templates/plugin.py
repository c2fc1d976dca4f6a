"""jaxyard-PLUGIN: a jaxyard plugin with these components:

PLUGIN_LIST

jaxyard finds it through its entry point (``[project.entry-points.jaxyard]`` in pyproject.toml).
Each kind's hook below registers its components: ``register(name, factory, params=ParamsClass)``;
a factory's first docstring line is its description in ``jaxyard list``. Import jax, flax, optax
and numpy inside the factories (or modules they import), never at the top of this module:
listing components must stay fast. jaxyard's ``core/registry/hookspecs.py`` documents every factory.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from attrs import validators as v

import jaxyard

# --- task -------------------------------------------------------------------------------------


@attrs.frozen
class PluginTaskParams:
    temperature: float = jaxyard.param(1.0, "divides the logits before the softmax", validator=v.gt(0.0), traced=True)


class PluginTask(jaxyard.Task):
    """Classification trained on the Brier score: the squared error (``optax.squared_error``)
    between the softmax of the logits and the one-hot label. Batches are a loader's ``(x, y)``."""

    metrics = {"loss": "min", "acc": "max"}  # what a run reports (val_loss, val_acc), and which way is better

    def __init__(self, p: PluginTaskParams):
        self.p = p  # p.temperature may be a traced scalar in a sweep: compute with it, never branch on it

    def context(self, data, example):
        """Host side: what the model factory is told (num_outputs: the width of its output)."""
        if not data.num_classes:
            raise jaxyard.UsageError("task 'PLUGIN_COMPONENT' needs a loader that declares num_classes")
        return {"num_outputs": data.num_classes, "num_classes": data.num_classes}

    def check(self, batch, where, context):
        """Host side, before anything compiles: one integer label in 0..num_classes-1 per example."""
        import numpy as np

        y = np.asarray(batch[1])
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise jaxyard.UsageError(f"{where} gives {y.dtype} targets of shape {y.shape}; task 'PLUGIN_COMPONENT' needs integer labels (n,)")
        if y.size and (y.min() < 0 or y.max() >= context["num_classes"]):
            raise jaxyard.UsageError(f"{where} has labels {y.min()}..{y.max()}, outside 0..{context['num_classes'] - 1}")

    def output_shape(self, context):
        return (context["num_classes"],)

    def loss(self, model, batch, mask):
        """Traced inside the compiled epoch: the mean loss over the rows ``mask`` keeps (padding rows
        have mask 0), and sums over those rows that runs add up over batches, devices and processes."""
        import jax
        import jax.numpy as jnp
        import optax

        x, y = batch
        logits = model(x)
        probabilities = jax.nn.softmax(logits / self.p.temperature)
        per_row = optax.squared_error(probabilities, jax.nn.one_hot(y, logits.shape[-1])).sum(axis=-1)
        correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        count = jnp.sum(mask)
        total = jnp.sum(per_row * mask)
        return total / jnp.maximum(count, 1.0), {"loss": total, "acc": jnp.sum(correct * mask), "count": count}


def plugin_task(p: PluginTaskParams):
    """Classification on the Brier score: squared error of the softmax probabilities (optax)."""
    return PluginTask(p)


@jaxyard.hookimpl
def jaxyard_register_tasks(register):
    register("PLUGIN_COMPONENT", plugin_task, params=PluginTaskParams)


# --- optimizer --------------------------------------------------------------------------------


@attrs.frozen
class PluginOptimizerParams:
    momentum: float = jaxyard.param(0.9, "decay of the running average of the gradients (0: plain SGD)", validator=[v.ge(0.0), v.lt(1.0)])
    nesterov: bool = jaxyard.param(False, "use Nesterov momentum")
    weight_decay: float = jaxyard.param(0.0, "decoupled weight decay, scaled by the learning rate (0: off)", validator=v.ge(0.0))


def plugin_optimizer(p: PluginOptimizerParams, *, learning_rate):
    """SGD with momentum and decoupled weight decay, chained from optax primitives."""
    import optax

    return optax.chain(
        optax.trace(decay=p.momentum, nesterov=p.nesterov),
        optax.add_decayed_weights(p.weight_decay),
        optax.scale_by_learning_rate(learning_rate),  # the run's schedule, always last
    )


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("PLUGIN_COMPONENT", plugin_optimizer, params=PluginOptimizerParams)


# --- scheduler --------------------------------------------------------------------------------


@attrs.frozen
class PluginSchedulerParams:
    power: float = jaxyard.param(2.0, "exponent of the decay: 1 is linear, more falls faster at first", validator=v.gt(0.0))
    end_fraction: float = jaxyard.param(0.01, "final rate as a fraction of the peak", validator=[v.ge(0.0), v.le(1.0)])


def plugin_scheduler(p: PluginSchedulerParams, *, learning_rate, decay_steps):
    """Polynomial decay from the peak rate to end_fraction x peak over the rest of the run."""
    import optax

    return optax.polynomial_schedule(
        init_value=learning_rate,
        end_value=learning_rate * p.end_fraction,
        power=p.power,
        transition_steps=max(decay_steps, 1),
    )


@jaxyard.hookimpl
def jaxyard_register_schedulers(register):
    register("PLUGIN_COMPONENT", plugin_scheduler, params=PluginSchedulerParams)


# --- model ------------------------------------------------------------------------------------


@attrs.frozen
class PluginModelParams:
    hidden: int = jaxyard.param(64, "units of the hidden layer", validator=v.ge(1))
    dropout_rate: float = jaxyard.param(0.1, "dropout after the hidden layer, active only in training", validator=[v.ge(0.0), v.lt(1.0)])


def plugin_model(p: PluginModelParams, *, input_shape, num_outputs, rngs):
    """A small MLP: flatten, Linear, ReLU, dropout, Linear to num_outputs (a classification's logits)."""
    from jaxyard_PLUGIN._model import MLP  # flax is imported only when a model is built

    return MLP(input_shape, p.hidden, num_outputs, dropout_rate=p.dropout_rate, rngs=rngs)


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register("PLUGIN_COMPONENT", plugin_model, params=PluginModelParams)


# --- loader -----------------------------------------------------------------------------------


@attrs.frozen
class PluginLoaderParams:
    train_size: int = jaxyard.param(512, "training examples", validator=v.ge(1))
    val_size: int = jaxyard.param(128, "validation examples", validator=v.ge(1))
    test_size: int = jaxyard.param(128, "test examples", validator=v.ge(1))
    features: int = jaxyard.param(16, "features per example", validator=v.ge(1))
    classes: int = jaxyard.param(4, "number of classes", validator=v.ge(2))
    separation: float = jaxyard.param(3.0, "spread of the class means, in noise standard deviations", validator=v.ge(0.0))
    data_seed: int = jaxyard.param(0, "seeds the data (not run.seed: a sweep over seeds trains on the same data)", validator=v.ge(0))


def plugin_loader(p: PluginLoaderParams, *, seed):
    """Learnable synthetic data: Gaussian blobs around one random mean per class."""
    import numpy as np

    rng = np.random.default_rng(p.data_seed)
    means = rng.normal(size=(p.classes, p.features)) * p.separation / np.sqrt(p.features)

    def split(n):
        y = rng.integers(0, p.classes, size=n)
        x = means[y] + rng.normal(size=(n, p.features))
        return jaxyard.Split(x.astype(np.float32), y.astype(np.int32))

    return jaxyard.Dataset(split(p.train_size), split(p.val_size), split(p.test_size), p.classes)


@jaxyard.hookimpl
def jaxyard_register_loaders(register):
    register("PLUGIN_COMPONENT", plugin_loader, params=PluginLoaderParams)


# --- checkpointer -----------------------------------------------------------------------------


@attrs.frozen
class PluginCheckpointerParams:
    compress: bool = jaxyard.param(False, "compress the arrays (smaller files, slower saves)")


def plugin_checkpointer(p: PluginCheckpointerParams, *, directory):
    """Checkpoints as .npz files with a manifest of dtypes, shapes and checksums (storage only)."""
    from jaxyard_PLUGIN._checkpointer import NpzCheckpointer  # numpy is imported only when it is built

    return NpzCheckpointer(Path(directory), compress=p.compress)


@jaxyard.hookimpl
def jaxyard_register_checkpointers(register):
    register("PLUGIN_COMPONENT", plugin_checkpointer, params=PluginCheckpointerParams)


# --- logger -----------------------------------------------------------------------------------


@attrs.frozen
class PluginLoggerParams:
    filename: str = jaxyard.param("PLUGIN_COMPONENT-metrics.tsv", "file in the run directory", validator=v.min_len(1))


class PluginFileLogger:
    """A header and one tab-separated row per epoch, with the columns of the first record (epoch,
    step, lr, then train_NAME and val_NAME for each metric of the run's task). ``start`` rewrites
    the file from the epochs the run already has (``run.history``), so after a kill and
    ``jaxyard resume`` each epoch is in it exactly once."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] | None = None

    def start(self, run) -> None:
        self.columns = None
        rows = "".join(self._row(r) for r in run.history)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(rows, encoding="utf-8")
        tmp.replace(self.path)

    def log_epoch(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(self._row(record))

    def finish(self, run, status: str, result=None) -> None:
        pass  # every row is already written; a logger holding a connection would close it here

    def _row(self, record: dict) -> str:
        header = ""
        if self.columns is None:  # the first record names the columns
            self.columns = list(record)
            header = "\t".join(self.columns) + "\n"
        return header + "\t".join(str(record.get(c, "")) for c in self.columns) + "\n"


def plugin_logger(p: PluginLoggerParams, *, directory):
    """One tab-separated row of metrics per epoch, in a file of the run directory."""
    return PluginFileLogger(Path(directory) / p.filename)


@jaxyard.hookimpl
def jaxyard_register_loggers(register):
    register("PLUGIN_COMPONENT", plugin_logger, params=PluginLoggerParams)
