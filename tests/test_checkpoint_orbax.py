"""The orbax checkpointer on real files: round trips, retention, damage, failures.

Small arrays and synchronous saves unless a test is about async saving, so the
whole file runs in a few seconds on two CPU cores.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxyard.core.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    Checkpointer,
    Restored,
    compare_structures,
    structure_of,
)
from jaxyard.plugins._orbax import MARKER_NAME, OrbaxCheckpointer

# When a restore fails mid-read (truncated data), tensorstore sometimes calls back
# into the asyncio loop orbax already closed: "Exception ignored ... Event loop
# is closed" from a background thread. Harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


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


def make_meta(step: int, val_loss: float | None = 1.0, **metrics) -> dict:
    m = {"train_loss": 2.0, "train_acc": 0.5, **metrics}
    if val_loss is not None:
        m["val_loss"] = val_loss
    return {"epoch": step, "step": step, "metrics": m, "history": [{"epoch": step}]}


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
    """A checkpoint directory holding ``steps`` (saved synchronously, then closed)."""
    d = tmp_path / "ckpt"
    kw.setdefault("keep_latest", 10)
    kw.setdefault("async_save", False)
    with OrbaxCheckpointer(d, **kw) as c:
        for s in steps:
            c.save(s, make_arrays(s), make_meta(s, val_loss=1.0 / s))
    return d


def data_file(step_dir: pathlib.Path) -> pathlib.Path:
    """The largest file of the step's array item: where the kernels' bytes live."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    big = max(files, key=lambda p: p.stat().st_size)
    assert big.stat().st_size > 20_000, "expected the array data file to hold the kernels"
    return big


def one_line(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text


# ------------------------------------------------------------ round trips


def test_round_trip_is_bit_exact(tmp_path):
    import jax.numpy as jnp

    arrays = make_arrays(7)
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], dtype=np.float32)
    arrays["model.special"] = special
    as_jax = {k: jnp.asarray(v) for k, v in arrays.items()}  # what the engine hands over
    meta = make_meta(7, val_loss=0.25)
    meta["history"] = [{"epoch": 1, "val_loss": float("nan")}]

    c = OrbaxCheckpointer(tmp_path / "ckpt", async_save=False)
    assert isinstance(c, Checkpointer)
    c.save(7, as_jax, meta)
    r = c.restore()
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
        assert_bit_exact(c2.restore(7).arrays, arrays)


def test_zero_size_arrays_and_numpy_scalars_in_meta(tmp_path):
    arrays = {"empty": np.zeros((0, 3), np.float32), "x": np.arange(4, dtype=np.int32)}
    with OrbaxCheckpointer(tmp_path / "c", async_save=False) as c:
        c.save(1, arrays, {"epoch": np.int64(1), "metrics": {"val_loss": np.float32(0.5)}})
        r = c.restore()
    assert_bit_exact(r.arrays, arrays)
    assert r.meta == {"epoch": 1, "metrics": {"val_loss": 0.5}}
    with OrbaxCheckpointer(tmp_path / "d", async_save=False) as c:
        c.save(1, {"only_empty": np.zeros((0,), np.uint32)}, {})
        assert_bit_exact(c.restore().arrays, {"only_empty": np.zeros((0,), np.uint32)})


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
        assert_bit_exact(c2.restore(5).arrays, arrays)
        assert_bit_exact(c2.restore().arrays, make_arrays(6))


@pytest.mark.parametrize("async_save", [True, False])
def test_files_are_fsynced(tmp_path, monkeypatch, async_save):
    import jaxyard.plugins._orbax as impl

    calls = []
    real = impl._fsync_tree

    def spy(root):
        calls.append((pathlib.Path(root).name, (tmp_path / "ckpt" / "4").exists()))
        real(root)

    monkeypatch.setattr(impl, "_fsync_tree", spy)
    with OrbaxCheckpointer(tmp_path / "ckpt", async_save=async_save) as c:
        c.save(4, make_arrays(4), make_meta(4))
        c.wait()
    if async_save:  # in the background, before the step is renamed into place
        assert len(calls) == 1 and calls[0][0].startswith("4.orbax-checkpoint-tmp") and not calls[0][1]
    else:
        assert calls == [("4", True)]


def test_save_copies_jax_cpu_buffers(tmp_path):
    """np.asarray of a jax CPU array is a view of the device buffer: must be copied."""
    import jax
    import jax.numpy as jnp

    x = jnp.arange(4096, dtype=jnp.float32)
    want = np.asarray(x).copy()
    c = OrbaxCheckpointer(tmp_path / "ckpt", async_save=True)
    c.save(1, {"x": x}, {})
    x = jax.jit(lambda v: v * 0, donate_argnums=0)(x)  # buffer may be reused
    c.close()
    with OrbaxCheckpointer(tmp_path / "ckpt") as c2:
        assert_bit_exact(c2.restore().arrays, {"x": want})


# -------------------------------------------------------------- retention


@pytest.mark.parametrize("async_save", [True, False])
def test_retention_keeps_latest_k_plus_best_n(tmp_path, async_save):
    losses = {10: 0.9, 20: 0.2, 30: 0.5, 40: 0.6, 50: 0.7, 60: 0.8}  # best is early: 20
    d = tmp_path / "ckpt"
    c = OrbaxCheckpointer(d, keep_latest=2, keep_best=1, async_save=async_save)
    for s, loss in losses.items():
        c.save(s, make_arrays(s), make_meta(s, val_loss=loss))
    c.wait()
    assert c.steps() == [20, 50, 60]
    assert sorted(p.name for p in d.iterdir() if p.is_dir()) == ["20", "50", "60"]
    assert c.restore(which="best").step == 20
    assert c.restore().step == 60
    c.close()

    # After a restart orbax must still know step 20's metric (it reads it back
    # from disk): later, worse steps must not push the best out.
    c = OrbaxCheckpointer(d, keep_latest=2, keep_best=1, async_save=async_save)
    c.save(70, make_arrays(70), make_meta(70, val_loss=0.95))
    c.save(80, make_arrays(80), make_meta(80, val_loss=0.3))  # second best so far
    c.wait()
    assert c.steps() == [20, 70, 80]
    best = c.restore(which="best")
    assert best.step == 20 and best.meta["metrics"]["val_loss"] == 0.2
    assert_bit_exact(best.arrays, make_arrays(20))
    c.close()


def test_retention_max_mode_and_steps_without_the_metric(tmp_path):
    c = OrbaxCheckpointer(
        tmp_path / "ckpt", keep_latest=1, keep_best=2, best_metric="val_acc", best_mode="max", async_save=False
    )
    accs = {1: 0.5, 2: 0.9, 3: None, 4: 0.7, 5: 0.6, 6: None}  # None: no validation that step
    for s, acc in accs.items():
        extra = {} if acc is None else {"val_acc": acc}
        c.save(s, make_arrays(s), make_meta(s, **extra))
    assert c.steps() == [2, 4, 6]
    assert c.restore(which="best").step == 2
    c.close()


def test_keep_best_zero_keeps_exactly_the_latest(tmp_path):
    with OrbaxCheckpointer(tmp_path / "ckpt", keep_latest=2, keep_best=0, async_save=False) as c:
        for s, loss in {1: 0.1, 2: 0.5, 3: 0.6, 4: 0.7}.items():
            c.save(s, make_arrays(s), make_meta(s, val_loss=loss))
        assert c.steps() == [3, 4]
        assert c.restore(which="best").step == 3  # best among those kept


# ----------------------------------------------------------------- damage


def _truncate(step_dir):
    f = data_file(step_dir)
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)


def _empty(step_dir):
    data_file(step_dir).write_bytes(b"")


def _flip(step_dir):
    f = data_file(step_dir)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 4):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))


def _break_json(path):
    text = path.read_text()
    assert text.strip().startswith("{")
    path.write_text(text[: len(text) // 2])


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
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_newest_is_passed_over(tmp_path, damage):
    d = saved(tmp_path)
    DAMAGE[damage](d / "3")

    with OrbaxCheckpointer(d, keep_latest=10) as c:
        assert c.steps() == [1, 2, 3]
        r = c.restore()
        assert r.step == 2
        assert_bit_exact(r.arrays, make_arrays(2))
        assert r.meta["step"] == 2
        assert len(r.skipped) == 1
        step, cause = r.skipped[0]
        assert step == 3
        assert cause and one_line(cause)
        if damage == "flip bytes in array data":
            assert "checksum mismatch" in cause  # orbax itself reads the bytes back silently

        with pytest.raises(CheckpointError) as info:
            c.restore(3)
        msg = str(info.value)
        assert one_line(msg)
        # the same kind of cause (which array fails first may vary: reads are parallel)
        assert "step 3" in msg and str(d) in msg and cause.split(":")[0] in msg
        assert info.value.step == 3

        assert c.restore(2).step == 2
        # nothing was deleted by looking at it
        assert c.steps() == [1, 2, 3]


def test_damage_found_by_the_instance_that_saved(tmp_path):
    d = tmp_path / "ckpt"
    c = OrbaxCheckpointer(d, keep_latest=3, async_save=True)
    for s in (1, 2, 3):
        c.save(s, make_arrays(s), make_meta(s))
    c.wait()
    _flip(d / "3")
    r = c.restore()
    assert (r.step, [s for s, _ in r.skipped]) == (2, [3])
    # a whole step directory vanishing is not damage of an existing checkpoint
    shutil.rmtree(d / "3")
    r = c.restore()
    assert (r.step, r.skipped) == (2, ())
    # and the checkpointer keeps working: saving again with retention
    c.save(4, make_arrays(4), make_meta(4))
    c.save(5, make_arrays(5), make_meta(5))
    c.save(6, make_arrays(6), make_meta(6))
    c.wait()
    assert c.steps() == [4, 5, 6]
    c.close()


def test_best_passes_over_a_damaged_best(tmp_path):
    d = saved(tmp_path, steps=(1, 2, 3, 4))  # val_loss 1/s: best is 4, then 3
    _flip(d / "4")
    with OrbaxCheckpointer(d, keep_latest=10) as c:
        r = c.restore(which="best")
        assert r.step == 3
        assert [s for s, _ in r.skipped] == [4]


def test_damaged_metrics_file_does_not_block_opening(tmp_path):
    # orbax reads every step's metrics file when it opens a directory and
    # raises on a broken one; this checkpointer must still open and restore.
    d = saved(tmp_path)
    _break_json(d / "3" / "metrics" / "metrics")
    with OrbaxCheckpointer(d, keep_latest=10) as c:
        r = c.restore()
        assert (r.step, r.skipped) == (3, ())  # arrays and meta are intact
        assert c.restore(which="best").step == 2  # 3 can no longer be ranked


def test_every_checkpoint_damaged(tmp_path):
    d = saved(tmp_path, steps=(1, 2))
    _flip(d / "1")
    shutil.rmtree(d / "2" / "meta")
    with OrbaxCheckpointer(d) as c:
        with pytest.raises(CheckpointError) as info:
            c.restore()
    msg = str(info.value)
    assert one_line(msg)
    assert "no intact checkpoint" in msg and "step 2:" in msg and "step 1:" in msg


def test_no_checkpoints_yet(tmp_path):
    with OrbaxCheckpointer(tmp_path / "ckpt") as c:
        assert c.steps() == []
        with pytest.raises(CheckpointError, match="no checkpoints saved yet"):
            c.restore()
        with pytest.raises(CheckpointError, match="no such checkpoint"):
            c.restore(5)
        c.save(1, make_arrays(1), make_meta(1, val_loss=None))
        with pytest.raises(CheckpointError, match="'val_loss'"):
            c.restore(which="best")
        with pytest.raises(ValueError):
            c.restore(which="newest")


def test_unfinished_save_is_invisible_and_cleaned_up(tmp_path):
    """A process killed mid-save leaves only orbax's temporary directory."""
    d = saved(tmp_path, steps=(1, 2))
    tmp = d / "3.orbax-checkpoint-tmp-1234567"
    shutil.copytree(d / "2", tmp)
    _truncate(tmp)
    with OrbaxCheckpointer(d) as c:
        assert c.steps() == [1, 2]
        r = c.restore()
        assert (r.step, r.skipped) == (2, ())
        c.save(3, make_arrays(3), make_meta(3))
        c.wait()
        assert c.restore().step == 3
    assert not tmp.exists()


def test_saving_a_damaged_step_again_moves_it_aside(tmp_path):
    d = saved(tmp_path)
    _flip(d / "3")
    with OrbaxCheckpointer(d, keep_latest=10) as c:
        assert c.restore().step == 2
        c.save(3, make_arrays(33), make_meta(3))  # training reached step 3 again
        c.wait()
        r = c.restore()
        assert (r.step, r.skipped) == (3, ())
        assert_bit_exact(r.arrays, make_arrays(33))
    assert (d / "3.damaged").is_dir()  # kept for inspection, not deleted


def test_save_is_never_silently_skipped(tmp_path):
    # orbax's save() returns False without saving for a step below the latest
    # one (and while a save is in progress) unless forced
    with OrbaxCheckpointer(tmp_path / "ckpt", keep_latest=3, async_save=True) as c:
        c.save(20, make_arrays(20), make_meta(20))
        c.save(10, make_arrays(10), make_meta(10))
        c.save(30, make_arrays(30), make_meta(30))
        c.wait()
        assert c.steps() == [10, 20, 30]
        assert_bit_exact(c.restore(10).arrays, make_arrays(10))


def test_saving_an_intact_step_again_is_refused(tmp_path):
    d = saved(tmp_path, steps=(1,))
    with OrbaxCheckpointer(d, async_save=False) as c:
        with pytest.raises(CheckpointError, match="already exists"):
            c.save(1, make_arrays(9), make_meta(1))
        assert_bit_exact(c.restore(1).arrays, make_arrays(1))


# --------------------------------------------------- directories and disks


def test_directory_from_another_tool_is_refused(tmp_path):
    d = tmp_path / "ckpt"
    (d / "7").mkdir(parents=True)  # looks like an orbax step to orbax
    (d / "7" / "weights.bin").write_bytes(b"\x00" * 100)
    (d / "model.pt").write_bytes(b"torch")
    before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    with pytest.raises(CheckpointError) as info:
        OrbaxCheckpointer(d)
    msg = str(info.value)
    assert one_line(msg)
    assert str(d) in msg and "not created by jaxyard" in msg and "'model.pt'" in msg
    assert sorted(str(p.relative_to(d)) for p in d.rglob("*")) == before
    assert (d / "7" / "weights.bin").read_bytes() == b"\x00" * 100


def test_marker_of_another_format_is_refused(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / MARKER_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="another format"):
        OrbaxCheckpointer(d)


def test_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "ckpt"
    f.write_text("not a directory")
    with pytest.raises(CheckpointError, match="not a directory"):
        OrbaxCheckpointer(f)
    with pytest.raises(CheckpointError, match="cannot use the directory"):
        OrbaxCheckpointer(f / "sub")
    assert f.read_text() == "not a directory"


def _permissions_enforced(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    os.chmod(probe, 0o555)
    try:
        (probe / "x").write_text("x")
    except PermissionError:
        return True
    finally:
        os.chmod(probe, 0o755)
    return False


def test_unwritable_directory(tmp_path):
    if os.name != "posix" or not _permissions_enforced(tmp_path):
        pytest.skip("file permissions are not enforced for this user (root)")
    d = saved(tmp_path, steps=(1, 2), keep_latest=2)
    os.chmod(d, 0o555)
    try:
        c = OrbaxCheckpointer(d, keep_latest=2, async_save=False)
        with pytest.raises(CheckpointError) as info:
            c.save(3, make_arrays(3), make_meta(3))
        assert one_line(str(info.value)) and "step 3" in str(info.value)
        assert c.steps() == [1, 2]
        assert c.restore().step == 2
        c.close()
        with pytest.raises(CheckpointError, match="cannot use the directory"):
            OrbaxCheckpointer(d / "new")
    finally:
        os.chmod(d, 0o755)


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
def test_disk_full_during_save_keeps_older_checkpoints(tmp_path, disk_full, async_save):
    d = saved(tmp_path, steps=(1, 2), keep_latest=2)
    c = OrbaxCheckpointer(d, keep_latest=2, keep_best=0, async_save=async_save)
    disk_full()
    with pytest.raises(CheckpointError) as info:
        c.save(3, _too_big(3), make_meta(3))  # retention would delete step 1 on success
        c.wait()
    msg = str(info.value)
    assert one_line(msg)
    assert "step 3" in msg and str(d) in msg and "saving failed" in msg
    assert "left in place" in msg
    assert c.steps() == [1, 2]
    r = c.restore()
    assert (r.step, r.skipped) == (2, ())
    assert_bit_exact(c.restore(1).arrays, make_arrays(1))

    # room again: saving and retention go on as if the failure never happened
    # (orbax forgets steps it meant to delete when a save fails; they must not leak)
    disk_full(False)
    c.save(3, _too_big(3), make_meta(3))
    c.save(4, make_arrays(4), make_meta(4))
    c.wait()
    assert c.steps() == [3, 4]
    c.close()


def test_background_failure_is_reported_by_the_next_save(tmp_path, disk_full):
    d = saved(tmp_path, steps=(1,))
    c = OrbaxCheckpointer(d, keep_latest=1, keep_best=0, async_save=True)
    disk_full()
    c.save(2, _too_big(2), make_meta(2))  # returns; the write fails in the background
    with pytest.raises(CheckpointError) as info:
        c.save(3, make_arrays(3), make_meta(3))
    msg = str(info.value)
    assert one_line(msg)
    assert "step 2" in msg and "saving failed" in msg and "step 3, which was not saved" in msg
    assert c.steps() == [1]
    c.close()
    with OrbaxCheckpointer(d) as c2:
        assert c2.steps() == [1]
        assert_bit_exact(c2.restore().arrays, make_arrays(1))


def test_restore_during_a_failing_background_save(tmp_path, disk_full):
    d = saved(tmp_path, steps=(1,))
    c = OrbaxCheckpointer(d, keep_latest=1, keep_best=0, async_save=True)
    disk_full()
    c.save(2, _too_big(2), make_meta(2))
    r = c.restore()  # waits for the save; its failure does not stop restoring
    assert (r.step, r.skipped) == (1, ())
    disk_full(False)
    with pytest.raises(CheckpointError, match="step 2"):
        c.close()  # ... but is reported, here by close()
    c.close()  # closed now: nothing more to report


def test_step_directory_deleted_behind_its_back(tmp_path):
    d = tmp_path / "ckpt"
    with OrbaxCheckpointer(d, keep_latest=2, keep_best=0, async_save=False) as c:
        for s in (1, 2):
            c.save(s, make_arrays(s), make_meta(s))
        shutil.rmtree(d / "1")
        c.save(3, make_arrays(3), make_meta(3))
        c.save(4, make_arrays(4), make_meta(4))
        assert c.steps() == [3, 4]


def test_unwritable_directory_does_not_hang_the_process(tmp_path):
    """A step directory that cannot be created must fail save() promptly; orbax
    creating it in the background left threads waiting 5 minutes at exit."""
    code = textwrap.dedent(
        """
        import os, pathlib, sys
        import numpy as np
        from jaxyard.core.checkpoint import CheckpointError
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
        assert c.steps() == []
    with pytest.raises(CheckpointError, match="closed"):
        c.save(1, make_arrays(1), {})
    c.close()  # idempotent
    with pytest.raises(ValueError):
        OrbaxCheckpointer(tmp_path / "x", keep_latest=0)
    with pytest.raises(ValueError):
        OrbaxCheckpointer(tmp_path / "x", best_mode="median")


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
    arrays = make_arrays(1)
    assert compare_structures(structure_of(arrays), structure_of(dict(arrays))) == []


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
        import jaxyard, jaxyard.core.params
        heavy = ("jax", "orbax", "numpy")
        before = {m for m in heavy if m in sys.modules}
        import jaxyard.core.checkpoint
        import jaxyard.plugins.checkpointers
        after = {m for m in heavy if m in sys.modules}
        print(sorted(after - before))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_plugin_registers_orbax_and_none(tmp_path):
    plugin = pytest.importorskip("jaxyard.plugins.checkpointers")
    registered = {}
    plugin.jaxyard_register_checkpointers(
        lambda name, factory, params: registered.__setitem__(name, (factory, params))
    )
    assert set(registered) == {"orbax", "none"}

    factory, params_cls = registered["orbax"]
    c = factory(params_cls(keep_latest=1, keep_best=0, async_save=False), directory=tmp_path / "ckpt")
    assert isinstance(c, OrbaxCheckpointer) and isinstance(c, Checkpointer)
    c.save(1, make_arrays(1), make_meta(1))
    c.save(2, make_arrays(2), make_meta(2))
    assert c.steps() == [2]
    c.close()
    with pytest.raises(ValueError):
        params_cls(best_mode="median")
    with pytest.raises(ValueError):
        params_cls(keep_latest=0)

    factory, params_cls = registered["none"]
    n = factory(params_cls(), directory=tmp_path / "nothing")
    assert isinstance(n, Checkpointer)
    n.save(1, make_arrays(1), make_meta(1))
    n.wait()
    assert n.steps() == []
    with pytest.raises(CheckpointError, match="saved no checkpoints"):
        n.restore()
    n.close()
    assert not (tmp_path / "nothing").exists()
