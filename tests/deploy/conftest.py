"""The tiny trained runs that export and predict read: one per task, each trained once per worker
(the deploy modules share an xdist group, so one worker trains them) and never written to by a
test (exports go to the test's own tmp_path)."""

from __future__ import annotations

import os
import types

import pytest
from click.testing import CliRunner

from helpers import as_options, tiny

# 1 epoch of the suite's tiny workloads: an mlp on 4 classes, an mlp on 2 float targets, and a
# transformer language model (width 16, one block) on sequences of 8 tokens of a 12-token vocabulary
RUNS = {
    "classification": ["--epochs", "1", *as_options(tiny())],
    "regression": ["--task", "regression", "--loader", "regression", "--epochs", "1",
                   *as_options(["loader.train_size=64", "loader.val_size=16", "loader.test_size=16", "loader.features=6",
                                "loader.targets=2", "model.hidden_dims=16"])],
    "next_token": ["--task", "next_token", "--loader", "tokens", "--model", "transformer", "--epochs", "1",
                   *as_options(["loader.train_size=64", "loader.val_size=16", "loader.test_size=16", "loader.vocab=12",
                                "loader.seq_len=8", "model.dim=16", "model.layers=1", "model.heads=2", "model.dropout_rate=0.0"])],
}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``trained_run("classification")``: the directory of a finished tiny run of that task (shared: read only)."""
    from jaxyard.cli import cli

    made: dict[str, types.SimpleNamespace] = {}

    def make(task: str):
        if task not in made:
            out = tmp_path_factory.mktemp(f"deploy-{task}") / "run"
            args = ["run", "--out", str(out), "--batch-size", "16", *RUNS[task], *as_options(["run.curves=false"])]
            unset = {var: None for var in os.environ if var.startswith("JAXYARD_")}
            result = CliRunner().invoke(cli, args, env=unset)
            assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
            made[task] = out
        return made[task]

    return make
