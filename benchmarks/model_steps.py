"""Per-step time of each built-in model: the engine's compiled epoch against a hand-written jitted step.

    .venv/bin/python benchmarks/model_steps.py                      # every model in MODELS
    .venv/bin/python benchmarks/model_steps.py --models rnn,rnn-digits --epochs 7

For each model (one entry of MODELS: its task, loader and settings), in one process:

- **jaxyard**: ``build(config)`` then ``make_loop(built).train_epoch(epoch)``, the engine's
  compiled epoch (one ``lax.scan`` over the shuffled batches), the metric sums brought to the host;
- **hand-written**: the same ``nnx`` module (the model's factory, the same context), as flax's
  guides write a step: ``nnx.Optimizer(model, optax.adam(schedule))`` split once into graphdef and
  state, a ``jax.jit`` step (the state donated) that merges them, gathers a batch by index, takes
  ``nnx.value_and_grad`` of the task's loss and updates; the epoch is a Python loop over the steps
  of a jitted permutation (the last partial batch dropped), the loss of the last step fetched.

Both train the same data with the same math; epochs alternate (jaxyard, hand-written, jaxyard, ...)
after one compiling epoch each, and the table gives the median ms/step of each and the median of
the per-epoch ratios (drift cancels pair by pair). Add a model: one MODELS entry.
"""

import argparse
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxyard
from jaxyard.core.train.build import build, create_model, model_rngs
from jaxyard.core.train.data import as_batch
from jaxyard.core.train.loop import make_loop

#: name -> (options, --set values): a small configuration of each built-in model, batches of 32
MODELS = {
    "mlp": ({"task": "classification", "loader": "synthetic"}, ["loader.train_size=1024"]),
    "cnn": ({"task": "classification", "loader": "digits"}, ["loader.image=true"]),  # 8x8x1 images: 2-D convolutions, channels 32,64
    "transformer": ({"task": "next_token", "loader": "text"}, ["loader.max_chars=50000"]),  # 2 blocks of width 128, 64-byte windows
    "rnn": ({"task": "next_token", "loader": "tokens"}, ["loader.train_size=1024"]),
    "rnn-digits": ({"task": "classification", "loader": "digits", "model": "rnn"}, []),  # 8 steps of 8 channels
}


def configure(name: str, registry):
    options, sets = MODELS[name]
    options = {"model": name, "batch_size": 32, "epochs": 1000, **options}
    return jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options,
                                  sets=["run.checkpointer=none", "run.warmup_steps=10", *sets])


def hand_written(built, config):
    """``(state, epoch)``: the model's own module and a jitted optax step, looped over an epoch."""
    task = built.task
    model = create_model(config, built.context, model_rngs(config.run.seed + 1, task))
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(built.schedule), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    data = jax.tree.map(jnp.asarray, as_batch(built.data.train))
    n, bs = built.sizes["train"], config.run.batch_size
    steps = n // bs
    ones = jnp.ones((bs,), jnp.float32)

    @partial(jax.jit, donate_argnums=0)
    def step(state, idx):
        model, optimizer = nnx.merge(graphdef, state)
        batch = jax.tree.map(lambda a: a[idx], data)
        loss, grads = nnx.value_and_grad(lambda m: task.loss(m, batch, ones)[0])(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    order = jax.jit(lambda key: jax.random.permutation(key, n)[: steps * bs].reshape(steps, bs))

    def epoch(state, key):
        loss = None
        for idx in order(key):
            state, loss = step(state, idx)
        return state, float(loss)

    return state, epoch, steps


def measure(name: str, registry, epochs: int) -> dict:
    config = configure(name, registry)
    built = build(config)
    loop = make_loop(built)
    state, hand_epoch, hand_steps = hand_written(built, config)
    key = jax.random.key(1)
    jax.device_get(loop.train_epoch(1))  # compile both
    state, _ = hand_epoch(state, key)
    ours, hand = [], []
    for e in range(2, epochs + 2):
        t = time.perf_counter()
        jax.device_get(loop.train_epoch(e))
        ours.append((time.perf_counter() - t) / built.steps_per_epoch)
        t = time.perf_counter()
        state, _ = hand_epoch(state, jax.random.fold_in(key, e))
        hand.append((time.perf_counter() - t) / hand_steps)
    return {
        "model": name, "task": config.task.name, "loader": config.loader.name, "parameters": built.num_params,
        "steps": built.steps_per_epoch, "jaxyard_ms": statistics.median(ours) * 1e3, "hand_ms": statistics.median(hand) * 1e3,
        "ratio": statistics.median(o / h for o, h in zip(ours, hand, strict=True)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs of each side, alternating")
    args = parser.parse_args()
    registry = jaxyard.build_registry()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s); median over {args.epochs} alternating epochs")
    print(f"{'model':<12} {'task':<15} {'loader':<10} {'params':>9} {'steps':>6} {'jaxyard ms/step':>16} {'hand ms/step':>13} {'ratio':>6}")
    for name in args.models.split(","):
        r = measure(name.strip(), registry, args.epochs)
        print(f"{r['model']:<12} {r['task']:<15} {r['loader']:<10} {r['parameters']:>9,} {r['steps']:>6} "
              f"{r['jaxyard_ms']:>16.3f} {r['hand_ms']:>13.3f} {r['ratio']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
