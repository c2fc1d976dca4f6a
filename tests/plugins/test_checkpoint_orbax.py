"""The orbax checkpointer on real files: round trips, damage, failures, readers beside a writer,
the checksum record it shares with other checkpointers, and its workarounds for orbax's output.
Retention and the latest/best choice are CheckpointPolicy's (tests/store/test_policy.py, and the kit's
checkpointer checks over orbax); here the policy only passes over damage orbax storage reports.

Small arrays and synchronous saves unless a test is about async saving, so the
whole file runs in a few seconds on two CPU cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxyard.core.store.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatch,
    CheckpointWarning,
    Restored,
    compare_structures,
    missing_methods,
    structure_of,
)
from jaxyard.core.store.integrity import checksum_record, read_checksums, verify_checksums
from jaxyard.core.store.policy import CheckpointPolicy, Monitor
from jaxyard.plugins._orbax import MARKER_NAME, OrbaxCheckpointer, quiet
from jaxyard.plugins._orbax.oserrors import save_cause

# When a restore or save fails with other reads/writes in flight, tensorstore used to call
# back into the asyncio loop orbax had already closed ("Event loop is closed" tracebacks
# from a background thread). The checkpointer drains the loop first: any such unraisable
# exception is a failure now.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


# ----------------------------------------------------------------- helpers


def make_arrays(seed: int, *, width: int = 128) -> dict[str, np.ndarray]:
    """A tiny model + optimizer + rng state as the engine flattens it."""
    rng = np.random.default_rng(seed)
    return {
        "model.layers.0.kernel": rng.standard_normal((64, width)).astype(np.float32),
        "model.layers.0.bias": rng.standard_normal((width,)).astype(np.float32),
        "optimizer.opt_state.0.mu.layers.0.kernel": rng.standard_normal((64, width)).astype(np.float32),
        "optimizer.opt_state.0.count": np.array(seed, dtype=np.int32),
        "rng.dropout.key": np.array([seed, 12345], dtype=np.uint32),
    }


def record(step: int, val_loss: float | None = 1.0, **metrics) -> dict:
    """One epoch record of the run's history, as the engine writes it."""
    r = {"epoch": step, "step": step, "train_loss": 2.0, "train_acc": 0.5, **metrics}
    if val_loss is not None:
        r["val_loss"] = val_loss
    return r


def meta_for(history: list[dict]) -> dict:
    """The ``meta`` the engine saves after the last epoch of ``history``."""
    last = history[-1]
    metrics = {k: v for k, v in last.items() if k not in ("epoch", "step")}
    return {"epoch": last["epoch"], "step": last["step"], "metrics": metrics, "history": list(history)}


def make_meta(step: int, val_loss: float | None = 1.0, **metrics) -> dict:
    return meta_for([record(step, val_loss, **metrics)])


def save_all(target, records: list[dict], *, history: list[dict] | None = None) -> list[dict]:
    """Save one step per record (arrays seeded by the step); each meta carries the history so
    far, so ``restore("best")`` can rank. Returns the history."""
    history = list(history or [])
    for r in records:
        history.append(r)
        target.save(r["step"], make_arrays(r["step"]), meta_for(history))
    return history


def policy(d, *, async_save=False, metric="val_loss", keep_latest=10, keep_best=1, **kw) -> CheckpointPolicy:
    storage = OrbaxCheckpointer(d, async_save=async_save, **kw)
    return CheckpointPolicy(storage, monitor=Monitor(metric), keep_latest=keep_latest, keep_best=keep_best)


def assert_bit_exact(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        w = np.asarray(want[k])
        g = got[k]
        assert isinstance(g, np.ndarray), k
        assert g.dtype == w.dtype, k
        assert g.shape == w.shape, k
        assert g.tobytes() == w.tobytes(), k


def saved(tmp_path: pathlib.Path, steps=(1, 2, 3), **kw) -> pathlib.Path:
    """A checkpoint directory holding ``steps`` (val_loss 1/step, saved synchronously, then closed)."""
    d = tmp_path / "ckpt"
    kw.setdefault("async_save", False)
    with OrbaxCheckpointer(d, **kw) as c:
        save_all(c, [record(s, val_loss=1.0 / s) for s in steps])
    return d


def data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The largest file of the step's array item: where the kernels' bytes live."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    big = max(files, key=lambda p: p.stat().st_size)
    assert big.stat().st_size > 20_000, "expected the array data file to hold the kernels"
    return big


def snapshot(d: pathlib.Path) -> dict[str, tuple]:
    """Every path under ``d`` with its size and modification time."""
    return {str(p.relative_to(d)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*")}


def one_line(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text


def assert_quiet(capfd, caplog) -> None:
    """Nothing printed (fd level, so C++ threads too) and nothing logged by orbax (absl)."""
    assert capfd.readouterr().err == ""
    assert [r.getMessage()[:200] for r in caplog.records if r.name == "absl"] == []


# ------------------------------------------------------------ round trips


def test_round_trip_is_bit_exact(tmp_path):
    import jax.numpy as jnp

    arrays = make_arrays(7)
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], dtype=np.float32)
    arrays["model.special"] = special
    as_jax = {k: jnp.asarray(v) for k, v in arrays.items()}  # what the engine hands over
    meta = make_meta(7, val_loss=0.25)
    meta["history"].insert(0, {"epoch": 1, "step": 1, "val_loss": float("nan")})

    c = OrbaxCheckpointer(tmp_path / "ckpt", async_save=False)
    assert isinstance(c, Checkpointer) and missing_methods(c) == []
    c.save(7, as_jax, meta)
    r = c.load(7)
    c.close()

    assert isinstance(r, Restored)
    assert r.step == 7
    assert r.skipped == ()
    assert_bit_exact(r.arrays, arrays)
    assert r.meta["metrics"] == meta["metrics"]
    assert np.isnan(r.meta["history"][0]["val_loss"])
    # a fresh instance (a resumed process) reads the same
    with OrbaxCheckpointer(tmp_path / "ckpt") as c2:
        assert c2.steps() == [7]
        assert_bit_exact(c2.load(7).arrays, arrays)


def test_zero_size_arrays_and_numpy_scalars_in_meta(tmp_path):
    arrays = {"empty": np.zeros((0, 3), np.float32), "x": np.arange(4, dtype=np.int32)}
    with OrbaxCheckpointer(tmp_path / "c", async_save=False) as c:
        c.save(1, arrays, {"epoch": np.int64(1), "metrics": {"val_loss": np.float32(0.5)}})
        r = c.load(1)
    assert_bit_exact(r.arrays, arrays)
    assert r.meta == {"epoch": 1, "metrics": {"val_loss": 0.5}}
    with OrbaxCheckpointer(tmp_path / "d", async_save=False) as c:
        c.save(1, {"only_empty": np.zeros((0,), np.uint32)}, {})
        assert_bit_exact(c.load(1).arrays, {"only_empty": np.zeros((0,), np.uint32)})


def test_async_save_returns_then_wait_makes_it_durable(tmp_path):
    arrays = make_arrays(3, width=512)
    source = {k: v.copy() for k, v in arrays.items()}
    c = OrbaxCheckpointer(tmp_path / "ckpt", async_save=True)
    c.save(5, source, make_meta(5))
    # the caller may reuse its buffers as soon as save() returns
    for v in source.values():
        v[...] = 0
    c.wait()
    assert c.steps() == [5]
    assert not [p for p in (tmp_path / "ckpt").iterdir() if "tmp" in p.name]
    c.save(6, make_arrays(6), make_meta(6))
    c.close()  # close waits too
    with OrbaxCheckpointer(tmp_path / "ckpt") as c2:
        assert c2.steps() == [5, 6]
        assert_bit_exact(c2.load(5).arrays, arrays)
        assert_bit_exact(c2.load(6).arrays, make_arrays(6))


@pytest.mark.parametrize("async_save", [True, False])
def test_every_file_of_a_step_is_fsynced(tmp_path, monkeypatch, async_save):
    """Every file and directory of the finished step, and the checkpoint directory after the step
    appeared in it, by the time wait() returns; asynchronously, the items' files before the step is
    renamed into place. Observed at os.fsync, whoever calls it (orbax does not fsync its JSON items)."""
    d = tmp_path / "ckpt"
    synced: list[tuple[str, bool]] = []  # (path relative to d, with the temporary name made final; step published yet)
    real_fsync = os.fsync

    def fsync(fd):
        path = pathlib.Path(os.readlink(f"/proc/self/fd/{fd}"))
        if d in path.parents or path == d:
            rel = re.sub(r"^4\.orbax-checkpoint-tmp[^/]*", "4", str(path.relative_to(d)) if path != d else ".")
            synced.append((rel, (d / "4").is_dir()))
        return real_fsync(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name an fsynced descriptor")
    with OrbaxCheckpointer(d, async_save=async_save) as c:
        monkeypatch.setattr(os, "fsync", fsync)
        c.save(4, make_arrays(4), make_meta(4))
        c.wait()
        monkeypatch.undo()
    on_disk = {str(p.relative_to(d)) for p in (d / "4").rglob("*")} | {"4"}
    assert on_disk <= {rel for rel, _ in synced}, sorted(on_disk - {rel for rel, _ in synced})
    assert (".", True) in synced  # the rename itself
    if async_save:  # the items before publication: a step that is there holds durable data
        items = {rel for rel in on_disk if rel.split("/")[1:2] in (["state"], ["meta"], ["checksums"])}
        assert items and items <= {rel for rel, published in synced if not published}


def test_save_keeps_no_view_of_jax_buffers(tmp_path):
    """On CPU np.asarray(jax_array) is a view of the device buffer. If the checkpointer (or
    orbax, writing in the background) held on to such a view after save() returned, jax could
    not donate the buffer to the next training step and would silently copy the state instead."""
    import jax
    import jax.numpy as jnp

    want = np.arange(1 << 18, dtype=np.float32)
    x = jnp.asarray(want)
    with OrbaxCheckpointer(tmp_path / "ckpt", async_save=True) as c:
        c.save(1, {"x": x}, {})
        jax.jit(lambda v: v * 0, donate_argnums=0)(x)  # while the save may still be written
        assert x.is_deleted(), "save() kept a view of the buffer: donation fell back to a copy"
        c.wait()
        assert_bit_exact(c.load(1).arrays, {"x": want})


# ------------------------------------------------------------ storage API


def test_keeps_every_step_and_writes_no_metrics(tmp_path):
    d = saved(tmp_path, steps=(1, 2, 3, 4, 5, 6))
    with OrbaxCheckpointer(d) as c:
        assert c.steps() == [1, 2, 3, 4, 5, 6]
    assert not list(d.glob("*/metrics"))
    assert sorted(p.name for p in (d / "6").iterdir() if p.is_dir()) == ["checksums", "meta", "state"]


def test_delete(tmp_path):
    d = saved(tmp_path, steps=(1, 2, 3))
    with OrbaxCheckpointer(d, async_save=False) as c:
        c.delete(2)
        assert c.steps() == [1, 3] and not (d / "2").exists()
        c.delete(2)  # not there: nothing to do
        c.delete(99)
        with pytest.raises(CheckpointError, match="no such checkpoint"):
            c.load(2)
        c.save(2, make_arrays(22), make_meta(2))  # the step can be saved again
        assert_bit_exact(c.load(2).arrays, make_arrays(22))
        _flip(d / "3")
        c.delete(3)  # damaged steps are deleted like any other
        assert c.steps() == [1, 2]
    assert (d / MARKER_NAME).is_file()


def test_delete_a_pending_save_waits_for_it(tmp_path):
    with OrbaxCheckpointer(tmp_path / "ckpt", async_save=True) as c:
        c.save(1, make_arrays(1, width=512), make_meta(1))
        c.delete(1)
        assert c.steps() == []
        assert not list((tmp_path / "ckpt").glob("1*"))


def test_delete_sees_steps_saved_by_another_process(tmp_path):
    d = saved(tmp_path, steps=(1,))
    with OrbaxCheckpointer(d) as reader, OrbaxCheckpointer(d, async_save=False) as writer:
        writer.save(2, make_arrays(2), make_meta(2))
        assert reader.steps() == [1, 2]
        assert_bit_exact(reader.load(2).arrays, make_arrays(2))
        reader.delete(2)
        assert writer.steps() == [1]


def test_delete_failure_is_a_checkpoint_error(tmp_path, monkeypatch):
    d = saved(tmp_path, steps=(1, 2))
    with OrbaxCheckpointer(d) as c:

        def fail(step):
            raise PermissionError(13, "Permission denied", str(d / str(step)))

        monkeypatch.setattr(c._mgr, "delete", fail)
        with pytest.raises(CheckpointError) as info:
            c.delete(1)
        msg = str(info.value)
        assert one_line(msg) and info.value.step == 1 and str(d) in msg
        assert "could not delete" in msg and "Permission denied" in msg
        assert c.steps() == [1, 2]


# ------------------------------------------------- readers beside a writer


def test_opening_and_reading_never_change_the_directory(tmp_path):
    """``jaxyard eval RUN`` while RUN trains: the reader must not touch the writer's save in
    progress (orbax's own tmp cleanup on opening deleted it and killed the training run)."""
    d = saved(tmp_path, steps=(1, 2))
    in_progress = d / "3.orbax-checkpoint-tmp-1234567"  # another live process writing step 3
    shutil.copytree(d / "2", in_progress)
    before = snapshot(d)

    reader = OrbaxCheckpointer(d)
    assert reader.steps() == [1, 2]
    assert_bit_exact(reader.load(2).arrays, make_arrays(2))
    r = CheckpointPolicy(reader, monitor=Monitor("val_loss")).restore("best")
    assert (r.step, r.skipped) == (2, ())
    reader.close()
    assert snapshot(d) == before

    # the first save of a process is a writer's: leftovers of killed saves go then
    with OrbaxCheckpointer(d, async_save=False) as writer:
        assert in_progress.exists()
        writer.save(4, make_arrays(4), make_meta(4))
        assert not in_progress.exists()
        assert writer.steps() == [1, 2, 4]


def test_existing_empty_directory_is_marked_by_the_first_save(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    with OrbaxCheckpointer(d) as c:
        assert c.steps() == []
    assert list(d.iterdir()) == []
    with OrbaxCheckpointer(d, async_save=False) as c:
        c.save(1, make_arrays(1), make_meta(1))
    assert json.loads((d / MARKER_NAME).read_text())["format"] == "jaxyard.orbax"


def test_killed_mid_save_leaves_earlier_steps_intact(tmp_path):
    """SIGKILL after all of step 3 is written but before orbax renames it into place."""
    d = tmp_path / "ckpt"
    code = textwrap.dedent(
        """
        import os, signal, sys
        import numpy as np
        from jaxyard.plugins._orbax import OrbaxCheckpointer, durable
        c = OrbaxCheckpointer(sys.argv[1], async_save=True)
        for step in (1, 2, 3):
            if step == 3:  # the background fsync of the finished temporary directory
                durable.fsync_tree = lambda root: os.kill(os.getpid(), signal.SIGKILL)
            c.save(step, {"w": np.full(50_000, step, np.float32)}, {"step": step})
            c.wait()
        """
    )
    out = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, timeout=90)
    assert out.returncode == -9, out.stderr[-2000:]
    assert list(d.glob("3.orbax-checkpoint-tmp*")), sorted(p.name for p in d.iterdir())

    p = CheckpointPolicy(OrbaxCheckpointer(d, async_save=False), monitor=Monitor())
    assert p.storage.steps() == [1, 2]
    r = p.restore("latest")
    assert (r.step, r.skipped) == (2, ())
    assert np.all(r.arrays["w"] == 2)
    p.save(3, {"w": np.full(50_000, 3, np.float32)}, {"step": 3})
    p.finish()
    assert sorted(p.name for p in d.iterdir()) == ["1", "2", "3", MARKER_NAME]


# ------------------------------------------------------ failures and retention


@pytest.mark.parametrize("async_save", [False, True])
def test_failed_save_deletes_nothing(tmp_path, disk_full, async_save, capfd, caplog):
    d = saved(tmp_path, steps=(1, 2))
    p = policy(d, async_save=async_save, keep_latest=2, keep_best=0)
    p.records = {1: record(1), 2: record(2)}
    capfd.readouterr()
    disk_full()
    with pytest.raises(CheckpointError) as info:
        p.save(3, _too_big(3), make_meta(3))  # on success, retention would then drop step 1
        p.save(4, make_arrays(4), make_meta(4))  # async: the failure is reported here
    msg = str(info.value)
    assert one_line(msg) and "step 3" in msg and "saving failed: File too large (EFBIG)" in msg and "left in place" in msg
    assert_quiet(capfd, caplog)
    assert p.storage.steps() == [1, 2]
    r = p.restore("latest")
    assert (r.step, r.skipped) == (2, ())
    assert_bit_exact(p.restore(1).arrays, make_arrays(1))

    # room again: saving and retention go on as if the failure never happened
    disk_full(False)
    p.save(3, _too_big(3), make_meta(3))
    p.save(4, make_arrays(4), make_meta(4))
    p.finish()
    assert sorted(x.name for x in d.iterdir() if x.is_dir()) == ["3", "4"]


# ----------------------------------------------------------------- damage


def _truncate(step_dir):
    f = data_file(step_dir)
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)


def _empty(step_dir):
    data_file(step_dir).write_bytes(b"")


def _flip(step_dir):
    """4 bytes flipped at a quarter, half and three quarters of the step's data file: a file may hold
    bytes a restore never reads (once in a full suite the middle alone left step 1 restorable)."""
    f = data_file(step_dir)
    data = bytearray(f.read_bytes())
    for at in (len(data) // 4, len(data) // 2, 3 * len(data) // 4):
        for i in range(at, at + 4):
            data[i] ^= 0xFF
    f.write_bytes(bytes(data))


def _break_json(path):
    text = path.read_text()
    assert text.strip().startswith("{")
    path.write_text(text[: len(text) // 2])


def _edit_json(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _another_steps_directory(step_dir):
    shutil.rmtree(step_dir)
    shutil.copytree(step_dir.parent / "2", step_dir)


DAMAGE = {
    "truncate data file": _truncate,
    "empty data file": _empty,
    "flip bytes in array data": _flip,
    "delete state item": lambda d: shutil.rmtree(d / "state"),
    "delete meta item": lambda d: shutil.rmtree(d / "meta"),
    "delete checksums item": lambda d: shutil.rmtree(d / "checksums"),
    "break meta JSON": lambda d: _break_json(d / "meta" / "metadata"),
    "break checksums JSON": lambda d: _break_json(d / "checksums" / "metadata"),
    "break array metadata JSON": lambda d: _break_json(d / "state" / "_METADATA"),
    # resume used to continue with the edited values, silently
    "edit a meta value (val_loss)": lambda d: _edit_json(d / "meta" / "metadata", lambda m: m["metrics"].update(val_loss=1e-9)),
    "edit meta epoch": lambda d: _edit_json(d / "meta" / "metadata", lambda m: m.update(epoch=99)),
    "edit the history in meta": lambda d: _edit_json(d / "meta" / "metadata", lambda m: m["history"][0].update(val_loss=0.0)),
    "edit the checksum record's step": lambda d: _edit_json(d / "checksums" / "metadata", lambda m: m.update(step=2)),
    "edit an array crc in the checksum record": lambda d: _edit_json(
        d / "checksums" / "metadata", lambda m: m["arrays"]["model.layers.0.bias"].update(crc32=0)
    ),
    "another step's directory in its place": _another_steps_directory,
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_newest_is_passed_over(tmp_path, damage):
    d = saved(tmp_path)
    DAMAGE[damage](d / "3")

    p = policy(d)
    assert p.storage.steps() == [1, 2, 3]
    r = p.restore("latest")
    assert r.step == 2
    assert_bit_exact(r.arrays, make_arrays(2))
    assert r.meta["step"] == 2
    assert len(r.skipped) == 1
    step, cause = r.skipped[0]
    assert step == 3
    assert cause and one_line(cause)
    if damage == "flip bytes in array data":
        assert "checksum mismatch" in cause  # orbax itself reads the bytes back silently
    if damage.startswith("edit") and "meta" in damage:
        assert cause == "checksum mismatch for meta: edited or corrupted on disk"
    if damage == "edit the checksum record's step" or "crc in the checksum record" in damage:
        assert "checksum mismatch for the checksum record" in cause
    if damage == "another step's directory in its place":
        assert "holds step 2, not 3" in cause

    for load in (p.storage.load, p.restore):
        with pytest.raises(CheckpointError) as info:
            load(3)
        msg = str(info.value)
        assert one_line(msg)
        # the same kind of cause (which array fails first may vary: reads are parallel)
        assert "step 3" in msg and str(d) in msg and cause.split(":")[0] in msg
        assert info.value.step == 3

    assert p.restore(2).step == 2
    p.close()
    # nothing was deleted by looking at it
    assert sorted(x.name for x in d.iterdir() if x.is_dir()) == ["1", "2", "3"]


def test_damage_found_by_the_instance_that_saved(tmp_path):
    d = tmp_path / "ckpt"
    p = policy(d, async_save=True, keep_latest=3, keep_best=0)
    save_all(p, [record(s) for s in (1, 2, 3)])
    p.storage.wait()
    _flip(d / "3")
    r = p.restore("latest")
    assert (r.step, [s for s, _ in r.skipped]) == (2, [3])
    # a whole step directory vanishing is not damage of an existing checkpoint
    shutil.rmtree(d / "3")
    r = p.restore("latest")
    assert (r.step, r.skipped) == (2, ())
    # and the checkpointer keeps working: saving again with retention
    save_all(p, [record(s) for s in (4, 5, 6)])
    p.finish()
    assert sorted(x.name for x in d.iterdir() if x.is_dir()) == ["4", "5", "6"]


def test_damaged_best_is_passed_over_to_the_next_best(tmp_path):
    d = tmp_path / "ckpt"
    skipped = []
    p = policy(d)
    p.on_skip = lambda step, cause: skipped.append(step)
    save_all(p, [record(1, 0.5), record(2, 0.1), record(3, 0.3), record(4, 0.9)])  # best 2, then 3
    p.storage.wait()
    _flip(d / "2")
    r = p.restore("best")
    assert r.step == 3 and [s for s, _ in r.skipped] == [2] and "checksum mismatch" in r.skipped[0][1]
    assert_bit_exact(r.arrays, make_arrays(3))
    assert skipped == [2]
    p.close()


def test_legacy_metrics_item_is_ignored(tmp_path):
    # steps written by earlier versions hold orbax's metrics file; orbax reads every one of
    # them when a directory is opened and raises on a broken one -- it must not be read at all
    d = saved(tmp_path)
    for s in (1, 2, 3):
        (d / str(s) / "metrics").mkdir()
        (d / str(s) / "metrics" / "metrics").write_text('{"val_loss": 0.')
    p = policy(d)
    assert (p.restore("latest").step, p.restore("best").step) == (3, 3)
    save_all(p, [record(4, 0.01)], history=p.restore("latest").meta["history"])
    p.storage.delete(1)
    assert p.storage.steps() == [2, 3, 4]
    p.close()


def test_every_checkpoint_damaged(tmp_path):
    d = saved(tmp_path, steps=(1, 2))
    _flip(d / "1")
    shutil.rmtree(d / "2" / "meta")
    p = policy(d)
    with pytest.raises(CheckpointError) as info:
        p.restore("latest")
    p.close()
    msg = str(info.value)
    assert one_line(msg)
    assert "no intact checkpoint" in msg and "step 2:" in msg and "step 1:" in msg and str(d) in msg


def test_no_checkpoints_yet(tmp_path):
    p = policy(tmp_path / "ckpt")
    assert p.storage.steps() == []
    with pytest.raises(CheckpointError, match="no checkpoints saved yet"):
        p.restore("latest")
    with pytest.raises(CheckpointError) as info:
        p.storage.load(5)
    assert str(info.value) == f"checkpoint step 5 in {tmp_path / 'ckpt'}: no such checkpoint (steps on disk: none)"
    p.save(1, make_arrays(1), make_meta(1, val_loss=None))
    with pytest.raises(CheckpointError, match="'val_loss'"):
        p.restore("best")
    with pytest.raises(ValueError):
        p.restore("newest")
    p.finish()


def test_saving_a_damaged_step_again_moves_it_aside(tmp_path):
    d = saved(tmp_path)
    _flip(d / "3")
    notes: list[str] = []
    with OrbaxCheckpointer(d, warn=notes.append, async_save=True) as c:
        c.save(3, make_arrays(33), make_meta(3))  # training reached step 3 again
        c.wait()
        r = c.load(3)
        assert_bit_exact(r.arrays, make_arrays(33))
    assert (d / "3.damaged").is_dir()  # kept for inspection, not deleted
    assert len(notes) == 1 and one_line(notes[0])
    assert "step 3" in notes[0] and "checksum mismatch" in notes[0] and "3.damaged" in notes[0]


def test_save_is_never_silently_skipped(tmp_path):
    # orbax's save() returns False without saving for a step below the latest
    # one (and while a save is in progress) unless forced
    with OrbaxCheckpointer(tmp_path / "ckpt", async_save=True) as c:
        c.save(20, make_arrays(20), make_meta(20))
        c.save(10, make_arrays(10), make_meta(10))
        c.save(30, make_arrays(30), make_meta(30))
        c.wait()
        assert c.steps() == [10, 20, 30]
        assert_bit_exact(c.load(10).arrays, make_arrays(10))


def test_saving_an_intact_step_again_is_refused(tmp_path):
    d = saved(tmp_path, steps=(1,))
    with OrbaxCheckpointer(d, async_save=False) as c:
        with pytest.raises(CheckpointError, match="already exists"):
            c.save(1, make_arrays(9), make_meta(1))
        assert_bit_exact(c.load(1).arrays, make_arrays(1))


# --------------------------------------------------- directories and disks


def test_directory_from_another_tool_is_refused(tmp_path):
    d = tmp_path / "ckpt"
    (d / "7").mkdir(parents=True)  # looks like an orbax step to orbax
    (d / "7" / "weights.bin").write_bytes(b"\x00" * 100)
    (d / "model.pt").write_bytes(b"torch")
    before = snapshot(d)
    with pytest.raises(CheckpointError) as info:
        OrbaxCheckpointer(d)
    msg = str(info.value)
    assert one_line(msg)
    assert str(d) in msg and "not created by jaxyard" in msg and "'model.pt'" in msg
    assert snapshot(d) == before


def test_marker_of_another_format_is_refused(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / MARKER_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="another format"):
        OrbaxCheckpointer(d)


def registered_orbax(directory, *, async_save=False):
    """The ``orbax`` checkpointer as a run creates it: through the plugin's registered factory."""
    from jaxyard.plugins import checkpointers as plugin

    registered = {}
    plugin.jaxyard_register_checkpointers(lambda name, factory, params: registered.__setitem__(name, (factory, params)))
    factory, params_cls = registered["orbax"]
    return factory(params_cls(async_save=async_save), directory=directory)


def test_notes_reach_the_user_as_warnings(tmp_path):
    """What the checkpointer worked around is a CheckpointWarning (stderr, unless filtered), not
    dropped: a run's checkpointer comes from the factory, which used to pass no ``warn``."""
    d = saved(tmp_path, steps=(1, 3))
    (d / MARKER_NAME).write_text("{not json")
    with pytest.warns(CheckpointWarning) as unreadable:
        c = registered_orbax(d)
    [note] = [str(w.message) for w in unreadable]
    assert one_line(note) and note.startswith(f"{d / MARKER_NAME} is unreadable (JSONDecodeError: ")
    assert note.endswith("); using the directory anyway")
    _flip(d / "3")
    with pytest.warns(CheckpointWarning) as moved:
        c.save(3, make_arrays(33), make_meta(3))
    c.close()
    [note] = [str(w.message) for w in moved]
    assert one_line(note) and note.startswith(f"checkpoint step 3 in {d} was damaged (checksum mismatch for array ")
    assert note.endswith("; moved it to 3.damaged and saving again")


def test_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "ckpt"
    f.write_text("not a directory")
    with pytest.raises(CheckpointError, match="not a directory"):
        OrbaxCheckpointer(f)
    with pytest.raises(CheckpointError, match="cannot use the directory"):
        OrbaxCheckpointer(f / "sub")
    assert f.read_text() == "not a directory"


@contextlib.contextmanager
def _without_root():
    """Run the block with file permissions enforced. As root (CI containers), the effective user id
    of the whole process, orbax's and tensorstore's threads included, is an unprivileged one until
    the block ends."""
    if os.name != "posix":
        pytest.skip("POSIX file permissions")
    if os.geteuid() != 0:
        yield
        return
    try:
        os.seteuid(65534)  # nobody
    except OSError as exc:
        pytest.skip(f"cannot drop root privileges here: {exc}")
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def shared_tmp(tmp_path):
    """A temporary directory an unprivileged user can read (pytest's own are root's alone under root)."""
    import tempfile

    root = pathlib.Path(tempfile.mkdtemp(prefix="jaxyard-unwritable-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_unwritable_directory(shared_tmp):
    d = saved(shared_tmp, steps=(1, 2))
    os.chmod(d, 0o555)
    try:
        with _without_root():
            c = OrbaxCheckpointer(d, async_save=False)
            with pytest.raises(CheckpointError) as info:
                c.save(3, make_arrays(3), make_meta(3))
            assert one_line(str(info.value)) and "step 3" in str(info.value) and "Permission denied" in str(info.value)
            assert c.steps() == [1, 2]
            assert c.load(2).step == 2
            with pytest.raises(CheckpointError, match="could not delete"):
                c.delete(1)
            c.close()
            with pytest.raises(CheckpointError, match="cannot use the directory"):
                OrbaxCheckpointer(d / "new")
    finally:
        os.chmod(d, 0o755)
    assert sorted(p.name for p in d.iterdir()) == ["1", "2", MARKER_NAME]


@pytest.fixture
def disk_full():
    """``disk_full(True)`` makes every file write past 64 KiB fail (EFBIG), as a
    full disk would; ``disk_full(False)`` frees the disk again."""
    resource = pytest.importorskip("resource")
    import signal

    if not hasattr(resource, "RLIMIT_FSIZE") or not hasattr(signal, "SIGXFSZ"):
        pytest.skip("needs RLIMIT_FSIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def switch(full: bool = True):
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024 if full else soft, hard))

    yield switch
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, old_handler)


def _too_big(seed):
    return {"big": np.random.default_rng(seed).standard_normal(200_000).astype(np.float32)}


@pytest.mark.parametrize("async_save", [False, True])
def test_disk_full_during_save_keeps_older_checkpoints(tmp_path, disk_full, async_save, capfd, caplog):
    d = saved(tmp_path, steps=(1, 2))
    c = OrbaxCheckpointer(d, async_save=async_save)
    capfd.readouterr()
    disk_full()
    with pytest.raises(CheckpointError) as info:
        c.save(3, _too_big(3), make_meta(3))
        c.wait()
    msg = str(info.value)
    assert one_line(msg)
    # the cause (RLIMIT_FSIZE's EFBIG standing in for ENOSPC) is named, not cut off after orbax's paths
    assert msg == f"checkpoint step 3 in {d}: saving failed: File too large (EFBIG); earlier checkpoints were left in place"
    assert_quiet(capfd, caplog)
    assert not list(d.glob("3.orbax-checkpoint-tmp*"))  # the half-written step gave its space back
    assert c.steps() == [1, 2]
    assert_bit_exact(c.load(1).arrays, make_arrays(1))
    assert_bit_exact(c.load(2).arrays, make_arrays(2))

    # room again: the failed step can be saved, and old steps deleted, as if nothing happened
    disk_full(False)
    c.save(3, _too_big(3), make_meta(3))
    c.wait()
    c.delete(1)
    assert c.steps() == [2, 3]
    c.close()


def test_background_failure_is_reported_by_the_next_save(tmp_path, disk_full, capfd, caplog):
    d = saved(tmp_path, steps=(1,))
    c = OrbaxCheckpointer(d, async_save=True)
    capfd.readouterr()
    disk_full()
    c.save(2, _too_big(2), make_meta(2))  # returns; the write fails in the background
    with pytest.raises(CheckpointError) as info:
        c.save(3, make_arrays(3), make_meta(3))
    msg = str(info.value)
    assert one_line(msg)
    assert "step 2" in msg and "saving failed: File too large (EFBIG)" in msg and "step 3, which was not saved" in msg
    assert c.steps() == [1]
    c.close()
    assert_quiet(capfd, caplog)
    with OrbaxCheckpointer(d) as c2:
        assert c2.steps() == [1]
        assert_bit_exact(c2.load(1).arrays, make_arrays(1))


def test_load_during_a_failing_background_save(tmp_path, disk_full):
    d = saved(tmp_path, steps=(1,))
    c = OrbaxCheckpointer(d, async_save=True)
    disk_full()
    c.save(2, _too_big(2), make_meta(2))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        c.load(2)  # waits for the save; its failure does not stop loading
    assert_bit_exact(c.load(1).arrays, make_arrays(1))
    disk_full(False)
    with pytest.raises(CheckpointError, match="step 2"):
        c.close()  # ... but is reported, here by close()
    c.close()  # closed now: nothing more to report


def test_step_directory_deleted_behind_its_back(tmp_path):
    d = tmp_path / "ckpt"
    p = policy(d, keep_latest=2, keep_best=0)
    save_all(p, [record(1), record(2)])
    shutil.rmtree(d / "1")
    save_all(p, [record(3), record(4)])
    p.finish()
    assert sorted(x.name for x in d.iterdir() if x.is_dir()) == ["3", "4"]


def test_unwritable_directory_does_not_hang_the_process(tmp_path):
    """A step directory that cannot be created must fail save() promptly; orbax
    creating it in the background left threads waiting 5 minutes at exit."""
    code = textwrap.dedent(
        """
        import os, pathlib, sys
        import numpy as np
        from jaxyard.core.store.checkpoint import CheckpointError
        from jaxyard.plugins._orbax import OrbaxCheckpointer
        d = pathlib.Path(sys.argv[1]) / "ckpt"
        c = OrbaxCheckpointer(d, async_save=True)
        c.save(1, {"a": np.ones(100, np.float32)}, {})
        c.wait()
        os.rename(d, d.with_name("moved"))
        d.write_text("a file where the directory was")  # mkdir inside fails, even as root
        try:
            c.save(2, {"a": np.ones(100, np.float32)}, {})
            c.wait()
        except CheckpointError as e:
            print("CheckpointError:", e)
        try:
            c.close()
        except CheckpointError:
            pass
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CheckpointError: checkpoint step 2" in out.stdout
    assert (tmp_path / "moved" / "1").is_dir()


# ----------------------------------------------------------- bad arguments


def test_bad_arguments_are_checkpoint_errors(tmp_path):
    import jax

    with OrbaxCheckpointer(tmp_path / "ckpt", async_save=False) as c:
        with pytest.raises(CheckpointError, match="not JSON-serializable"):
            c.save(1, make_arrays(1), {"f": object()})
        with pytest.raises(CheckpointError, match="key_data"):
            c.save(1, {"rng": jax.random.key(0)}, {})
        with pytest.raises(CheckpointError, match="step must be"):
            c.save(-1, make_arrays(1), {})
        with pytest.raises(CheckpointError, match="keys must be"):
            c.save(1, {"": np.zeros(2)}, {})
        with pytest.raises(CheckpointError, match="step must be an integer"):
            c.load("latest")
        with pytest.raises(CheckpointError, match="step must be an integer"):
            c.delete(True)
        assert c.steps() == []
    for closed in (lambda: c.save(1, make_arrays(1), {}), lambda: c.load(1), lambda: c.delete(1)):
        with pytest.raises(CheckpointError, match="closed"):
            closed()
    c.close()  # idempotent


# ------------------------------------------------------ structures, errors


def test_compare_structures_messages():
    expected = {
        "model.layers.0.kernel": ((784, 512), np.dtype("float32")),
        "model.layers.1.kernel": ((512, 10), "float32"),
        "model.layers.2.kernel": ((128, 10), np.float32),
        "model.layers.1.bias": ((10,), "float32"),
    }
    saved_ = {
        "model.layers.0.kernel": ((784, 256), "float32"),
        "model.layers.1.kernel": ((512, 10), "float16"),
        "model.layers.1.bias": ((10,), np.dtype("float32")),
        "model.layers.3.bias": ((10,), "float32"),
    }
    assert compare_structures(expected, saved_) == [
        "shape differs: model.layers.0.kernel saved (784, 256) vs expected (784, 512)",
        "dtype differs: model.layers.1.kernel saved float16 vs expected float32",
        "missing in checkpoint: model.layers.2.kernel (128, 10)",
        "unexpected in checkpoint: model.layers.3.bias (10,)",
    ]
    assert compare_structures(expected, expected) == []


def test_structure_of_matches_jax_shapes_and_restored_arrays(tmp_path):
    import jax
    import jax.numpy as jnp

    arrays = make_arrays(1)
    assert structure_of(arrays)["model.layers.0.kernel"] == ((64, 128), np.dtype("float32"))
    assert structure_of(arrays)["optimizer.opt_state.0.count"] == ((), np.dtype("int32"))
    # what the engine expects (abstract jax shapes) vs what a checkpoint holds
    abstract = {k: jax.ShapeDtypeStruct(v.shape, jnp.dtype(v.dtype)) for k, v in arrays.items()}
    with OrbaxCheckpointer(tmp_path / "ckpt", async_save=False) as c:
        c.save(1, arrays, {})
        restored = c.load(1).arrays
    assert compare_structures(structure_of(abstract), structure_of(restored)) == []
    wider = {**abstract, "model.layers.0.bias": jax.ShapeDtypeStruct((256,), jnp.float32)}
    assert compare_structures(structure_of(wider), structure_of(restored)) == [
        "shape differs: model.layers.0.bias saved (128,) vs expected (256,)"
    ]


def test_error_messages_are_one_line():
    e = CheckpointError("checksum mismatch\nsecond line", directory="/runs/a/checkpoints", step=300)
    assert str(e) == "checkpoint step 300 in /runs/a/checkpoints: checksum mismatch second line"
    assert (e.step, e.directory) == (300, "/runs/a/checkpoints")
    assert str(CheckpointError("boom", directory="/d")) == "checkpoint directory /d: boom"
    diffs = [f"missing in checkpoint: w{i} (2,)" for i in range(8)]
    m = CheckpointMismatch(diffs, directory="/d", step=5)
    assert isinstance(m, CheckpointError)
    assert m.differences == tuple(diffs)
    assert one_line(str(m))
    assert str(m).startswith("checkpoint step 5 in /d: saved arrays do not match the expected structure (8 differences): ")
    assert "w4" in str(m) and "w5" not in str(m) and "and 3 more" in str(m)


# ------------------------------------------------------------- the plugin


def test_modules_import_without_jax_orbax_numpy():
    code = textwrap.dedent(
        """
        import sys
        import jaxyard, jaxyard.core.registry.params
        heavy = ("jax", "orbax", "numpy")
        before = {m for m in heavy if m in sys.modules}
        import jaxyard.core.store.checkpoint
        import jaxyard.core.store.integrity
        import jaxyard.core.store.policy
        import jaxyard.plugins.checkpointers
        after = {m for m in heavy if m in sys.modules}
        print(sorted(after - before))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_plugin_registers_orbax_and_none(tmp_path):
    import attrs

    from jaxyard.plugins import checkpointers as plugin

    registered = {}
    plugin.jaxyard_register_checkpointers(
        lambda name, factory, params: registered.__setitem__(name, (factory, params))
    )
    assert set(registered) == {"orbax", "none"}

    factory, params_cls = registered["orbax"]
    assert [f.name for f in attrs.fields(params_cls)] == ["async_save"]
    c = factory(params_cls(async_save=False), directory=tmp_path / "ckpt")
    assert isinstance(c, OrbaxCheckpointer) and isinstance(c, Checkpointer) and not c.async_save
    save_all(c, [record(1), record(2)])
    assert c.steps() == [1, 2]  # storage only: retention is CheckpointPolicy's
    c.close()
    with factory(params_cls(), directory=tmp_path / "ckpt2") as c:
        assert c.async_save

    factory, params_cls = registered["none"]
    n = factory(params_cls(), directory=tmp_path / "nothing")
    assert isinstance(n, Checkpointer) and missing_methods(n) == []
    n.save(1, make_arrays(1), make_meta(1))
    n.wait()
    assert n.steps() == []
    n.delete(1)
    with pytest.raises(CheckpointError, match="saved no checkpoints") as info:
        n.load(1)
    assert one_line(str(info.value))
    with pytest.raises(CheckpointError, match="no checkpoints saved yet"):
        CheckpointPolicy(n, monitor=Monitor()).restore("latest")
    n.close()
    assert not (tmp_path / "nothing").exists()


# --------------------------------------------- checksum record (version 2)


GOLDEN_ARRAYS = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "e": np.zeros((0,), np.uint8)}
GOLDEN_META = {"epoch": 1, "metrics": {"val_loss": 0.25}}
# written by the orbax checkpointer before the record moved to jaxyard.core.store.integrity: the same
# bytes now, so checkpoints written before and after verify alike
GOLDEN_RECORD = {
    "format": "jaxyard.orbax", "version": 2, "algorithm": "crc32", "step": 3, "meta_crc32": 1450595056,
    "arrays": {"w": {"shape": [2, 3], "dtype": "float32", "crc32": 2447872023, "stored": True},
               "e": {"shape": [0], "dtype": "uint8", "crc32": 0, "stored": False}},
    "record_crc32": 4167041971,
}


def test_checksum_record_is_unchanged_and_verifies():
    record = checksum_record(3, GOLDEN_ARRAYS, GOLDEN_META)
    assert json.dumps(record) == json.dumps(GOLDEN_RECORD)  # key order included
    verify_checksums(json.loads(json.dumps(record)), 3, GOLDEN_ARRAYS, GOLDEN_META)
    fortran = {"w": np.asfortranarray(GOLDEN_ARRAYS["w"]), "e": GOLDEN_ARRAYS["e"]}
    verify_checksums(record, 3, fortran, GOLDEN_META)  # the bytes in C order, whatever the layout
    # meta as it reads back from JSON: a tuple is a list, an integer key a string
    odd = {"pair": (1, 2), "by_epoch": {2: 0.5, 10: 0.25}}
    verify_checksums(checksum_record(3, {}, odd), 3, {}, json.loads(json.dumps(odd)))


def _changed(change):
    record = json.loads(json.dumps(GOLDEN_RECORD))
    change(record)
    return record


VERIFY_FAILURES = {
    "a flipped byte": (GOLDEN_RECORD, 3, {**GOLDEN_ARRAYS, "w": GOLDEN_ARRAYS["w"] + 1}, GOLDEN_META,
                       "checksum mismatch for array 'w': data corrupted on disk"),
    "another step's record": (GOLDEN_RECORD, 4, GOLDEN_ARRAYS, GOLDEN_META,
                              "the checkpoint holds step 3, not 4: its directory was renamed or copied from step 3"),
    "an edited meta": (GOLDEN_RECORD, 3, GOLDEN_ARRAYS, {**GOLDEN_META, "epoch": 2}, "checksum mismatch for meta: edited or corrupted on disk"),
    "a missing array": (GOLDEN_RECORD, 3, {"w": GOLDEN_ARRAYS["w"]}, GOLDEN_META,
                        "the arrays do not match the checksum record: missing e"),
    "another dtype": (GOLDEN_RECORD, 3, {**GOLDEN_ARRAYS, "w": GOLDEN_ARRAYS["w"].astype(np.float64)}, GOLDEN_META,
                      "array 'w' has dtype float64, checksum record says float32"),
    "an edited record": (_changed(lambda r: r["arrays"]["w"].update(crc32=1)), 3, GOLDEN_ARRAYS, GOLDEN_META,
                         "checksum mismatch for the checksum record: edited or corrupted on disk"),
    "no record": (None, 3, GOLDEN_ARRAYS, GOLDEN_META, "checksum record is malformed: not a JSON object with an 'arrays' object"),
}


@pytest.mark.parametrize("case", list(VERIFY_FAILURES), ids=list(VERIFY_FAILURES))
def test_verify_checksums_names_the_damage(case):
    record, step, arrays, meta, cause = VERIFY_FAILURES[case]
    with pytest.raises(CheckpointError) as info:
        verify_checksums(record, step, arrays, meta, directory="/runs/a/checkpoints")
    assert str(info.value) == f"checkpoint step {step} in /runs/a/checkpoints: {cause}"


def test_checksum_record_in_parts():
    """What a checkpointer that loads in parts uses: the arrays to read, the zero-size ones rebuilt."""
    checksums = read_checksums(GOLDEN_RECORD, 3)
    assert checksums.stored() == ["w"]
    assert_bit_exact(checksums.unstored(), {"e": GOLDEN_ARRAYS["e"]})
    checksums.check_meta(GOLDEN_META)
    with pytest.raises(CheckpointError, match="meta is not JSON"):
        checksums.check_meta({"f": object()})
    with pytest.raises(CheckpointError, match=r"checkpoint step 3: meta is not JSON-serializable: TypeError: Object of type object"):
        checksum_record(3, {}, {"f": object()})


def test_the_npz_example_checkpointer_verifies_its_checksums(tmp_path):
    """tests/plugins_local/npz_checkpointer.py, the README's storage-only checkpointer, through the
    same record: an edited meta and a step directory renamed to another step are damage (a flipped
    array byte already is: the zip inside an .npz has a crc32 of its own)."""
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("npz_example", REPO / "tests" / "plugins_local" / "npz_checkpointer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.NpzCheckpointer(tmp_path)
    for step in (1, 2):
        c.save(step, make_arrays(step), make_meta(step))
    assert_bit_exact(c.load(2).arrays, make_arrays(2))
    _edit_json(tmp_path / "1" / "meta.json", lambda doc: doc["meta"].update(epoch=9))
    os.rename(tmp_path / "2", tmp_path / "5")
    for step, cause in ((1, "checksum mismatch for meta: edited or corrupted on disk"), (5, "the checkpoint holds step 2, not 5")):
        with pytest.raises(CheckpointError, match=rf"^checkpoint step {step} in {re.escape(str(tmp_path))}: {cause}"):
            c.load(step)


# --------------------------------------------- the checksum record on orbax's files


def test_step_directory_renamed_to_another_step_is_damaged(tmp_path):
    d = saved(tmp_path, steps=(1, 2, 3))
    os.rename(d / "3", d / "7")  # the newest, moved under a later step's name
    p = policy(d)
    r = p.restore("latest")
    assert (r.step, [s for s, _ in r.skipped]) == (2, [7])
    assert r.skipped[0][1] == "the checkpoint holds step 3, not 7: its directory was renamed or copied from step 3"
    with pytest.raises(CheckpointError) as info:
        p.storage.load(7)
    assert one_line(str(info.value)) and info.value.step == 7 and str(d) in str(info.value)
    # two steps swapped: both refused; the remaining one is restored
    os.rename(d / "1", d / "tmp")
    os.rename(d / "2", d / "1")
    os.rename(d / "tmp", d / "2")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        p.restore("latest")
    # put back where they belong: intact again
    os.rename(d / "7", d / "3")
    assert p.restore("latest").step == 3
    p.close()


def test_checksum_record_covers_meta_and_step(tmp_path):
    d = saved(tmp_path, steps=(4,))
    doc = json.loads((d / "4" / "checksums" / "metadata").read_text())
    assert doc["version"] == 2 and doc["step"] == 4
    assert isinstance(doc["meta_crc32"], int) and isinstance(doc["record_crc32"], int)
    # meta rewritten with other spacing and key order is the same meta: still intact
    meta = json.loads((d / "4" / "meta" / "metadata").read_text())
    (d / "4" / "meta" / "metadata").write_text(json.dumps(dict(reversed(list(meta.items()))), indent=4))
    with OrbaxCheckpointer(d) as c:
        assert c.load(4).meta == meta


def test_version_1_records_still_load(tmp_path):
    """Steps written before the record held the step and a meta checksum load as before."""
    d = saved(tmp_path, steps=(1,))
    path = d / "1" / "checksums" / "metadata"
    doc = json.loads(path.read_text())
    for key in ("step", "meta_crc32", "record_crc32"):
        del doc[key]
    doc["version"] = 1
    path.write_text(json.dumps(doc))
    with OrbaxCheckpointer(d) as c:
        r = c.load(1)
        assert_bit_exact(r.arrays, make_arrays(1))
        assert r.meta == meta_for([record(1, val_loss=1.0)])
    _edit_json(path, lambda m: m.update(version=3))
    with OrbaxCheckpointer(d) as c, pytest.raises(CheckpointError, match="version 3; this jaxyard reads 1 and 2"):
        c.load(1)


# ------------------------------------------------------ save failure causes


def _tensorstore_error(code: int, text: str) -> ValueError:
    long_path = "/very/long/checkpoint/path/" + "x" * 300 + "/2.orbax-checkpoint-tmp/state/ocdbt.process_0/d/0123abcd"
    return ValueError(
        f'OUT_OF_RANGE: Error writing "big/0" in OCDBT database at local file "{long_path}": Failed writing: '
        f'"{long_path}": Failed to write 674108 bytes to file 8: {text} [os_error_code=\'{code}\']'
    )


def _chained() -> Exception:
    try:
        try:
            raise OSError(28, "No space left on device", "/ckpt/2/meta/metadata")
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as middle:
        try:
            raise ValueError("Failed to run 3 Handler Commit operations")
        except ValueError as outer:
            assert outer.__context__ is middle
            return outer


SAVE_FAILURES = {
    "tensorstore ENOSPC, long paths": (_tensorstore_error(28, "No space left on device"), "No space left on device (ENOSPC)"),
    "tensorstore EDQUOT": (_tensorstore_error(122, "Disk quota exceeded"), "Disk quota exceeded (EDQUOT)"),
    "OSError as __cause__ of __context__": (_chained(), "No space left on device (ENOSPC): /ckpt/2/meta/metadata"),
    "OSError inside an exception group": (
        ExceptionGroup("commit failed", [ValueError("other"), OSError(28, "No space left on device")]),
        "No space left on device (ENOSPC)",
    ),
    "only the text": (RuntimeError("write: No space left on device"), "No space left on device (ENOSPC)"),
    "not an operating-system error": (RuntimeError("boom\nsecond line"), "RuntimeError: boom"),
}


@pytest.mark.parametrize("case", list(SAVE_FAILURES), ids=list(SAVE_FAILURES))
def test_save_failure_names_the_operating_system_error(tmp_path, monkeypatch, case):
    exc, cause = SAVE_FAILURES[case]
    assert save_cause(exc) == cause
    d = saved(tmp_path, steps=(1,))
    with OrbaxCheckpointer(d, async_save=False) as c:

        def fail(*args, **kwargs):
            raise exc

        monkeypatch.setattr(c._mgr, "save", fail)
        with pytest.raises(CheckpointError) as info:
            c.save(2, make_arrays(2), make_meta(2))
        assert str(info.value) == f"checkpoint step 2 in {d}: saving failed: {cause}; earlier checkpoints were left in place"
        assert c.steps() == [1]


# ----------------------------------------------------- nothing after the error


def test_orbax_logs_are_dropped_only_while_a_checkpointer_is_open(tmp_path, caplog):
    import logging

    from absl import logging as absl_logging
    from orbax.checkpoint._src import asyncio_utils

    for leftover in quiet.open_checkpointers():  # a checkpointer another test left open
        leftover.close()
    original = asyncio_utils._run_sync_via_new_loop
    c = OrbaxCheckpointer(tmp_path / "ckpt", async_save=False)
    assert asyncio_utils._run_sync_via_new_loop is original  # orbax is opened by the first save or load
    c.save(1, make_arrays(1), make_meta(1))
    assert asyncio_utils._run_sync_via_new_loop is not original
    absl_logging.error("the program's own absl message")  # not orbax's: kept
    c2 = OrbaxCheckpointer(tmp_path / "ckpt2")
    c2.save(1, make_arrays(1), make_meta(1))
    c.close()
    assert asyncio_utils._run_sync_via_new_loop is not original  # c2 still open
    c2.close()
    assert asyncio_utils._run_sync_via_new_loop is original
    assert not [f for f in logging.getLogger("absl").filters if isinstance(f, quiet._DropOrbaxRecords)]
    assert "the program's own absl message" in caplog.text


def test_an_untested_orbax_is_not_patched(tmp_path, monkeypatch):
    """Outside the releases its workarounds were written for, nothing of orbax's or absl's is
    touched (said once, as a CheckpointWarning), and checkpoints work the same."""
    import logging

    from orbax.checkpoint._src import asyncio_utils

    for leftover in quiet.open_checkpointers():
        leftover.close()
    monkeypatch.setattr(quiet, "ORBAX_VERSION", "0.13.0")
    monkeypatch.setattr(quiet.Quiet, "_warned", False)
    original, filters = asyncio_utils._run_sync_via_new_loop, list(logging.getLogger("absl").filters)
    c = OrbaxCheckpointer(tmp_path / "ckpt", async_save=False)
    with pytest.warns(CheckpointWarning, match=r"orbax-checkpoint 0\.13\.0 is not a release jaxyard was tested with \(>=0\.11\.20,<0\.13\)"):
        c.save(1, make_arrays(1), make_meta(1))  # opens orbax
    assert asyncio_utils._run_sync_via_new_loop is original
    assert logging.getLogger("absl").filters == filters
    assert_bit_exact(c.load(1).arrays, make_arrays(1))
    c.close()
    assert asyncio_utils._run_sync_via_new_loop is original


@pytest.mark.parametrize(
    "version, tested",
    [("0.11.20", True), ("0.12.8", True), ("0.12.99rc1", True), ("0.11.19", False), ("0.13.0", False), ("1.0", False), ("", False)],
)
def test_tested_orbax_releases(version, tested):
    assert quiet.tested(version) is tested


def test_the_orbax_pin_is_the_tested_range():
    """pyproject.toml's orbax-checkpoint bounds and quiet.TESTED_ORBAX move together."""
    import tomllib

    from helpers import REPO

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    low, high = quiet.TESTED_ORBAX
    assert f"orbax-checkpoint>={low},<{high}" in deps


STRAY_OUTPUT_SCRIPT = textwrap.dedent(
    """
    import pathlib, resource, signal, sys
    import numpy as np
    from jaxyard.core.store.checkpoint import CheckpointError
    from jaxyard.core.store.policy import CheckpointPolicy, Monitor
    from jaxyard.plugins._orbax import OrbaxCheckpointer

    root = pathlib.Path(sys.argv[1])

    def arrays(seed, n=24):
        rng = np.random.default_rng(seed)
        return {f"layer{i}.kernel": rng.standard_normal((64, 256)).astype(np.float32) for i in range(n)}

    def report(fn):
        try:
            fn()
        except CheckpointError as err:
            print(err, file=sys.stderr)

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def disk_full(full):
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024 if full else soft, hard))

    # 1. a damaged step: many reads in flight when one fails
    d = root / "damaged"
    c = OrbaxCheckpointer(d, async_save=False)
    for s in (1, 2):
        c.save(s, arrays(s), {"step": s})
    c.close()
    data = max((p for p in (d / "2" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 3)
    c = OrbaxCheckpointer(d, async_save=True)
    for _ in range(3):
        report(lambda: c.load(2))
    p = CheckpointPolicy(c, monitor=Monitor())
    assert p.restore("latest").step == 1
    c.close()

    # 2. disk full, synchronous save
    c = OrbaxCheckpointer(root / "full-sync", async_save=False)
    c.save(1, {"a": np.ones(4, np.float32)}, {})
    disk_full(True)
    report(lambda: c.save(2, arrays(2), {}))
    disk_full(False)
    c.close()

    # 3. disk full, background save: reported by close()
    c = OrbaxCheckpointer(root / "full-async", async_save=True)
    disk_full(True)
    c.save(2, arrays(2), {})
    report(c.close)
    disk_full(False)

    # 4. a damaged step saved again by a run's checkpointer (the registered factory): one warning
    from jaxyard.plugins.checkpointers import OrbaxParams, orbax

    c = orbax(OrbaxParams(async_save=False), directory=d)
    c.save(2, arrays(2), {"step": 2})
    c.close()

    # 5. an error on its way out while a save is pending, the checkpointer never closed
    c = OrbaxCheckpointer(root / "pending", async_save=True)
    c.save(1, arrays(1), {"step": 1})
    raise SystemExit("bad input: exiting")
    """
)


def test_nothing_is_printed_after_the_error_line(tmp_path):
    """A real process: orbax's tracebacks came from its background threads and at interpreter
    exit ("Event loop is closed", "cannot schedule new futures after shutdown")."""
    pytest.importorskip("resource")
    out = subprocess.run(
        [sys.executable, "-c", STRAY_OUTPUT_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    damaged = f"checkpoint step 2 in {tmp_path / 'damaged'}: array data unreadable (state/): "
    full = "saving failed: File too large (EFBIG); earlier checkpoints were left in place"
    assert len(lines) == 8, out.stderr[-3000:]
    assert all(line.startswith(damaged) for line in lines[:3]), out.stderr[-3000:]
    assert lines[3:5] == [
        f"checkpoint step 2 in {tmp_path / 'full-sync'}: {full}",
        f"checkpoint step 2 in {tmp_path / 'full-async'}: {full}",
    ], out.stderr[-3000:]
    # Python's display of a warning: where it was issued, then that line of source
    assert re.fullmatch(
        rf".*: CheckpointWarning: checkpoint step 2 in {re.escape(str(tmp_path / 'damaged'))} was damaged \(array data unreadable "
        r"\(state/\): .*\); moved it to 2\.damaged and saving again",
        lines[5],
    ), out.stderr[-3000:]
    assert lines[6].startswith("  ") and lines[7] == "bad input: exiting", out.stderr[-3000:]
    assert out.stdout == ""
    # the pending save was finished at exit, not lost
    with OrbaxCheckpointer(tmp_path / "pending") as c:
        assert c.steps() == [1] and c.load(1).meta == {"step": 1}


@pytest.mark.parametrize("operation", ["load", "save again"])
def test_orbax_failing_to_open_is_one_line_and_moves_no_step_aside(tmp_path, monkeypatch, operation):
    """orbax is opened at the first save or load: its failure to open is named as such, and an
    intact step is neither passed over as damaged nor moved aside."""
    import orbax.checkpoint as ocp

    with OrbaxCheckpointer(tmp_path / "ckpt", async_save=False) as c:
        c.save(1, make_arrays(1), make_meta(1))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ocp, "CheckpointManager", refuse)
    c = OrbaxCheckpointer(tmp_path / "ckpt", async_save=False)
    with pytest.raises(CheckpointError, match=r"cannot open checkpoints: .*Permission denied"):
        c.load(1) if operation == "load" else c.save(1, make_arrays(2), make_meta(1))
    c.close()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1", MARKER_NAME]
    monkeypatch.undo()
    with OrbaxCheckpointer(tmp_path / "ckpt") as again:
        assert_bit_exact(again.load(1).arrays, make_arrays(1))
