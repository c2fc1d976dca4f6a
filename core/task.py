"""What a run trains: the :class:`Task`, the one component that defines the problem.

A task says what a batch is, what is minimised, which metrics are reported and which way each
improves, which random streams the model may draw from, and what the model factory is told about
the data. Its :meth:`Task.loss` runs inside the compiled epoch (a ``lax.scan``), vmapped over a
sweep's trials and split over devices, so it is a pure function of its arguments; what it returns
besides the loss are *sums* (one scalar per name, additive over rows) that the scan, the devices
and the processes add up, and :meth:`Task.summarize` turns into the reported metrics once per
epoch, on the host.

Batches are pytrees: ``(x, y)`` from a loader's :class:`jaxyard.Split` (or a tuple), or a dict of
arrays whose leading axis is the row. ``mask`` is the row mask (1.0: a real row, 0.0: padding):
padding is never a label value.

Nothing here imports jax: ``list`` and ``show`` read tasks' metrics without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

Direction = Literal["min", "max"]
#: what every task reports: the mean of the loss it minimises (``run.monitor``'s default is val_loss)
LOSS = "loss"
#: the sum every task's sums carry: how many rows (or tokens) the other sums are over
COUNT = "count"


class Task:
    """The objective of a run. Subclass it (or write any object with the same attributes).

    :cvar metrics: the reported metrics in report order, each with its direction: ``{"loss": "min",
        "acc": "max"}``. ``loss`` is required. A run records ``SPLIT_NAME`` (``val_acc``) per epoch.
    :cvar rng_streams: random streams the model may draw from besides ``params`` and ``dropout``
        (a VAE's ``sample``); each gets its own key derived from ``run.seed``. Any other name a
        layer asks for (``nnx.RNN``'s ``carry``) draws from a ``default`` stream.
    """

    metrics: Mapping[str, Direction] = {LOSS: "min"}
    rng_streams: tuple[str, ...] = ()

    def context(self, data: Any, example: Any) -> dict[str, Any]:
        """Host side, before anything compiles: what the model factory is told about the data,
        e.g. ``{"num_outputs": 10, "num_classes": 10}``; ``input_shape`` overrides the loader's.

        :param data: the loader's :class:`jaxyard.Dataset` or :class:`jaxyard.StreamingDataset`.
        :param example: host (NumPy) rows of the training split as a batch pytree: the whole split
            in memory, or the first streamed batch.
        """
        return {}

    def check(self, batch: Any, where: str, context: Mapping[str, Any]) -> None:
        """Host side: refuse a split (or a streamed batch) this task cannot train on, with one
        line starting with ``where`` (a :class:`jaxyard.UsageError`): wrong dtype, out of range.
        ``context``: what :meth:`context` returned."""

    def inputs(self, batch: Any) -> Any:
        """What the model is called with for ``batch`` (default: its features, ``x``)."""
        return features(batch)

    def output_shape(self, context: Mapping[str, Any]) -> tuple[int, ...] | None:
        """The model's output shape for one row (``(num_classes,)``), checked before training;
        None: not checked (the loss is traced once on two rows instead)."""
        return None

    def loss(self, model: Any, batch: Any, mask: Any) -> tuple[Any, dict[str, Any]]:
        """Traced: the masked mean loss to differentiate, and the sums of this batch
        (``{"loss": Σ loss, "acc": Σ correct, "count": Σ mask}``)."""
        raise NotImplementedError

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Host side: each of :attr:`metrics` from the sums of a whole split (default: each sum
        divided by ``count``)."""
        count = max(float(sums[COUNT]), 1.0)
        return {name: float(sums[name]) / count for name in self.metrics}

    def optimizer(self, make: Callable[..., Any]) -> Any:
        """The optimizer (an optax transformation) this task trains with. ``make(learning_rate=None,
        **params)`` builds the run's chosen optimizer on the run's schedule, scaled to the peak
        ``learning_rate`` and with ``params`` changed: a GAN combines two with
        ``optax.multi_transform``. Default: ``make()``."""
        return make()

    def predict(self, model: Callable[[Any], Any], inputs: Any, context: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        """Host side, after training (``jaxyard predict``): the named predictions for ``inputs``.
        Optional: a task without it (or this default) predicts ``{"output": model(inputs)}``.

        :param model: the trained model as a function: NumPy rows ``(n, *input_shape)`` of the
            model's input (what :meth:`inputs` gives in training) to its outputs as NumPy arrays.
            Evaluation mode, deterministic, any ``n``; call it as often as needed (generation
            calls it once per new token). It reads exactly the training row shape (an exported
            model is fixed to it) and refuses another in one line.
        :param inputs: NumPy rows the user gave, ``(n, ...)``: features, or what the task reads
            instead (``next_token``: prompt tokens of any length).
        :param context: what :meth:`context` returned when the run was trained (``input_shape``,
            ``num_classes``, ...; through an exported artifact, as JSON gave it back: lists for tuples).
        :param options: what the user asked for, each passed only when given (``max_new_tokens``);
            a task whose signature does not take one is refused it in one line.
        :returns: NumPy arrays by name, each with ``n`` rows: ``{"class": (n,), "probabilities":
            (n, C)}``. Bad ``inputs`` (not what a model's outputs are): a :class:`jaxyard.UsageError`.
        """
        return {"output": model(inputs)}


# -- helpers for tasks (jax imported when called) ----------------------------------------------


def features(batch: Any) -> Any:
    """The model's input of a batch: ``x`` of ``(x, y)`` or of ``{"x": ...}``."""
    if isinstance(batch, Mapping):
        return batch["x"]
    if hasattr(batch, "x"):
        return batch.x
    return batch[0]


def targets(batch: Any) -> Any:
    """The targets of a batch: ``y`` of ``(x, y)`` or of ``{"y": ...}``."""
    if isinstance(batch, Mapping):
        return batch["y"]
    if hasattr(batch, "y"):
        return batch.y
    return batch[1]


def masked_mean(per_row: Any, mask: Any) -> tuple[Any, Any, Any]:
    """``(mean, sum, count)`` of ``per_row`` values over the rows ``mask`` keeps."""
    import jax.numpy as jnp

    count = jnp.sum(mask)
    total = jnp.sum(per_row * mask)
    return total / jnp.maximum(count, 1.0), total, count


def check_metrics(name: str, metrics: Mapping[str, str]) -> None:
    """A task's metrics: ``loss`` among them, each ``min`` or ``max``, named like a record key part."""
    from jaxyard.core.errors import PluginError

    if LOSS not in metrics:
        raise PluginError(f"task {name!r} reports {', '.join(metrics) or 'no metrics'}; every task reports 'loss'")
    for metric, way in metrics.items():
        if way not in ("min", "max"):
            raise PluginError(f"task {name!r}: metric {metric!r} has direction {way!r}; expected 'min' or 'max'")
        if not metric.isidentifier() or metric.endswith("_ema"):
            raise PluginError(f"task {name!r}: metric name {metric!r} must be an identifier not ending in _ema")
