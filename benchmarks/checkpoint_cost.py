"""What a checkpoint save costs a run: the default workload saving every epoch, in one process.

    python benchmarks/checkpoint_cost.py --repeats 3

Trains the default configuration (235k parameters plus Adam's state) for 10 epochs with a
save after every epoch, with the `none` checkpointer, orbax asynchronous and orbax
synchronous saves, in turn, and reports each one's training time per epoch (median) and the
difference per save as a fraction of an epoch without checkpoints. Saves happen between the
compiled epochs, so the difference is what training waits for.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import jaxyard

VARIANTS = {
    "none": ["run.checkpointer=none"],
    "orbax async": ["checkpointer.async_save=true", "run.keep_latest=20"],
    "orbax sync": ["checkpointer.async_save=false", "run.keep_latest=20"],
}


def per_epoch_seconds(sets, tmp: Path, tag: str) -> float:
    registry = jaxyard.build_registry()
    config = jaxyard.resolve_config(registry, jaxyard.load_settings(), sets=["run.save_every=1", *sets])
    result = jaxyard.train(config, out_dir=tmp / tag)
    # epochs 2..10: the first holds the compile; train_s covers epochs, saves and the final wait
    first = result.history[0]["train_time"] + result.history[0]["val_time"]
    return (result.timings["train_s"] - first) / (len(result.history) - 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, sets in VARIANTS.items():
                times[name].append(per_epoch_seconds(sets, Path(tmp), f"{name.replace(' ', '-')}-{i}"))
    base = statistics.median(times["none"])
    print(f"{'checkpointer':<12}  s/epoch (median)  save cost per epoch  as a fraction of an epoch")
    for name, values in times.items():
        m = statistics.median(values)
        print(f"{name:<12}  {m:16.4f}  {m - base:19.4f}  {(m - base) / base:10.2f}")


if __name__ == "__main__":
    main()
