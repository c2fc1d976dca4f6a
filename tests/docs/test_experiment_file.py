"""examples/experiment.toml, the experiment file the README and `run --help` show: it resolves, every
value it sets is the run's, and the command line overrides it. (The README's page test trains it.)"""

from __future__ import annotations

import tomllib
from pathlib import Path

EXPERIMENT = Path(__file__).resolve().parent.parent.parent / "examples" / "experiment.toml"


def test_the_example_experiment_file_is_what_the_run_resolves(run_cli, monkeypatch):
    monkeypatch.chdir(EXPERIMENT.parent.parent)  # the docs' working directory: the checkout
    result = run_cli(["run", "--config", "examples/experiment.toml", "--dry-run"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    resolved, written = tomllib.loads(result.stdout), tomllib.loads(EXPERIMENT.read_text())
    assert written["run"].items() <= resolved["run"].items()
    for kind, tables in written.items():
        if kind != "run":
            for name, values in tables.items():
                assert values.items() <= resolved[kind][name].items(), (kind, name)
    overridden = run_cli(["run", "--config", "examples/experiment.toml", "--epochs", "1", "--set", "model.hidden_dims=16", "--dry-run"])
    assert overridden.exit_code == 0, overridden.stderr
    resolved = tomllib.loads(overridden.stdout)
    assert resolved["run"]["epochs"] == 1 and resolved["model"]["mlp"]["hidden_dims"] == [16]
