"""Monitor (and the task's metric directions it reads), steps_to_keep and CheckpointPolicy over an
in-memory storage: no jax, no orbax, no disk."""

from __future__ import annotations

import copy
import math
import re
from types import SimpleNamespace

import pytest

from jaxyard.core import metrics as M
from jaxyard.core.errors import UsageError
from jaxyard.core.store.checkpoint import Checkpointer, CheckpointError, Restored, missing_methods
from jaxyard.core.store.policy import CheckpointPolicy, Monitor, run_monitor, steps_to_keep

REGRESSION = {"loss": "min", "mse": "min", "r2": "max"}


class FakeStorage:
    """A dict-backed :class:`Checkpointer` that records the calls made to it.

    ``damaged`` steps fail to load; ``fail_save`` makes the next save raise at once;
    ``fail_background`` makes the next save "succeed" and its failure surface at ``wait``.
    """

    directory = "/runs/a/checkpoints"

    def __init__(self):
        self.saved: dict[int, tuple[dict, dict]] = {}
        self.damaged: set[int] = set()
        self.calls: list[tuple] = []
        self.fail_save = False
        self.fail_background = False
        self._background_error: CheckpointError | None = None
        self.closed = False

    def save(self, step, arrays, meta):
        self.calls.append(("save", step))
        if self.fail_save:
            raise CheckpointError("saving failed: disk full", directory=self.directory, step=step)
        if self.fail_background:
            self.fail_background = False
            self._background_error = CheckpointError("saving failed: disk full", directory=self.directory, step=step)
            return
        if step in self.saved:
            raise CheckpointError("already exists", directory=self.directory, step=step)
        self.saved[step] = (dict(arrays), copy.deepcopy(meta))

    def steps(self):
        return sorted(self.saved)

    def load(self, step):
        self.calls.append(("load", step))
        if step not in self.saved:
            raise CheckpointError("no such checkpoint", directory=self.directory, step=step)
        if step in self.damaged:
            raise CheckpointError(f"checksum mismatch in step {step}", directory=self.directory, step=step)
        arrays, meta = self.saved[step]
        return Restored(step=step, arrays=dict(arrays), meta=copy.deepcopy(meta))

    def delete(self, step):
        self.calls.append(("delete", step))
        self.saved.pop(step, None)

    def wait(self):
        self.calls.append(("wait",))
        err, self._background_error = self._background_error, None
        if err is not None:
            raise err

    def close(self):
        self.calls.append(("close",))
        self.closed = True


def rec(step, **metrics):
    return {"epoch": step, "step": step, **metrics}


def run(policy, records):
    """Save one step per record, each meta carrying the history so far (as the engine does)."""
    history = []
    for r in records:
        history.append(r)
        metrics = {k: v for k, v in r.items() if k not in ("epoch", "step")}
        policy.save(r["step"], {"w": r["step"]}, {"epoch": r["epoch"], "metrics": metrics, "history": list(history)})
    return history


def make(keep_latest=2, keep_best=1, metric="val_loss", **kw):
    storage = FakeStorage()
    return storage, CheckpointPolicy(storage, monitor=Monitor(metric), keep_latest=keep_latest, keep_best=keep_best, **kw)


def test_fake_storage_is_a_checkpointer():
    assert isinstance(FakeStorage(), Checkpointer) and missing_methods(FakeStorage()) == []


# ------------------------------------------------------------------ Monitor


@pytest.mark.parametrize(
    "metric, mode", [("val_loss", "min"), ("train_loss", "min"), ("val_acc", "max"), ("train_acc", "max"), ("val_loss_ema", "min")]
)
def test_monitor_mode_is_the_declared_direction(metric, mode):
    assert Monitor(metric).mode == mode


def test_monitor_of_an_undeclared_metric_needs_its_mode():
    """No guess from the name: 'val_lossless' or 'bleu' say nothing about which way is better."""
    for metric in ("bleu", "val_lossless", "my_loss"):
        with pytest.raises(UsageError, match="no direction"):
            Monitor(metric)
    assert Monitor("bleu", mode="max").mode == "max" and Monitor("perplexity", mode="min").mode == "min"


def test_monitor_mode_given_by_the_task_wins():
    """The engine gives the task's direction: any metric, whatever its name says."""
    assert Monitor("val_r2", mode="max").mode == "max" and Monitor("val_acc", mode="min").mode == "min"
    assert Monitor("val_r2", mode="max").improves(0.9, 0.8) and not Monitor("val_mse", mode="min").improves(0.9, 0.8)


def fake_run(monitor, metrics=None, patience=2, min_delta=0.0, history=()):
    stops = []
    run = SimpleNamespace(config=SimpleNamespace(run=SimpleNamespace(monitor=monitor, min_delta=min_delta, patience=patience)),
                          history=list(history), stop=stops.append)
    if metrics is not None:
        run.metrics = metrics
    return run, stops


def test_run_monitor_reads_the_tasks_direction():
    assert run_monitor(fake_run("val_r2", REGRESSION)[0]).mode == "max"
    assert run_monitor(fake_run("val_mse_ema", REGRESSION)[0]).mode == "min"
    assert run_monitor(fake_run("val_acc")[0]).mode == "max"  # a run object without metrics: 0.2's
    with pytest.raises(UsageError, match=re.escape("'val_acc' is not a metric of this run, so it has no direction (valid: SPLIT_loss[_ema]")):
        run_monitor(fake_run("val_acc", REGRESSION)[0])


def test_early_stopping_follows_the_tasks_direction():
    """val_r2 rising is improvement (max); the same numbers as val_mse are not (min)."""
    from jaxyard.plugins import early_stopping

    rising = [{"epoch": e, "step": e, "val_r2": 0.5 + e / 10, "val_mse": 0.5 + e / 10} for e in range(1, 5)]
    run, stops = fake_run("val_r2", REGRESSION, history=rising)
    early_stopping.jaxyard_on_epoch_end(run)
    assert stops == []
    run, stops = fake_run("val_mse", REGRESSION, history=rising)
    early_stopping.jaxyard_on_epoch_end(run)
    assert stops == ["early stopping: val_mse did not improve for 2 epochs (best 0.6000)"]


def test_directions_given_or_02s():
    """Directions come from the task (summary.json's "metrics"); without them, 0.2's loss and acc."""
    tokens = {"loss": "min", "perplexity": "min", "token_acc": "max"}
    assert M.base_name("val_token_acc_ema", tokens) == "token_acc" and M.direction("train_token_acc", tokens) == "max"
    assert M.is_metric("val_acc") and not M.is_metric("val_acc", tokens) and not M.is_metric("train_time", tokens)
    assert M.minimized("test_perplexity", tokens) and not M.minimized("val_acc")
    assert (M.headline(tokens), M.headline(), M.headline({"loss": "min"})) == ("perplexity", "acc", "loss")
    assert M.of_summary({"metrics": tokens}) == tokens and list(M.of_summary({"metrics": tokens})) == list(tokens)
    assert M.of_summary(None) == M.of_summary({"test": {}}) == M.of_summary({"metrics": {"x": "up"}}) == M.DIRECTIONS
    assert M.of_config(SimpleNamespace(run=None)) == M.DIRECTIONS  # a configuration without a task


def test_monitor_default_is_val_loss():
    assert (Monitor().metric, Monitor().mode, Monitor().min_delta) == ("val_loss", "min", 0.0)


@pytest.mark.parametrize(
    "record, want",
    [
        ({"val_loss": 0.5}, 0.5),
        ({"val_loss": 1}, 1.0),
        ({"val_loss": "0.25"}, 0.25),
        ({"val_loss": math.nan}, None),
        ({"val_loss": math.inf}, None),
        ({"val_loss": -math.inf}, None),
        ({"val_loss": None}, None),
        ({"val_loss": "n/a"}, None),
        ({"train_loss": 0.5}, None),
        (None, None),
    ],
)
def test_monitor_value_is_a_finite_number_or_none(record, want):
    assert Monitor("val_loss").value(record) == want


def test_monitor_improves_by_more_than_min_delta():
    loss, acc = Monitor("val_loss", min_delta=0.1), Monitor("val_acc", min_delta=0.1)
    assert loss.improves(0.5, None) and acc.improves(0.5, None)
    assert not loss.improves(None, 0.5) and not loss.improves(None, None)
    assert loss.improves(0.35, 0.5) and not loss.improves(0.45, 0.5) and not loss.improves(0.4, 0.5)
    assert acc.improves(0.65, 0.5) and not acc.improves(0.55, 0.5) and not acc.improves(0.4, 0.5)
    assert Monitor("val_loss").improves(0.49, 0.5) and not Monitor("val_loss").improves(0.5, 0.5)


def test_monitor_rank_best_first_later_step_wins_ties_unusable_left_out():
    records = [
        rec(1, val_loss=0.5, val_acc=0.7),
        rec(2, val_loss=0.2, val_acc=0.9),
        rec(3, val_loss=math.nan, val_acc=0.8),
        rec(4),
        rec(5, val_loss=0.5, val_acc=0.9),
    ]
    assert [r["step"] for r in Monitor("val_loss").rank(records)] == [2, 5, 1]
    assert [r["step"] for r in Monitor("val_acc").rank(records)] == [5, 2, 3, 1]
    assert Monitor("val_loss").best(records)["step"] == 2
    assert Monitor("val_acc").best(iter(records))["step"] == 5  # any iterable
    assert Monitor("val_loss").best([rec(1), rec(2, val_loss=math.inf)]) is None
    assert Monitor().rank([]) == []


# ------------------------------------------------------------- steps_to_keep


def test_steps_to_keep_latest_plus_best():
    records = {s: rec(s, val_loss=loss) for s, loss in {1: 0.9, 2: 0.1, 3: 0.3, 4: 0.5, 5: 0.7, 6: 0.8}.items()}

    def keep(k, n):
        return steps_to_keep(records, records, Monitor(), keep_latest=k, keep_best=n)

    assert keep(2, 1) == {2, 5, 6}
    assert keep(2, 2) == {2, 3, 5, 6}
    assert keep(2, 0) == {5, 6}
    assert keep(1, 6) == {1, 2, 3, 4, 5, 6}
    assert keep(3, 1) == {2, 4, 5, 6}


def test_steps_to_keep_best_already_among_the_latest_keeps_no_more():
    records = {s: rec(s, val_loss=1.0 / s) for s in (1, 2, 3, 4)}  # best is the newest
    assert steps_to_keep([1, 2, 3, 4], records, Monitor(), keep_latest=2, keep_best=1) == {3, 4}


def test_steps_to_keep_only_among_present_steps_and_unknown_metrics_are_never_best():
    records = {1: rec(1, val_loss=0.01), 2: rec(2), 3: rec(3, val_loss=math.nan), 4: rec(4, val_loss=0.5), 9: rec(9, val_loss=0.0)}
    # 9 is not on disk (deleted): never "kept"; 2 and 3 have no usable metric; 5 has no record
    assert steps_to_keep([2, 3, 4, 5, 1], records, Monitor(), keep_latest=1, keep_best=2) == {1, 4, 5}
    assert steps_to_keep([2, 3], records, Monitor(), keep_latest=1, keep_best=2) == {3}
    assert steps_to_keep([], records, Monitor(), keep_latest=3, keep_best=1) == set()


def test_steps_to_keep_max_mode():
    records = {s: rec(s, val_acc=a) for s, a in {1: 0.5, 2: 0.9, 4: 0.7, 5: 0.6}.items()}
    # the newest with a record (5), the two best (2, 4), and the steps without one (3, 6): never judged
    assert steps_to_keep([1, 2, 3, 4, 5, 6], records, Monitor("val_acc"), keep_latest=1, keep_best=2) == {2, 3, 4, 5, 6}


# ------------------------------------------------------------ CheckpointPolicy


def test_rejects_retention_that_could_delete_the_newest_step():
    with pytest.raises(ValueError, match="keep_latest"):
        CheckpointPolicy(FakeStorage(), monitor=Monitor(), keep_latest=0)
    with pytest.raises(ValueError, match="keep_latest"):
        CheckpointPolicy(FakeStorage(), monitor=Monitor(), keep_latest=True)
    with pytest.raises(ValueError, match="keep_best"):
        CheckpointPolicy(FakeStorage(), monitor=Monitor(), keep_best=-1)


def test_save_waits_then_prunes_committed_steps_then_saves():
    storage, policy = make(keep_latest=1, keep_best=0)
    run(policy, [rec(1, val_loss=0.5), rec(2, val_loss=0.4)])
    assert storage.calls == [("wait",), ("save", 1), ("wait",), ("save", 2)]  # 1 was the newest: kept
    storage.calls.clear()
    run(policy, [rec(3, val_loss=0.3)])
    assert storage.calls == [("wait",), ("delete", 1), ("save", 3)]
    assert policy.records == {1: {"val_loss": 0.5, "step": 1}, 2: {"val_loss": 0.4, "step": 2}, 3: {"val_loss": 0.3, "step": 3}}


def test_retention_over_a_run_and_finish():
    storage, policy = make(keep_latest=2, keep_best=1)
    losses = {10: 0.9, 20: 0.2, 30: 0.5, 40: 0.6, 50: 0.7, 60: 0.8}
    for s, loss in losses.items():
        run(policy, [rec(s, val_loss=loss)])
        assert len(storage.steps()) <= 2 + 1 + 1
    assert storage.steps() == [20, 40, 50, 60]  # the newest save is not pruned until committed
    policy.finish()
    assert storage.steps() == [20, 50, 60] and storage.closed
    assert storage.calls[-3:] == [("wait",), ("delete", 40), ("close",)]


def test_retention_by_max_metric_and_steps_without_it():
    storage, policy = make(keep_latest=1, keep_best=2, metric="val_acc")
    accs = {1: 0.5, 2: 0.9, 3: None, 4: 0.7, 5: 0.6, 6: None}
    run(policy, [rec(s, **({} if a is None else {"val_acc": a})) for s, a in accs.items()])
    policy.finish()
    assert storage.steps() == [2, 4, 6]


def test_resumed_run_ranks_the_steps_saved_before_from_records():
    storage, policy = make(keep_latest=2, keep_best=1)
    history = run(policy, [rec(1, val_loss=0.1), rec(2, val_loss=0.5), rec(3, val_loss=0.6)])
    policy.finish()
    assert storage.steps() == [1, 2, 3]

    resumed = CheckpointPolicy(storage, monitor=Monitor(), keep_latest=2, keep_best=1)
    resumed.records = {r["step"]: r for r in resumed.restore("latest").meta["history"]}
    assert resumed.records == {r["step"]: r for r in history}
    run(resumed, [rec(4, val_loss=0.7), rec(5, val_loss=0.8)])
    resumed.finish()
    assert storage.steps() == [1, 4, 5]

    forgetful = CheckpointPolicy(storage, monitor=Monitor(), keep_latest=2, keep_best=1)  # no records of 1, 4, 5
    run(forgetful, [rec(6, val_loss=0.9)])
    forgetful.finish()
    assert storage.steps() == [1, 4, 5, 6]  # what it has no record of is not its to delete


def test_a_damaged_step_newer_than_the_restored_one_never_costs_the_restored_one():
    storage, policy = make(keep_latest=2, keep_best=0)
    run(policy, [rec(10), rec(20)])
    policy.finish()
    storage.damaged.add(20)
    resumed = CheckpointPolicy(storage, monitor=Monitor(), keep_latest=1, keep_best=0)
    restored = resumed.restore("latest")
    assert restored.step == 10 and restored.skipped[0][0] == 20
    resumed.records = {r["step"]: r for r in restored.meta["history"] if r["step"] <= restored.step}
    run(resumed, [rec(15)])
    assert 10 in storage.steps()  # the only intact step survives until the next one is committed


def test_a_failed_save_deletes_nothing():
    storage, policy = make(keep_latest=2, keep_best=0)
    run(policy, [rec(1), rec(2)])
    storage.fail_save = True
    with pytest.raises(CheckpointError, match="step 3"):
        run(policy, [rec(3)])
    assert storage.steps() == [1, 2]
    storage.fail_save = False
    storage.fail_background = True
    run(policy, [rec(3)])  # "succeeds"; the failure surfaces at the next wait
    with pytest.raises(CheckpointError, match="step 3"):
        run(policy, [rec(4)])
    assert storage.steps() == [1, 2]
    assert ("save", 4) not in storage.calls  # not saved after an unreported failure
    run(policy, [rec(4), rec(5)])
    policy.finish()
    assert storage.steps() == [4, 5]


def test_finish_closes_even_when_the_last_save_failed():
    storage, policy = make(keep_latest=1, keep_best=0)
    run(policy, [rec(1)])
    storage.fail_background = True
    run(policy, [rec(2)])
    with pytest.raises(CheckpointError, match="step 2"):
        policy.finish()
    assert storage.closed and storage.steps() == [1]
    assert ("delete", 1) not in storage.calls


def test_restore_latest_passes_over_damaged_steps():
    skipped = []
    storage, policy = make(keep_latest=10, on_skip=lambda step, cause: skipped.append((step, cause)))
    run(policy, [rec(s, val_loss=1.0 / s) for s in (1, 2, 3, 4)])
    storage.damaged |= {3, 4}
    r = policy.restore("latest")
    assert (r.step, r.arrays) == (2, {"w": 2})
    assert [s for s, _ in r.skipped] == [4, 3] and r.skipped[0][1] == "checksum mismatch in step 4"
    assert skipped == list(r.skipped)
    assert policy.restore().step == 2  # "latest" is the default


def test_restore_best_ranks_by_the_history_of_the_newest_intact_step():
    storage, policy = make(keep_latest=10)
    run(policy, [rec(1, val_loss=0.5, val_acc=0.6), rec(2, val_loss=0.1, val_acc=0.7),
                 rec(3, val_loss=0.3, val_acc=0.9), rec(4, val_loss=0.9, val_acc=0.5)])
    storage.calls.clear()
    assert policy.restore("best").step == 2
    assert storage.calls == [("load", 4), ("load", 2)]
    acc = CheckpointPolicy(storage, monitor=Monitor("val_acc"))
    assert acc.restore("best").step == 3


def test_restore_best_when_the_newest_is_best_loads_once():
    storage, policy = make(keep_latest=10)
    run(policy, [rec(1, val_loss=0.5), rec(2, val_loss=0.1)])
    storage.calls.clear()
    assert (policy.restore("best").step, storage.calls) == (2, [("load", 2)])


def test_restore_best_passes_over_a_damaged_best():
    storage, policy = make(keep_latest=10)
    run(policy, [rec(1, val_loss=0.5), rec(2, val_loss=0.1), rec(3, val_loss=0.3), rec(4, val_loss=0.9), rec(5, val_loss=0.95)])
    storage.damaged |= {5, 2}
    r = policy.restore("best")
    assert r.step == 3
    assert [s for s, _ in r.skipped] == [5, 2]  # the newest (damaged) first, then the damaged best


def test_restore_best_only_among_steps_present():
    storage, policy = make(keep_latest=1, keep_best=0)
    run(policy, [rec(1, val_loss=0.1), rec(2, val_loss=0.5), rec(3, val_loss=0.4)])
    policy.finish()
    assert storage.steps() == [3]
    assert policy.restore("best").step == 3  # 1 was best but is gone


def test_restore_a_step_exactly():
    storage, policy = make(keep_latest=10)
    run(policy, [rec(1), rec(2)])
    assert policy.restore(1).step == 1 and policy.restore(1).skipped == ()
    storage.damaged.add(1)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        policy.restore(1)  # exactly that step: no passing over
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        policy.restore(7)


@pytest.mark.parametrize("which", ["newest", "", True, 1.5, None])
def test_restore_rejects_other_choices(which):
    _, policy = make()
    with pytest.raises(ValueError, match="latest"):
        policy.restore(which)


def test_restore_errors_are_one_line_and_name_the_directory():
    storage, policy = make(keep_latest=10)
    with pytest.raises(CheckpointError) as info:
        policy.restore("latest")
    assert str(info.value) == "checkpoint directory /runs/a/checkpoints: no checkpoints saved yet"

    run(policy, [rec(1, val_loss=math.nan), rec(2)])
    with pytest.raises(CheckpointError) as info:
        policy.restore("best")
    assert str(info.value) == (
        "checkpoint directory /runs/a/checkpoints: no checkpoint has a finite 'val_loss' to pick the best by (steps: 1, 2)"
    )

    storage.damaged |= {1, 2}
    with pytest.raises(CheckpointError) as info:
        policy.restore("best")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("checkpoint directory /runs/a/checkpoints: no intact checkpoint (")
    assert "step 2: checksum mismatch in step 2; step 1: checksum mismatch in step 1" in msg


def test_close_closes_the_storage():
    storage, policy = make()
    policy.close()
    assert storage.closed and storage.calls == [("close",)]
