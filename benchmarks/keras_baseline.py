"""Keras 3 on its JAX backend: the trainer a JAX user would otherwise pick, as a bench.py variant.

    pip install -r benchmarks/requirements-keras.txt   # optional: not a jaxyard dependency
    python benchmarks/keras_baseline.py --variant keras --workload seed
    python benchmarks/bench.py --workload seed --variants keras,jaxyard_cli --repeats 3 --alternate

The same data (common.make_data) and math as the other variants: MLP with ReLU and dropout after
each hidden layer, lecun_normal kernels and zero biases (nnx.Linear's), softmax cross-entropy
with integer labels, AdamW (decoupled weight decay, scaled by the learning rate, as optax.adamw;
epsilon 1e-8 as optax) on a schedule rising linearly from 0 to the peak over the warm-up steps,
then cosine decay to 0 at the last step; batch 32, the training split shuffled every epoch, the
last partial batch kept; validation every epoch. `model.fit(x, y)` on numpy arrays as a user
writes it, with `jit_compile=True` and `steps_per_execution` = one epoch's steps (at most 32).

Timings, from a callback: an epoch's training runs from `on_epoch_begin` to `on_test_begin`
(validation starts once Keras has synchronised the trained state), its validation from there to
`on_epoch_end`; both ends wait for the variables (`jax.block_until_ready`), so asynchronous
dispatch is not cut short.
"""

import os
import time

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported: the backend is chosen then
_start = time.perf_counter()
try:
    import keras
except ImportError:
    raise SystemExit("keras is not installed: pip install -r benchmarks/requirements-keras.txt "
                     "(Keras 3, run on its JAX backend; an optional benchmark requirement)") from None
import jax  # noqa: E402 - keras imports it first; what import_s measures is keras's import

IMPORT_S = time.perf_counter() - _start

from common import Timings, cli, steps_per_epoch  # noqa: E402

INSTALL = "pip install -r benchmarks/requirements-keras.txt"


class EpochTimer(keras.callbacks.Callback):
    """Per-epoch training and validation seconds, into a `Timings`."""

    def __init__(self, timings, steps):
        super().__init__()
        self.timings, self.steps = timings, steps

    def _now(self):
        jax.block_until_ready([v.value for v in self.model.variables])
        return time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.t0 = epoch, self._now()

    def on_test_begin(self, logs=None):
        self.t1 = self._now()
        self.timings.chunks.append((self.epoch, self.steps, self.t1 - self.t0))

    def on_epoch_end(self, epoch, logs=None):
        self.timings.val_s.append(self._now() - self.t1)


def make_model(cfg):
    keras.utils.set_random_seed(cfg["seed"])
    layers = [keras.Input((cfg["features"],))]
    for width in cfg["hidden"]:
        layers += [keras.layers.Dense(width, activation="relu", kernel_initializer="lecun_normal"),
                   keras.layers.Dropout(cfg["dropout"])]
    layers.append(keras.layers.Dense(cfg["classes"], kernel_initializer="lecun_normal"))
    return keras.Sequential(layers)


def make_optimizer(cfg):
    total = steps_per_epoch(cfg) * cfg["epochs"]
    warmup = min(cfg["warmup_steps"], total)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(total - warmup, 1), alpha=0.0, warmup_target=cfg["lr"], warmup_steps=warmup)
    return keras.optimizers.AdamW(schedule, weight_decay=cfg["weight_decay"], epsilon=1e-8)


def run_keras(cfg, train, val, max_steps):
    steps = steps_per_epoch(cfg)
    model = make_model(cfg)
    model.compile(optimizer=make_optimizer(cfg), jit_compile=True, steps_per_execution=min(steps, 32),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    timings = Timings()
    start = time.perf_counter()
    model.fit(*train, batch_size=cfg["batch_size"], epochs=cfg["epochs"], validation_data=val, shuffle=True,
              verbose=0, callbacks=[EpochTimer(timings, steps)])
    train_s = time.perf_counter() - start

    def evaluate(x, y):
        loss, acc = model.evaluate(x, y, batch_size=1000, verbose=0)
        return float(loss), float(acc)

    return timings, train_s, evaluate(*train), evaluate(*val)


if __name__ == "__main__":
    cli({"keras": run_keras}, IMPORT_S)
