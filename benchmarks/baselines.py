"""Baseline training loops, one per process (started by bench.py):

    python benchmarks/baselines.py --variant jax_jit --workload seed --json

seed_eager  nnx model + nnx.Optimizer, un-jitted value_and_grad/update per batch (seed example style)
jax_jit     pure JAX + optax, jitted (donating) train step, padded+masked last batch
jax_scan    same math, one jitted lax.scan per epoch with the shuffle inside (lower bound)

The data, the timing record and the command line are in common.py (re-exported here); other
scripts reuse `cli` (and `make_data`, `Timings`) to report in the same JSON format.
"""

import time

_start = time.perf_counter()
import jax  # noqa: E402 - these imports are what import_s measures
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402, F401 - part of import_s, as in every variant
import optax  # noqa: E402
from flax import nnx  # noqa: E402

IMPORT_S = time.perf_counter() - _start

from functools import partial  # noqa: E402

from common import Timings, cli, make_data, steps_per_epoch  # noqa: E402, F401 - re-exported for the other scripts


def make_tx(cfg):
    total_steps = steps_per_epoch(cfg) * cfg["epochs"]
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg["lr"], cfg["warmup_steps"], total_steps)
    return optax.adamw(lr, weight_decay=cfg["weight_decay"])


# --- seed_eager -------------------------------------------------------------------------


class MLP(nnx.Module):
    def __init__(self, sizes, rate, rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.dropout = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = self.dropout(nnx.relu(layer(x)))
        return self.layers[-1](x)


def nnx_loss(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def nnx_evaluate(model, x, y):
    model.eval()
    loss, logits = nnx_loss(model, x, y)
    model.train()
    return float(loss), float((logits.argmax(-1) == y).mean())


def run_seed_eager(cfg, train, val, max_steps):
    sizes = (cfg["features"], *cfg["hidden"], cfg["classes"])
    model = MLP(sizes, cfg["dropout"], nnx.Rngs(cfg["seed"]))
    optimizer = nnx.Optimizer(model, make_tx(cfg), wrt=nnx.Param)
    (x, y), (x_val, y_val) = [tuple(map(jnp.asarray, d)) for d in (train, val)]
    key = jax.random.key(cfg["seed"])
    bs, timings, step = cfg["batch_size"], Timings(), 0
    start = time.perf_counter()
    for epoch in range(cfg["epochs"]):
        key, shuffle_key = jax.random.split(key)
        perm = jax.random.permutation(shuffle_key, cfg["samples"])
        for i in range(0, cfg["samples"], bs):
            if step == max_steps:
                break
            t = time.perf_counter()
            idx = perm[i:i + bs]
            _, grads = nnx.value_and_grad(nnx_loss, has_aux=True)(model, x[idx], y[idx])
            optimizer.update(model, grads)
            jax.block_until_ready(nnx.state(model))
            timings.chunks.append((epoch, 1, time.perf_counter() - t))
            step += 1
        t = time.perf_counter()
        nnx_evaluate(model, x_val, y_val)
        timings.val_s.append(time.perf_counter() - t)
        if step == max_steps:
            break
    train_s = time.perf_counter() - start
    return timings, train_s, nnx_evaluate(model, x, y), nnx_evaluate(model, x_val, y_val)


# --- jax_jit / jax_scan -------------------------------------------------------------------


def init_params(key, sizes):
    """Like nnx.Linear: lecun_normal kernels, zero biases."""
    init = jax.nn.initializers.lecun_normal()
    keys = jax.random.split(key, len(sizes) - 1)
    return [dict(kernel=init(k, (a, b), jnp.float32), bias=jnp.zeros(b, jnp.float32))
            for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def forward(params, x, rate=0.0, key=None):
    """MLP forward; dropout after each hidden ReLU when a key is given."""
    for i, layer in enumerate(params):
        x = x @ layer["kernel"] + layer["bias"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
            if key is not None:
                keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, x.shape)
                x = jnp.where(keep, x / (1.0 - rate), 0.0)
    return x


@jax.jit
def evaluate(params, x, y):
    logits = forward(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()


@partial(jax.jit, static_argnums=(1, 2))
def shuffle(key, n, batch_size):
    """Permuted indices as (steps, batch_size), last batch padded, with its validity mask."""
    steps = -(-n // batch_size)
    idx = jnp.pad(jax.random.permutation(key, n), (0, steps * batch_size - n))
    mask = jnp.arange(steps * batch_size) < n
    return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def make_update(cfg, tx, dropout_key):
    """One optimizer step on a (possibly padded) batch; state = (params, opt_state, step)."""

    def masked_loss(params, x, y, mask, key):
        logits = forward(params, x, cfg["dropout"], key)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(losses * mask) / jnp.sum(mask)

    def update(state, x, y, mask):
        params, opt_state, step = state
        key = jax.random.fold_in(dropout_key, step)
        grads = jax.grad(masked_loss)(params, x, y, mask, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, step + 1

    return update


def run_jax(cfg, train, val, scan):
    tx = make_tx(cfg)
    params_key, dropout_key, shuffle_key = jax.random.split(jax.random.key(cfg["seed"]), 3)
    sizes = (cfg["features"], *cfg["hidden"], cfg["classes"])
    params = init_params(params_key, sizes)
    state = (params, tx.init(params), jnp.zeros((), jnp.int32))
    update = make_update(cfg, tx, dropout_key)
    (x, y), (x_val, y_val) = jax.device_put((train, val))
    n, bs = cfg["samples"], cfg["batch_size"]

    @partial(jax.jit, donate_argnums=0)
    def train_step(state, x, y, idx, mask, b):
        return update(state, x[idx[b]], y[idx[b]], mask[b])

    @partial(jax.jit, donate_argnums=0)
    def train_epoch(state, x, y, key):
        def body(state, batch):
            idx, mask = batch
            return update(state, x[idx], y[idx], mask), None

        return jax.lax.scan(body, state, shuffle(key, n, bs))[0]

    timings = Timings()
    start = time.perf_counter()
    for epoch in range(cfg["epochs"]):
        t = time.perf_counter()
        key = jax.random.fold_in(shuffle_key, epoch)
        if scan:
            state = train_epoch(state, x, y, key)
        else:
            idx, mask = shuffle(key, n, bs)
            for b in range(steps_per_epoch(cfg)):
                state = train_step(state, x, y, idx, mask, b)
        jax.block_until_ready(state)
        timings.chunks.append((epoch, steps_per_epoch(cfg), time.perf_counter() - t))
        t = time.perf_counter()
        jax.block_until_ready(evaluate(state[0], x_val, y_val))
        timings.val_s.append(time.perf_counter() - t)
    train_s = time.perf_counter() - start
    metrics = [tuple(map(float, evaluate(state[0], *d))) for d in ((x, y), (x_val, y_val))]
    return timings, train_s, *metrics


# Adding a variant = one runner here: (cfg, train, val, max_steps) -> (Timings, train_s,
# (train_loss, train_acc), (val_loss, val_acc)).
RUNNERS = {
    "seed_eager": run_seed_eager,
    "jax_jit": lambda cfg, train, val, max_steps: run_jax(cfg, train, val, scan=False),
    "jax_scan": lambda cfg, train, val, max_steps: run_jax(cfg, train, val, scan=True),
}


if __name__ == "__main__":
    cli(RUNNERS, IMPORT_S)
