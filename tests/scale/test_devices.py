"""Several devices in one process: 4 host devices against 1 give the same numbers, with the state
replicated or sharded, and a checkpoint moves between layouts.

The device count is fixed when jax starts, so the 4-device runs happen in one subprocess started
with 4 host devices (`--cpu-devices` does the same for the CLI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import as_options, assert_one_line_error, clean_environ, tiny

pytestmark = pytest.mark.xdist_group("devices")  # one worker computes the module's 4-device runs

# The tiny workload in batches of 32 (the last of each epoch partial), 3 epochs, saved every epoch.
TINY = tiny("run.epochs=3", "run.batch_size=32", "run.save_every=1")
# The same as a regression of 2 float targets per example (its loader's 100 examples of 16 features), unsaved.
REGRESSION = tiny("run.epochs=3", "run.batch_size=32", "run.checkpointer=none", "run.task=regression", "run.loader=regression",
                  "loader.targets=2", without=["loader.classes"])
# a language model in steps (its sums count tokens; 100 windows of 8 tokens, 9 batches validated every 4)
NEXT_TOKEN = tiny("run.steps=9", "run.eval_every=4", "run.batch_size=32", "run.checkpointer=none", "run.task=next_token",
                  "run.loader=tokens", "loader.train_size=100", "loader.val_size=20", "loader.test_size=20", "loader.seq_len=8",
                  without=["loader"])

SCRIPT = """
import json, sys
from pathlib import Path
import jax, jaxyard
from jaxyard.core.registry.loading import build_registry
from jaxyard.core.registry.settings import Settings
from jaxyard.core.registry.config import resolve_config
from jaxyard.core.train.engine import train, resume, evaluate

out = Path(sys.argv[1]); sets = json.loads(sys.argv[2])
registry = build_registry()
def config(*extra):
    return resolve_config(registry, Settings(), sets=[*sets, *extra])
histories = {}
for name, extra in {"1": ["run.devices=1"], "all": [], "4 sharded": ["run.devices=4", "run.shard_params=true"]}.items():
    result = train(config(*extra), out_dir=out / name.replace(" ", "-"))
    histories[name] = [[r["train_loss"], r["val_loss"], r["val_acc"]] for r in result.history] + [[result.test["test_loss"]]]

class Interrupt:  # stops the run after its epoch-2 checkpoint, as a kill would
    @jaxyard.hookimpl
    def jaxyard_on_checkpoint_saved(self, run, step, path, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt
registry.plugin_manager.register(Interrupt(), name="interrupt")
try:
    train(config("run.devices=4", "run.shard_params=true"), out_dir=out / "moved")
except KeyboardInterrupt:
    pass
registry.plugin_manager.unregister(name="interrupt")
moved = resume(out / "moved", registry=registry, devices=1, shard_params=False)
histories["4 sharded -> 1"] = [[r["train_loss"], r["val_loss"], r["val_acc"]] for r in moved.history] + [[moved.test["test_loss"]]]
ev = evaluate(out / "4-sharded", registry=registry)
try:
    train(config("run.devices=4", "run.batch_size=34"), out_dir=out / "odd")
    odd = None
except jaxyard.UsageError as err:
    odd = str(err)
tasks = {}  # other tasks on the same devices: every metric of every epoch, and the test's
for task, argument in (("regression", sys.argv[3]), ("next_token", sys.argv[4])):
    tasks[task] = {}
    for name, extra in {"1": ["run.devices=1"], "4": ["run.devices=4"]}.items():
        result = train(resolve_config(registry, Settings(), sets=[*json.loads(argument), *extra]), out_dir=out / f"{task}-{name}")
        tasks[task][name] = [{k: v for k, v in r.items() if not k.endswith("_time")} for r in result.history] + [result.test]
print(json.dumps({"devices": jax.device_count(), "histories": histories, "eval": ev.test_loss, "odd": odd,
                  "odd_written": (out / "odd").exists(), **tasks}))
"""


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("devices")
    env = clean_environ(XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip())  # the suite's too
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), json.dumps(TINY), json.dumps(REGRESSION),
                           json.dumps(NEXT_TOKEN)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), out


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["all", "4 sharded", "4 sharded -> 1"])  # all: the 4 devices
def test_four_devices_match_one_within_1e5(four_devices, layout):
    data, _ = four_devices
    assert data["devices"] == 4
    one, other = data["histories"]["1"], data["histories"][layout]
    assert len(one) == len(other) == 4
    for a, b in zip(one, other, strict=True):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6), layout


@pytest.mark.slow
@pytest.mark.parametrize(("task", "rounds", "metrics"), [("regression", 3, {"val_mse", "val_mae", "val_r2"}),
                                                      ("next_token", 3, {"val_perplexity", "val_token_acc"})])
def test_another_task_on_four_devices_matches_one_within_1e5(four_devices, task, rounds, metrics):
    data, _ = four_devices
    one, four = data[task]["1"], data[task]["4"]
    assert len(one) == len(four) == rounds + 1 and metrics <= one[0].keys() and f"test_{sorted(metrics)[0][4:]}" in one[-1]
    for a, b in zip(one, four, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a.get("epoch", "test"), key)


@pytest.mark.slow
def test_eval_reads_a_sharded_run_on_one_device(four_devices):
    data, _ = four_devices
    assert data["eval"] == pytest.approx(data["histories"]["4 sharded"][-1][0], rel=1e-5)


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_devices_is_refused_before_anything_is_written(four_devices):
    data, _ = four_devices
    assert data["odd"] == "run.batch_size = 34 does not divide over 4 devices (run.devices = 4); use a multiple of 4, e.g. 36"
    assert not data["odd_written"]


def test_layout_errors_are_one_line(run_cli, tmp_path):
    sets = as_options(TINY)
    result = run_cli(["run", "--devices", "2", "--out", str(tmp_path / "a"), *sets])
    assert_one_line_error(result, "run.devices = 2, but this process has 1 cpu device(s)", "--cpu-devices N")
    result = run_cli(["run", "--devices", "0", "--out", str(tmp_path / "b"), *sets])
    assert_one_line_error(result, "devices = 0 is invalid")
    result = run_cli(["run", "--set", "run.shard_params=true", "--devices", "1", "--out", str(tmp_path / "c"), *sets])
    assert_one_line_error(result, "run.shard_params = true needs several devices")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_cli_cpu_devices_splits_the_batch_and_says_so(tmp_path):
    sets = as_options(TINY)
    check_cmd = [sys.executable, "-m", "jaxyard.cli", "--cpu-devices", "2", "check", "--devices", "2", *sets, "--memory-limit", "0.000001"]
    check = subprocess.run(check_cmd, env=clean_environ(), capture_output=True, text=True)
    assert check.returncode == 2, check.stderr
    assert "on 2 cpu devices, batch split along 'data'" in check.stdout and "fits:              NO" in check.stdout
    assert check.stderr.startswith("Error: model 'mlp' needs") and "--memory-limit" in check.stderr and check.stderr.count("\n") == 1
