"""A local test plugin: tasks with a bug in their own code, each to be named in one line."""

from jaxyard import Task, hookimpl


class _Base(Task):
    metrics = {"loss": "min"}

    def context(self, data, example):
        return {"num_outputs": data.num_classes, "num_classes": data.num_classes}

    def loss(self, model, batch, mask):
        import jax.numpy as jnp
        import optax

        x, y = batch
        per_row = optax.softmax_cross_entropy_with_integer_labels(model(x), y)
        count = jnp.sum(mask)
        return jnp.sum(per_row * mask) / jnp.maximum(count, 1.0), {"loss": jnp.sum(per_row * mask), "count": count}


class SummarizeRaises(_Base):
    def summarize(self, sums):
        raise KeyError("lost")


class LossRaises(_Base):
    def loss(self, model, batch, mask):
        raise AttributeError("no such thing")


@hookimpl
def jaxyard_register_tasks(register):
    register("summarize-raises", lambda p: SummarizeRaises(), description="summarize() raises")
    register("loss-raises", lambda p: LossRaises(), description="loss() raises while tracing")
