"""What every variant process shares: the workload's data, the timing record, the command line.

numpy and the standard library only, so that a variant that does not use flax or optax (the Keras
baseline) does not pay for importing them.
"""

import argparse
import json
import statistics

import numpy as np

from bench import WORKLOADS, workload_config


def make_data(cfg, latent=32):
    """Synthetic float32 data; labels = argmax of a fixed random linear map of x.

    x lies near a random `latent`-dim subspace (plus noise), so that a 1k-sample
    MLP generalises (~75% val acc on `seed`) instead of memorising.
    """
    rng = np.random.default_rng(cfg["seed"])
    n = cfg["samples"] + cfg["val_samples"]
    z = rng.standard_normal((n, latent), dtype=np.float32)
    basis = rng.standard_normal((latent, cfg["features"]), dtype=np.float32) / np.sqrt(latent)
    x = z @ basis + 0.1 * rng.standard_normal((n, cfg["features"]), dtype=np.float32)
    w = rng.standard_normal((cfg["features"], cfg["classes"]), dtype=np.float32)
    y = np.argmax(x @ w, axis=1).astype(np.int32)
    s = cfg["samples"]
    return (x[:s], y[:s]), (x[s:], y[s:])


def steps_per_epoch(cfg):
    return -(-cfg["samples"] // cfg["batch_size"])


class Timings:
    """Training chunks (epoch, steps, seconds) and per-epoch validation seconds.

    A chunk is whatever the loop can time without disturbing it: one step for eager
    loops, one epoch for jitted ones. Chunks must be blocked on before being timed.
    """

    def __init__(self):
        self.chunks, self.val_s = [], []

    def summary(self, cfg, measured_train_s):
        measured = sum(n for _, n, _ in self.chunks)
        total = steps_per_epoch(cfg) * cfg["epochs"]
        step_s = statistics.median(s / n for _, n, s in self.chunks[1:] or self.chunks)
        val_s = statistics.median(self.val_s[1:] or self.val_s)
        first_epoch = [c for c in self.chunks if c[0] == 0]
        compile_s = (sum(c[2] for c in first_epoch) - sum(c[1] for c in first_epoch) * step_s
                     + self.val_s[0] - val_s)
        remaining = (total - measured) * step_s + (cfg["epochs"] - len(self.val_s)) * val_s
        return dict(step_ms=step_s * 1e3, compile_s=compile_s,
                    epoch_s=steps_per_epoch(cfg) * step_s + val_s,
                    train_s=measured_train_s + remaining, total_steps=total,
                    measured_steps=measured, extrapolated=measured < total)


def cli(runners, import_s):
    """Parse the variant-process command line, run one variant, print its results."""
    import jax  # already imported by every runner

    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=runners, required=True)
    parser.add_argument("--workload", choices=WORKLOADS, default="seed")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps, extrapolate")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    cfg = workload_config(args.workload, args.samples, args.epochs)
    train, val = make_data(cfg)
    timings, train_s, (train_loss, train_acc), (val_loss, val_acc) = runners[args.variant](
        cfg, train, val, args.max_steps)
    result = dict(variant=args.variant, workload=args.workload, backend=jax.default_backend(),
                  import_s=import_s, **timings.summary(cfg, train_s),
                  train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>15}: {value}")
