"""Where a plugin meets the engine: legal-but-unusual optimizers train; a broken factory, a result
that breaks its contract, a bad streamed batch are each one line naming who, before training."""

import pytest

from helpers import LOCAL, as_options, assert_one_line_error, tiny

CONTRACTS = LOCAL / "contracts.py"
PLUGIN = f"plugin {CONTRACTS}"
STREAMED = tiny(without=["loader"])  # the faulty-stream loader has parameters of its own


def run(run_cli, tmp_path, *args, sets=None):
    sets = tiny() if sets is None else sets
    return run_cli(["--plugin", CONTRACTS, "run", "--out", tmp_path / "run", "--epochs", "2", "--batch-size", "16", *args, *as_options(sets)])


@pytest.mark.parametrize("optimizer", ["keep-params", "sam"])
@pytest.mark.parametrize("loader", ["synthetic", "faulty-stream"])
def test_optimizer_state_holding_the_parameters_trains(run_cli, tmp_path, optimizer, loader):
    """No "donate the same buffer twice": in memory and streamed, checkpointed every epoch."""
    result = run(run_cli, tmp_path, "--optimizer", optimizer, "--loader", loader, "--set", "run.save_every=1",
                 sets=tiny() if loader == "synthetic" else STREAMED)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--optimizer", "raises"], ["optimizer 'raises' (", PLUGIN, "failed: ValueError: this optimizer needs run.clip_norm > 0"]),
        (["--model", "raising"], ["model 'raising' (", PLUGIN, "failed: RuntimeError: no GPU kernel for this layer"]),
        (["--optimizer", "uncalled"],
         ["optimizer 'uncalled' (", "returned function, not an optax.GradientTransformation (did you return optax.adam instead of calling it?)"]),
        (["--scheduler", "float-schedule"], ["scheduler 'float-schedule' (", "returned float, not a schedule"]),
        (["--scheduler", "nan-schedule"], ["scheduler 'nan-schedule' (", "gives the learning rate nan at step 0"]),
    ],
)
def test_a_broken_factory_or_result_is_one_line_before_anything_is_written(run_cli, tmp_path, args, fragments):
    sets = tiny(without=["model"]) if "--model" in args else tiny()  # hidden_dims belongs to mlp
    err = assert_one_line_error(run(run_cli, tmp_path, *args, sets=sets), *fragments, exit_code=1)  # a plugin's bug: PluginError
    assert not (tmp_path / "run").exists(), err


def test_debug_shows_the_plugins_traceback(tmp_path):
    import subprocess
    import sys

    from helpers import REPO, clean_environ

    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "--debug", "--plugin", str(CONTRACTS), "run", "--out",
                           str(tmp_path / "run"), "--optimizer", "raises", *as_options(tiny())],
                          env=clean_environ(), capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and 'raise ValueError("this optimizer needs run.clip_norm > 0")' in proc.stderr


def test_a_step_that_cannot_trace_names_model_and_optimizer(run_cli, tmp_path):
    assert_one_line_error(run(run_cli, tmp_path, "--optimizer", "lookahead"), "tracing the training step failed with model 'mlp'",
                          "optimizer 'lookahead' (", "AttributeError", exit_code=1)


@pytest.mark.parametrize(
    "fault, fragment",
    [
        ("shape", "loader 'faulty-stream': the first train batch has examples of shape (5,); the loader declares input_shape (8,)"),
        ("labels", "loader 'faulty-stream': the first train batch has labels 0..7, outside 0..3 (num_classes)"),
        ("nan", "loader 'faulty-stream': the first train batch: example 1 has a non-finite feature (nan)"),
    ],
)
def test_a_bad_streamed_batch_names_the_loader(run_cli, tmp_path, fault, fragment):
    result = run(run_cli, tmp_path, "--loader", "faulty-stream", "--set", f"loader.fault={fault}", sets=STREAMED)
    assert_one_line_error(result, fragment)


def test_an_os_error_names_the_component(run_cli, tmp_path):
    missing = tmp_path / "nope.npz"
    result = run_cli(["run", "--out", tmp_path / "run", "--loader", "npz", "--set", f"loader.path={missing}"])
    assert_one_line_error(result, "loader 'npz'", str(missing))


def test_eval_and_resume_say_which_plugin_a_run_needs(run_cli, tmp_path):
    out = tmp_path / "run"
    assert run(run_cli, tmp_path, "--optimizer", "sam").exit_code == 0
    sources = __import__("json").loads((out / "components.json").read_text())
    assert sources["optimizer"] == {"name": "sam", "qualified": "contracts:sam", "plugin": str(CONTRACTS), "source": "local",
                                    "module": str(CONTRACTS), "distribution": None, "version": None}
    for command in (["eval", out], ["resume", out]):
        assert_one_line_error(run_cli(command), f"was trained with optimizer 'sam' from plugin {CONTRACTS}, which is not loaded: "
                                                f"add --plugin {CONTRACTS}")
    assert run_cli(["--plugin", CONTRACTS, "eval", out]).exit_code == 0


def test_plugin_module_name_is_found_in_the_current_directory(tmp_path, monkeypatch):
    import sys

    import jaxyard

    (tmp_path / "my_cwd_plugin.py").write_text((LOCAL / "npz_checkpointer.py").read_text())
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    registry = jaxyard.build_registry(plugins=["my_cwd_plugin"], strict=True)
    assert "npz" in registry.names("checkpointer")
    assert sys.path == before  # the current directory was only borrowed
