"""The commands around a destination a data file names: what they print to type, and which refuse.

- a sweep's "rerun it alone" command gives the trial's destinations again (``run --config``
  alone is refused);
- ``schedule --config`` builds no logger: a logger's destination there sends nothing, and is not
  refused (as ``eval``);
- ``sweep --resume DIR --set run.epochs=5`` says that no --set changes a sweep being resumed
  before anything about base.toml's destination, whose refusal gives the whole command to type.

Nothing is trained: the sweep directories are written, not run.
"""

from __future__ import annotations

import shlex

import pytest

from jaxyard.core.errors import UsageError
from jaxyard.core.experiments import compare as C
from jaxyard.core.experiments import sweep as S
from jaxyard.core.registry.config import resolve_config
from jaxyard.core.registry.loading import build_registry
from jaxyard.core.registry.settings import Settings

from helpers import assert_one_line_error, tiny

pytest.importorskip("optuna")

SERVER = "http://127.0.0.1:9/mlflow"  # never contacted: nothing here builds a logger


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def destination_sweep(registry, out):
    """A sweep directory of two trials logging to a tracking server the command line named."""
    sets = [*tiny("run.epochs=1"), f"logger.mlflow.tracking_uri={SERVER}"]
    return S.new(S.resolver(registry, loggers=["mlflow"]), options={"learning_rate": "1e-3,1e-2"}, sets=sets, out=out, prune="none")


def test_the_rerun_command_gives_the_trials_destination_again(registry, tmp_path):
    out = destination_sweep(registry, tmp_path / "sweep with space")
    trial = S.TRIALS + "/0001"
    config = resolve_config(registry, Settings(), config_file=str(out / S.BASE), sets=[f"logger.mlflow.tracking_uri={SERVER}"])
    (out / trial).mkdir(parents=True)
    (out / trial / "config.toml").write_text(config.to_toml())
    command = C.rerun_command(out / trial, registry)
    path = out / trial / "config.toml"
    assert command == f"jaxyard run --config {shlex.quote(str(path))} --set logger.mlflow.tracking_uri={SERVER}"
    words = shlex.split(command)
    with pytest.raises(UsageError, match="sends the run's data outside its run directory"):
        resolve_config(registry, Settings(), config_file=words[3])  # without the --set: run refuses it
    assert resolve_config(registry, Settings(), config_file=words[3], sets=words[5::2]).loggers[-1].params.tracking_uri == SERVER


def test_the_rerun_command_of_a_trial_without_destinations_is_the_config_alone(registry, tmp_path):
    out = S.new(S.resolver(registry), options={"learning_rate": "1e-3,1e-2"}, sets=tiny("run.epochs=1"), out=tmp_path / "s", prune="none")
    (out / "trials/0000").mkdir(parents=True)
    (out / "trials/0000/config.toml").write_text((out / S.BASE).read_text())
    assert C.rerun_command(out / "trials/0000", registry) == f"jaxyard run --config {out / 'trials/0000/config.toml'}"
    assert C.rerun_command(out / "trials/0009", registry) == f"jaxyard run --config {out / 'trials/0009/config.toml'}"  # gone


def test_schedule_builds_no_logger_so_a_loggers_destination_is_not_refused(run_cli, tmp_path):
    experiment = tmp_path / "e.toml"
    experiment.write_text(f'[run]\nloggers = ["mlflow"]\n[logger.mlflow]\ntracking_uri = "{SERVER}"\n')
    result = run_cli(["schedule", "--config", str(experiment), "--steps-per-epoch", "10", "--points", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("cosine: peak 0.001")
    # run, which builds it, still refuses it
    assert_one_line_error(run_cli(["run", "--config", str(experiment), "--epochs", "1"]), "tracking_uri", "cannot choose")


def test_sweep_resume_refuses_another_set_before_base_tomls_destination(run_cli, registry, tmp_path):
    out = destination_sweep(registry, tmp_path / "sweep")
    result = run_cli(["sweep", "--resume", str(out), "--set", "run.epochs=5"])
    assert_one_line_error(result, "--set 'run.epochs=5' cannot change a sweep being resumed", "start a new sweep")
    result = run_cli(["sweep", "--resume", str(out), "--set", "run.epochs=5", "--set", f"logger.mlflow.tracking_uri={SERVER}"])
    assert_one_line_error(result, "--set 'run.epochs=5' cannot change a sweep being resumed")


def test_sweep_resume_refusing_base_tomls_destination_gives_the_command_to_type(run_cli, registry, tmp_path):
    out = destination_sweep(registry, tmp_path / "sweep")
    result = run_cli(["sweep", "--resume", str(out)])
    assert_one_line_error(result, f"{out / S.BASE}: [logger.mlflow] tracking_uri = {SERVER!r} sends the trials' data outside",
                          f"to allow it, give it yourself: jaxyard sweep --resume {out} --set logger.mlflow.tracking_uri={SERVER}")
    assert S.destinations(out, registry, [f"logger.mlflow.tracking_uri={SERVER}"]) == [f"logger.mlflow.tracking_uri={SERVER}"]
