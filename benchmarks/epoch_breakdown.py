"""Where each epoch's wall time goes, in the default run and in a benchmark workload.

    python benchmarks/epoch_breakdown.py                      # default run, then `large` (its 20 epochs)
    python benchmarks/epoch_breakdown.py --large-epochs 4     # a shorter `large` (CPU)
    python benchmarks/epoch_breakdown.py --json breakdown.json

Runs `jaxyard run` in this process (the CLI's own code path: its report, progress, loggers,
checkpoints and curves), timing it from outside the library: the loop's methods, the
checkpointer's and `jax.device_get` are wrapped in this process, and every event hook of every
plugin is timed by wrapping its implementation in the run's plugin manager. An epoch runs from
the start of its training to the start of the next epoch's (the last: the end of the loop), so
its `jaxyard_on_epoch_end` event, checkpoint save and stop agreement are in it (a part that
stays under 0.05 ms in every epoch is not printed; the JSON has it). Each part is
*exclusive* (a checkpoint save asked for by the checkpointing plugin's hook is counted as the
save, not as that hook); `remainder` is the epoch's wall time that no part covers.

Parts:
  compile             tracing and compiling the epoch program (epoch 1 only, none with a warm program cache)
  train unalias       the loop's check that no buffer of the state is donated twice
  train call          calling the compiled epoch (returns before the device is done)
  train dispatch      the rest of the loop's train_epoch: the epoch's key, the data's shapes
  train device        blocking on the epoch's metric sums: the device finishing the epoch
  val dispatch/device the same for the validation pass (and the averaged weights' with run.ema_decay)
  host transfer       jax.device_get of the sums and turning them into metrics (host arithmetic)
  ckpt gather         copying the state to the host for a save (one copy per leaf)
  ckpt wait           waiting for the previous asynchronous save before the next
  ckpt save           the rest of a save: retention, starting the checkpointer's write
  event NAME          one plugin's implementations of the jaxyard_on_* events (exclusive)
  event dispatch      pluggy itself and the wrapper implementations (the NaN guard)
  output              the report's lines (run.echo), written to a file here, not a terminal

Epoch 1 holds the compile; the summary is the median over epochs 2..N in ms and as a percentage
of the median epoch. After the loop, the wait for the last checkpoint and the test pass are
shown once. The workload `large` is bench.py's (its plugin `jaxyard_variants.py`, no
checkpoints: as bench.py runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

ORDER = ("compile", "train unalias", "train call", "train dispatch", "train device", "val dispatch", "val device", "host transfer",
         "ckpt gather", "ckpt wait", "ckpt save")


class Clock:
    """Exclusive time per part: a part's time less the parts timed inside it."""

    def __init__(self):
        self.stack: list[list] = []
        self.parts: dict[str, float] = defaultdict(float)
        self.epochs: list[tuple[float, dict[str, float]]] = []  # (wall s, parts) per epoch
        self.epoch_start: float | None = None
        self.phase = "train"
        self.before: dict[str, float] = {}
        self.host_inputs: list[str] = []  # the epoch program's inputs that are not device arrays
        self.after: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        self.stack.append([name, 0.0])
        try:
            yield
        finally:
            _, inner = self.stack.pop()
            dt = time.perf_counter() - t0
            self.parts[name] += dt - inner
            if self.stack:
                self.stack[-1][1] += dt

    def timed(self, name: str, fn):
        def call(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)

        call.__wrapped__ = fn
        return call

    def next_epoch(self, now: float | None = None) -> None:
        """Close the epoch under way (if any) at ``now`` and start the next."""
        now = time.perf_counter() if now is None else now
        if self.epoch_start is not None:
            self.epochs.append((now - self.epoch_start, dict(self.parts)))
        elif not self.epochs:
            self.before = dict(self.parts)  # jaxyard_on_run_start
        self.parts = defaultdict(float)
        self.epoch_start = now


@contextlib.contextmanager
def instrumented(clock: Clock):
    """Wrap the library's loop, transfers, checkpointer and events in this process, for one run."""
    import jax

    from jaxyard.core.store import policy as policy_mod
    from jaxyard.core.store import state as state_mod
    from jaxyard.core.train import fit as fit_mod
    from jaxyard.core.train import loop as loop_mod

    patches: list[tuple[object, str, object]] = []
    undo: list = []

    def patch(owner, name, new):
        patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, new)

    Fit, Loop = fit_mod.Fit, loop_mod.InMemoryLoop
    orig = {name: getattr(Fit, name) for name in ("train", "epoch", "finish_saving", "summarise")}

    def train(self):
        undo.append(wrap_events(clock, self.pm))  # undone when the run is over (its on_run_end timed too)
        self.run.echo = clock.timed("output", self.run.echo)
        storage = getattr(self.policy, "storage", None)
        if storage is not None:
            storage.wait = clock.timed("ckpt wait", storage.wait)
        try:
            seconds = orig["train"](self)
        finally:
            clock.next_epoch()
            clock.epoch_start = None
            clock.parts = clock.after  # what follows the loop: the last save's wait, the test pass
        return seconds

    def epoch(self, number):
        clock.next_epoch()
        return orig["epoch"](self, number)

    def train_epoch(self, epoch, progress=None, _orig=Loop.train_epoch):
        clock.phase = "train"
        with clock.part("train dispatch"):
            sums = _orig(self, epoch, progress)
        if not clock.host_inputs:  # an input left on the host would be copied to the device every epoch
            leaves = jax.tree.leaves((self.b.inputs, loop_mod.as_batch(self.b.data.train)))
            clock.host_inputs = [type(a).__name__ for a in leaves if not isinstance(a, jax.Array)] or ["none"]
        for key, fn in self.compiled.items():  # the compiled call itself, from its second call on
            if not hasattr(fn, "__wrapped__"):
                self.compiled[key] = clock.timed("train call", fn)
        return sums

    def evaluate(self, split, *, ema=False, _orig=Loop.evaluate):
        clock.phase = "val" if split == "val" else split
        with clock.part(f"{clock.phase} dispatch"):
            return _orig(self, split, ema=ema)

    def summarize(built, sums, _orig=fit_mod.summarize):
        with clock.part(f"{clock.phase} device"):
            jax.block_until_ready(sums)
        with clock.part("host transfer"):
            return _orig(built, sums)

    patch(Fit, "train", train)
    patch(Fit, "epoch", epoch)
    patch(Fit, "finish_saving", lambda self: clock.timed("ckpt finish (after the loop)", orig["finish_saving"])(self))
    patch(Fit, "summarise", lambda self, s: clock.timed("test pass and summary", orig["summarise"])(self, s))
    patch(Loop, "train_epoch", train_epoch)
    patch(Loop, "evaluate", evaluate)
    patch(Loop, "_compile", clock.timed("compile", Loop._compile))
    patch(loop_mod, "unalias", clock.timed("train unalias", loop_mod.unalias))
    patch(fit_mod, "summarize", summarize)
    patch(fit_mod, "emit", clock.timed("event dispatch", fit_mod.emit))
    patch(jax, "device_get", clock.timed("host transfer", jax.device_get))
    patch(state_mod, "flatten", clock.timed("ckpt gather", state_mod.flatten))
    patch(policy_mod.CheckpointPolicy, "save", clock.timed("ckpt save", policy_mod.CheckpointPolicy.save))
    try:
        yield
    finally:
        for restore in undo:
            restore()
        for owner, name, old in reversed(patches):
            setattr(owner, name, old)


def wrap_events(clock: Clock, pm):
    """Time each plugin's (non-wrapper) implementation of every jaxyard_on_* event; returns the undo."""
    undo = []
    for name in dir(pm.hook):
        if not name.startswith("jaxyard_on_"):
            continue
        for impl in getattr(pm.hook, name).get_hookimpls():
            if impl.hookwrapper or getattr(impl, "wrapper", False):  # generators: their time stays in "event dispatch"
                continue
            plugin = impl.plugin_name
            label = "loggers" if plugin.startswith("jaxyard.loggers.") else plugin.rpartition(".")[2]
            undo.append((impl, impl.function))
            impl.function = clock.timed(f"event {label}", impl.function)

    def restore():
        for impl, fn in undo:
            impl.function = fn

    return restore


def run_cli(args: list[str], out: Path) -> Clock:
    """``jaxyard ARGS run --out OUT`` in this process, its report written to OUT.log; returns its clock."""
    import cli

    clock = Clock()
    log = out.with_suffix(".log")
    with instrumented(clock), open(log, "w") as fh, contextlib.redirect_stdout(fh):
        try:
            cli.cli.main(args=[*args, "--out", str(out)], prog_name="jaxyard", standalone_mode=False)
        except SystemExit as err:
            if err.code:
                raise SystemExit(f"jaxyard {' '.join(args)} failed ({err.code}); see {log}") from None
    if not clock.epochs:
        raise SystemExit(f"jaxyard {' '.join(args)} ran no epoch; see {log}")
    return clock


def table(title: str, clock: Clock) -> dict:
    """Print the per-epoch parts and the median over epochs 2..N; returns them (ms)."""
    walls = [w for w, _ in clock.epochs]
    names = [n for n in ORDER if any(n in p for _, p in clock.epochs)]
    names += sorted({n for _, p in clock.epochs for n in p} - set(names) - {"event dispatch", "output"})
    names += [n for n in ("event dispatch", "output") if any(n in p for _, p in clock.epochs)]
    rows = {n: [p.get(n, 0.0) * 1e3 for _, p in clock.epochs] for n in names}
    rows["remainder"] = [w * 1e3 - sum(p.values()) * 1e3 for w, p in clock.epochs]
    rows["epoch (wall)"] = [w * 1e3 for w in walls]
    steady = slice(1, None) if len(walls) > 1 else slice(0, None)
    step_parts = [n for n in ("train unalias", "train call", "train dispatch", "train device") if n in rows]
    rows["non-step"] = [w - sum(rows[n][i] for n in step_parts) for i, w in enumerate(rows["epoch (wall)"])]
    med = {n: statistics.median(v[steady]) for n, v in rows.items()}
    base, non_step = med["epoch (wall)"] or 1.0, med["non-step"]
    width = max(len(n) for n in rows) + 2
    print(f"\n== {title}: ms per epoch (epoch 1 includes compiling); median over epochs 2..{len(walls)}")
    head = "".join(f"{f'e{i + 1}':>8}" for i in range(len(walls)))
    print(f"{'part':<{width}}{head}{'median':>9}{'%':>7}")
    for n, values in rows.items():
        if max(abs(v) for v in values) < 0.05:  # a plugin that does nothing per epoch
            continue
        if n == "epoch (wall)":
            print("-" * (width + 8 * len(walls) + 16))
        print(f"{n:<{width}}" + "".join(f"{v:8.1f}" for v in values) + f"{med[n]:9.2f}{100 * med[n] / base:6.1f}%")
    print(f"non-step: the epoch less its train parts ({', '.join(step_parts)}), median {non_step:.2f} ms")
    print(f"inputs of the epoch program not on the device: {', '.join(clock.host_inputs)}")
    if clock.before:
        print("before the loop, once: " + ", ".join(f"{n} {v * 1e3:.1f} ms" for n, v in clock.before.items() if v > 0.00005))
    if clock.after:
        print("after the loop, once: " + ", ".join(f"{n} {v * 1e3:.1f} ms" for n, v in clock.after.items() if v > 0.00005))
    return {"epochs_ms": rows, "median_ms": med, "non_step_ms": non_step, "before_ms": {n: v * 1e3 for n, v in clock.before.items()},
            "after_ms": {n: v * 1e3 for n, v in clock.after.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="default,large", help="comma-separated: default (the `jaxyard run` defaults), seed, large")
    parser.add_argument("--large-epochs", type=int, default=0, help="epochs of `large` (0: its 20)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args()

    import jax

    from bench import workload_config
    from jaxyard_variants import settings

    print(f"backend {jax.default_backend()}: {jax.devices()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads.split(","):
            if workload == "default":
                argv, title = ["run"], "default run (`jaxyard run` with its defaults: checkpoints, jsonl, curves)"
            else:
                epochs = args.large_epochs or None if workload == "large" else None
                cfg = workload_config(workload, None, epochs)
                sets = [a for item in settings(cfg, workload, None, epochs) for a in ("--set", item)]
                argv = ["--plugin", str(HERE / "jaxyard_variants.py"), "run", *sets]
                title = f"workload {workload} ({cfg['samples']} samples, MLP {cfg['hidden']}, {cfg['epochs']} epochs; as bench.py: no checkpoints)"
            clock = run_cli(argv, Path(tmp) / workload)
            results[workload] = table(title, clock)
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": jax.default_backend(), **results}, indent=1))


if __name__ == "__main__":
    main()
