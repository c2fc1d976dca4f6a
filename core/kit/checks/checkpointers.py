"""Checkpointer checks: the storage protocol, bit-exact round trips, steps and delete, refusing to
overwrite, a damaged newest step passed over, and retention through CheckpointPolicy."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxyard.core.kit.harness import CheckSkipped, Failure, Subject, define_check, error_text


def _storage(s: Subject, directory: Path | None = None):
    from jaxyard.core.store.checkpoint import missing_methods

    store = s.create(directory=directory or s.tmp_path / "checkpoints")
    missing = missing_methods(store)
    if missing:
        with contextlib.suppress(Exception):
            store.close()
        raise Failure(f"the object it returns ({type(store).__name__}) lacks {', '.join(missing)}",
                      "implement save, steps, load, delete, wait and close (jaxyard.Checkpointer)")
    return store


@contextlib.contextmanager
def _opened(s: Subject, directory: Path | None = None):
    store = _storage(s, directory)
    try:
        yield store
    finally:
        store.close()


def _arrays(seed: int = 0, *, bfloat16: bool = False) -> dict[str, Any]:
    """Arrays as the engine hands them over: dotted names, host arrays, the usual dtypes and odd values."""
    import numpy as np

    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, np.finfo(np.float32).max, -1.5], np.float32)
    out = {
        "model.layers.0.kernel": rng.normal(size=(3, 4)).astype(np.float32),
        "model.layers.0.bias": special,
        "model.scalar": np.asarray(rng.normal(), np.float32),
        "model.empty": np.zeros((0, 3), np.float32),
        "model.counts": rng.integers(-(2**31), 2**31 - 1, size=(2, 3), dtype=np.int32),
        "optimizer.opt_state.0.count": np.asarray(seed + 7, np.int32),
        "optimizer.opt_state.1.empty": np.zeros((0,), np.int32),
        "rng.dropout.key": rng.integers(0, 2**32 - 1, size=(2,), dtype=np.uint32),
    }
    if bfloat16:
        import ml_dtypes

        out["model.half"] = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf], dtype=ml_dtypes.bfloat16)
        out["model.half_empty"] = np.zeros((0, 2), dtype=ml_dtypes.bfloat16)
    return out


def _meta(step: int, val_loss: float = 1.0, history: list | None = None) -> dict:
    record = {"epoch": step, "step": step, "lr": 0.001, "train_loss": val_loss + 0.1, "train_mae": 0.5, "val_loss": val_loss, "val_mae": 0.25}
    return {"epoch": step, "step": step, "metrics": record, "history": (history or []) + [record], "note": "unicode: é, 日本"}


def _same_arrays(saved: Mapping[str, Any], loaded: Mapping[str, Any]) -> str | None:
    import numpy as np

    if set(saved) != set(loaded):
        return f"keys differ: missing {sorted(set(saved) - set(loaded))}, unexpected {sorted(set(loaded) - set(saved))}"
    for k, a in saved.items():
        b = loaded[k]
        b_arr = np.asarray(b)
        if b_arr.dtype != a.dtype or b_arr.shape != a.shape:
            return f"{k}: saved {a.dtype}{a.shape}, loaded {b_arr.dtype}{b_arr.shape}"
        if a.tobytes() != b_arr.tobytes():
            return f"{k}: the loaded bytes differ from the saved ones ({a!r} vs {b_arr!r})"
    return None


def _save_load(s: Subject, arrays: dict, *, what: str) -> str:
    with _opened(s) as store:
        meta = _meta(5)
        store.save(5, {k: v.copy() for k, v in arrays.items()}, json.loads(json.dumps(meta)))
        store.wait()
        restored = store.load(5)
        _compare_restored(restored, 5, arrays, meta, what=what, where="the same checkpointer")
    with _opened(s) as again:  # another process resuming: a fresh checkpointer on the directory
        if again.steps() != [5]:
            raise Failure(f"a fresh checkpointer on the same directory lists steps {again.steps()}, not [5]",
                          "keep the checkpoints on disk (in `directory`) and list them from there")
        _compare_restored(again.load(5), 5, arrays, meta, what=what, where="a fresh checkpointer on the same directory")
    return f"{len(arrays)} arrays"


def _compare_restored(restored, step: int, arrays: dict, meta: dict, *, what: str, where: str) -> None:
    from jaxyard.core.store.checkpoint import Restored

    if not isinstance(restored, Restored):
        raise Failure(f"load() returned {type(restored).__name__}, not jaxyard.Restored", "return jaxyard.Restored(step, arrays, meta)")
    if restored.step != step or restored.skipped:
        raise Failure(f"load({step}) from {where} returned step {restored.step!r} with skipped {restored.skipped!r}",
                      "return Restored(step, arrays, meta) for exactly the step asked, skipped empty")
    diff = _same_arrays(arrays, restored.arrays)
    if diff:
        raise Failure(f"{what} do not round-trip through save and load ({where}): {diff}",
                      "store the bytes with their dtype and shape and give them back unchanged (zero-size arrays included)")
    if restored.meta != meta:
        raise Failure(f"meta does not round-trip ({where}): saved {meta!r}, loaded {restored.meta!r}",
                      "store meta as JSON and give it back unchanged")


@define_check("checkpointer")
def check_implements_protocol(s: Subject) -> str:
    """factory(params, directory) returns an object with save, steps, load, delete, wait and close; close is idempotent."""
    with _opened(s) as store:
        if store.steps() != []:
            raise Failure(f"a new checkpointer on an empty directory lists steps {store.steps()}", "list only the steps saved")
        name = type(store).__name__
    store.close()  # a second close must be harmless
    return name


@define_check("checkpointer", "full")
def check_roundtrip(s: Subject) -> str:
    """save/load is bit-exact for float32 (inf, nan, -0.0, denormals), int32, uint32 keys, scalars and zero-size
    arrays, and meta, also from a fresh checkpointer."""
    return _save_load(s, _arrays(), what="float32, int32 and uint32 arrays")


@define_check("checkpointer", "full")
def check_roundtrip_bfloat16(s: Subject) -> str:
    """save/load is bit-exact for bfloat16 arrays (a model may keep its parameters in bfloat16)."""
    try:
        import ml_dtypes  # noqa: F401 - only whether it is installed
    except ImportError:
        raise CheckSkipped("ml_dtypes is not installed: no bfloat16 here") from None
    return _save_load(s, _arrays(bfloat16=True), what="bfloat16 arrays")


@define_check("checkpointer", "full")
def check_steps_and_delete(s: Subject) -> None:
    """steps() lists saved steps in ascending numeric order (2, 10, 100); delete removes one; loading a missing step raises CheckpointError."""
    from jaxyard.core.store.checkpoint import CheckpointError

    with _opened(s) as store:
        for step in (2, 10, 100):
            store.save(step, _arrays(step), _meta(step))
        store.wait()
        if store.steps() != [2, 10, 100]:
            raise Failure(f"after saving steps 2, 10 and 100, steps() is {store.steps()}", "return the steps as ints, sorted numerically")
        store.delete(10)
        store.wait()
        if store.steps() != [2, 100]:
            raise Failure(f"after delete(10), steps() is {store.steps()}", "remove the step's data in delete()")
        for missing in (10, 7):
            try:
                store.load(missing)
            except CheckpointError:
                pass
            else:
                raise Failure(f"load({missing}) of a step that is not there returns instead of raising",
                              "raise jaxyard.CheckpointError naming the step")
        diff = _same_arrays(_arrays(100), store.load(100).arrays)
        if diff:
            raise Failure(f"after delete(10), step 100 no longer loads as saved: {diff}", "delete only the step asked")


@define_check("checkpointer", "full")
def check_save_existing_raises(s: Subject) -> None:
    """Saving a step that already holds an intact checkpoint raises CheckpointError (at save, wait or close) and leaves it intact."""
    from jaxyard.core.store.checkpoint import CheckpointError

    with _opened(s) as store:
        store.save(3, _arrays(3), _meta(3))
        store.wait()
        raised = None
        try:
            store.save(3, _arrays(99), _meta(3, 9.0))
            store.wait()
        except CheckpointError as err:
            raised = err
        except Exception as err:
            raise Failure(f"saving step 3 again raises {type(err).__name__}: {error_text(err)}, not CheckpointError",
                          "raise jaxyard.CheckpointError(cause, directory=..., step=...) when the step exists") from err
        if raised is None:
            raise Failure("saving step 3 a second time does not raise", "refuse to overwrite an intact step with jaxyard.CheckpointError")
        diff = _same_arrays(_arrays(3), store.load(3).arrays)
        if diff:
            raise Failure(f"the refused second save changed step 3: {diff}", "a failed save must never damage a step already saved")


def _files(directory: Path) -> dict[Path, tuple[int, int]]:
    out = {}
    if directory.is_dir():
        for path in directory.rglob("*"):
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                out[path] = (stat.st_size, stat.st_mtime_ns)
    return out


@define_check("checkpointer", "full")
def check_damaged_latest_skipped(s: Subject) -> str:
    """With the files written by the newest save removed, CheckpointPolicy.restore('latest') returns the previous
    intact step (file-based storage only)."""
    from jaxyard.core.store.checkpoint import CheckpointError
    from jaxyard.core.store.policy import CheckpointPolicy, Monitor

    directory = s.tmp_path / "checkpoints"
    with _opened(s, directory) as store:
        store.save(1, _arrays(1), _meta(1))
        store.wait()
        before = _files(directory)
        store.save(2, _arrays(2), _meta(2, 0.5, [_meta(1)["metrics"]]))
        store.wait()
        after = _files(directory)
    new = sorted(p for p in after if p not in before)
    if not new:
        raise CheckSkipped(f"the save of step 2 created no file under {directory}: not a file-based storage, nothing generic to damage")
    for path in new:
        path.unlink()
    with _opened(s, directory) as store:
        policy = CheckpointPolicy(store, monitor=Monitor())
        try:
            restored = policy.restore("latest")
        except CheckpointError as err:
            raise Failure(f"with step 2's files removed ({len(new)} files), restore('latest') raises: {err}",
                          "load() of a damaged step must raise CheckpointError, and the other steps must stay loadable") from None
        if restored.step != 1:
            raise Failure(f"with step 2's {len(new)} files removed, restore('latest') returns step {restored.step}, not 1",
                          "load() must verify what it reads and raise jaxyard.CheckpointError for a damaged step")
        diff = _same_arrays(_arrays(1), restored.arrays)
        if diff:
            raise Failure(f"step 1, restored after step 2 was damaged, differs: {diff}", "keep each step's files apart")
    return f"removed {len(new)} files of step 2; skipped {restored.skipped}"


@define_check("checkpointer", "full")
def check_retention(s: Subject) -> str:
    """With CheckpointPolicy(keep_latest=2, keep_best=1) over six saves, the newest two and the best by val_loss
    are kept, and restore('best') gives the best."""
    from jaxyard.core.store.policy import CheckpointPolicy, Monitor

    losses = {1: 0.9, 2: 0.3, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.65}
    directory = s.tmp_path / "checkpoints"
    history: list = []
    with _opened(s, directory) as store:
        policy = CheckpointPolicy(store, monitor=Monitor("val_loss"), keep_latest=2, keep_best=1)
        for step, loss in losses.items():
            meta = _meta(step, loss, list(history))
            history = meta["history"]
            policy.save(step, _arrays(step), meta)
        policy.finish()  # closes the storage
    with _opened(s, directory) as store:
        if store.steps() != [2, 5, 6]:
            raise Failure(f"after six saves with keep_latest=2 and keep_best=1 (best: step 2) "
                          f"a fresh checkpointer lists {store.steps()}, not [2, 5, 6]",
                          "delete(step) must remove the step for good; steps() must list what is on disk")
        best = CheckpointPolicy(store, monitor=Monitor("val_loss")).restore("best")
        if best.step != 2:
            raise Failure(f"restore('best') returns step {best.step}, not 2", "give meta back unchanged from load() (the history ranks the steps)")
    return "kept [2, 5, 6]"
