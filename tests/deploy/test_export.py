"""`jaxyard export`: each task's run in each format, loaded back in one fresh process that never
imports jaxyard (jax.export, onnxruntime, the safetensors reference reader) and compared with
jaxyard's own outputs; the safetensors writer against the reference reader; one-line refusals."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import assert_one_line_error, clean_environ

pytestmark = pytest.mark.xdist_group("deploy")  # the runs of tests/deploy/conftest.py, trained once

TASKS = ("classification", "regression", "next_token")

# The ONNX tests need the onnx extra, which the test extra leaves out (jax2onnx pins an older
# orbax-checkpoint): .ci/run installs it after the suite and runs them (`-m onnx`).
HAS_JAX2ONNX = importlib.util.find_spec("jax2onnx") is not None


def ONNX(test):
    """Marked ``onnx`` (``-m onnx`` selects it) and skipped without jax2onnx."""
    skip = pytest.mark.skipif(not HAS_JAX2ONNX, reason="needs the onnx extra: pip install 'jaxyard[onnx]' (.ci/run runs it after the suite)")
    return pytest.mark.onnx(skip(test))

# A fresh interpreter: each artifact loaded without jaxyard, called on the reference rows; what it
# measured as JSON on the last line.
_LOAD = r"""
import json, sys
import numpy as np
ref, cases = np.load(sys.argv[1]), json.loads(sys.argv[2])
report = {}
for task, files in cases.items():
    x, want = ref[task + "/x"], ref[task + "/want"]
    got, entry = {}, {}
    if "jax" in files:
        import jax
        with open(files["jax"], "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        got["jax"] = np.asarray(exported.call(x))
    if "onnx" in files:
        import onnxruntime
        session = onnxruntime.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
        got["onnx"] = session.run(None, {"x": x})[0]
    report[task] = entry
    if "safetensors" not in files:
        entry.update(diff={k: float(np.max(np.abs(v.astype(np.float64) - want))) for k, v in got.items()})
        continue
    from safetensors import safe_open
    from safetensors.numpy import load_file
    tensors = load_file(files["safetensors"])
    with safe_open(files["safetensors"], "np") as f:
        metadata = f.metadata()
    if task == "classification":  # the mlp's forward pass from the named tensors alone
        h = np.maximum(x @ tensors["hidden.0.kernel"] + tensors["hidden.0.bias"], 0.0)
        got["safetensors"] = h @ tensors["head.kernel"] + tensors["head.bias"]
    params = sorted(k.split("/", 2)[2] for k in ref.files if k.startswith(task + "/param/"))
    entry.update({
        "diff": {k: float(np.max(np.abs(v.astype(np.float64) - want))) for k, v in got.items()},
        "shapes": {k: list(v.shape) for k, v in got.items()},
        "tensors": sorted(tensors), "params": params,
        "tensor_diff": max(float(np.max(np.abs(tensors[k] - ref[task + "/param/" + k]))) for k in params),
        "metadata": metadata,
    })
report["jaxyard_imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "jaxyard")
print("\nLOADED " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """Each task's run exported in each format, jaxyard's outputs on 11 rows (the 8 of the test
    split the exporter keeps, and 3 more: another batch size than any seen) and its parameters."""
    import jax
    from flax import nnx

    from jaxyard.core.deploy.export import export
    from jaxyard.core.deploy.loading import load_trained
    from jaxyard.core.deploy.safetensors import tensor_names

    out = tmp_path_factory.mktemp("exported")
    cases, reference = {}, {}
    for task in TASKS:
        run = trained_run(task)
        trained = load_trained(run)
        x = np.concatenate([trained.sample, trained.sample[:3][:, ::-1].copy()])
        reference[f"{task}/x"] = x
        reference[f"{task}/want"] = np.asarray(jax.jit(trained.function())(x), np.float64)
        for name, array in tensor_names(nnx.state(trained.model, nnx.Param)).items():
            reference[f"{task}/param/{name}"] = array
        cases[task] = {fmt: export(run, format=fmt, out=out / task / f"model.{fmt}") for fmt in ("jax", "safetensors")}
    np.savez(out / "reference.npz", **reference)
    return cases, out / "reference.npz"


def load_without_jaxyard(files: dict, reference) -> dict:
    """What the fresh interpreter measured for ``files`` (task -> format -> path); it imported no jaxyard."""
    paths = {task: {fmt: str(path) for fmt, path in formats.items()} for task, formats in files.items()}
    proc = subprocess.run([sys.executable, "-c", _LOAD, str(reference), json.dumps(paths)], capture_output=True, text=True,
                          env=clean_environ(), cwd=reference.parent)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LOADED ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    report = json.loads(lines[-1].removeprefix("LOADED "))
    assert report.pop("jaxyard_imported") == []
    return report


@pytest.mark.slow  # a fresh interpreter importing jax
def test_every_artifact_loads_without_jaxyard_and_matches_its_outputs(exported):
    cases, reference = exported
    report = load_without_jaxyard({task: {fmt: done.path for fmt, done in formats.items()} for task, formats in cases.items()}, reference)
    for task, got in report.items():
        assert got["diff"]["jax"] <= 1e-5, (task, got)
        assert got["tensors"] == got["params"] and got["tensor_diff"] == 0.0, (task, got)
        assert got["metadata"]["model"] == {"classification": "mlp", "regression": "mlp", "next_token": "transformer"}[task]
        assert json.loads(got["metadata"]["task"])["name"] == task
        assert got["metadata"]["format"] == "flax" and got["metadata"]["jaxyard.format"] == "flax.nnx"  # what HF tools read
    assert report["classification"]["diff"]["safetensors"] <= 1e-5
    assert report["next_token"]["shapes"]["jax"] == [11, 8, 12]  # (rows, seq_len, vocab): batch size symbolic
    assert json.loads(report["classification"]["metadata"]["model_params"])["hidden_dims"] == [32]


def test_the_jax_sidecar_says_what_the_artifact_reads_and_where_it_comes_from(exported, trained_run):
    cases, _ = exported
    done = cases["next_token"]["jax"]
    meta = json.loads(done.sidecar.read_text())
    assert done.sidecar.name == "model.jax.json"
    assert meta["input"] == {"name": "x", "shape": ["b", 8], "dtype": "int32"}
    assert meta["outputs"] == [{"name": "output", "shape": ["b", 8, 12], "dtype": "float32"}]
    assert meta["task"]["name"] == "next_token" and meta["context"]["vocab_size"] == 12
    assert meta["source"]["run_dir"] == str(trained_run("next_token").resolve()) and meta["source"]["step"] == done.step == 4
    assert {"jaxyard", "jax"} <= set(meta["versions"]) and meta["platforms"] == ["cpu", "cuda"] == list(done.platforms)


def test_the_safetensors_writer_is_read_back_by_the_reference_reader(tmp_path):
    """Every dtype the format names that numpy holds, scalars and empty arrays, sorted names, metadata strings."""
    import ml_dtypes
    from safetensors import safe_open

    from jaxyard.core.deploy.safetensors import decode, encode

    rng = np.random.default_rng(0)
    tensors = {f"t.{dtype}": rng.normal(size=(2, 3)).astype(dtype) for dtype in ("float32", "float64", "float16", "int8", "int32",
                                                                                  "int64", "uint8")}
    tensors.update({"bf16": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16), "flag": np.array([True, False]),
                    "scalar": np.float32(3.5), "empty": np.zeros((0, 4), np.float32)})
    path = tmp_path / "m.safetensors"
    path.write_bytes(encode(tensors, {"model": "mlp", "n": 3}))
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"model": "mlp", "n": "3"}
        assert sorted(f.keys()) == sorted(tensors)
        for name, array in tensors.items():
            if name == "bf16":  # the reference reader's numpy backend has no bfloat16: compared as bytes
                continue
            read = f.get_tensor(name)
            assert read.dtype == np.asarray(array).dtype and np.array_equal(read, array), name
    back, metadata = decode(path.read_bytes())
    assert metadata == {"model": "mlp", "n": "3"}
    assert all(np.array_equal(back[k], np.asarray(v)) and back[k].dtype == np.asarray(v).dtype for k, v in tensors.items())


def test_export_through_the_cli_writes_to_the_run_directory_by_default(run_cli, trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run("classification"), run)
    result = run_cli(["export", run, "--format", "safetensors", "--checkpoint", "best"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert (run / "export" / "model.safetensors").is_file()
    assert f"Exported {run} at checkpoint step 7 (epoch 1, best) as safetensors: {run / 'export' / 'model.safetensors'}" in result.stdout
    assert [p.name for p in (run / "export").iterdir()] == ["model.safetensors"]  # no temporary file left
    from jaxyard.core.deploy.safetensors import decode

    metadata = decode((run / "export" / "model.safetensors").read_bytes())[1]
    assert metadata["format"] == "flax" and metadata["jaxyard.format"] == "flax.nnx"  # "format": pt|tf|flax|mlx for HF tools


def test_a_jax_artifact_lowered_for_this_platform_alone_says_so(run_cli, trained_run, tmp_path, monkeypatch):
    """A model without a lowering for cpu and cuda together is exported for this machine's
    platform: said in one line, and in the sidecar."""
    import jax

    real = jax.export.export

    def export(function, *, platforms, **kwargs):
        if len(platforms) > 1:
            raise NotImplementedError("MLIR translation rule for primitive 'made_up' not found for platform cuda")
        return real(function, platforms=platforms, **kwargs)

    monkeypatch.setattr(jax.export, "export", export)
    result = run_cli(["export", trained_run("classification"), "--out", tmp_path / "model.jax"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    line = next(line for line in result.stdout.splitlines() if line.startswith("Runs on"))
    assert line.startswith("Runs on: cpu only (the model has no lowering for cpu and cuda together: NotImplementedError: MLIR")
    assert line.endswith("export on a machine of the platform to run on")
    meta = json.loads((tmp_path / "model.jax.json").read_text())
    assert meta["platforms"] == ["cpu"] and "made_up" in meta["platforms_note"]


def test_a_missing_onnx_extra_is_one_line_and_writes_nothing(run_cli, trained_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # import jax2onnx raises ImportError
    result = run_cli(["export", trained_run("classification"), "--format", "onnx", "--out", tmp_path / "m.onnx"])
    assert_one_line_error(result, "jaxyard export --format onnx needs jax2onnx", "pip install 'jaxyard[onnx]'")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_bad_checkpoint_and_an_ema_the_run_never_kept(run_cli, trained_run, tmp_path):
    run = trained_run("classification")
    result = run_cli(["export", run, "--checkpoint", "first", "--out", tmp_path / "m.jax"])
    assert_one_line_error(result, "--checkpoint 'first': expected latest, best or a step number")
    result = run_cli(["export", run, "--weights", "ema", "--out", tmp_path / "m.jax"])
    assert_one_line_error(result, "--weights ema:", "run.ema_decay = 0")
    assert list(tmp_path.iterdir()) == []


@ONNX
def test_onnx_artifacts_load_in_onnxruntime_without_jaxyard_and_match_its_outputs(exported, trained_run):
    from jaxyard.core.deploy.export import export

    _, reference = exported
    files = {}
    for task in TASKS:
        done = export(trained_run(task), format="onnx", out=reference.parent / task / "model.onnx")
        assert done.difference <= 1e-4
        files[task] = {"onnx": done.path}
    for task, got in load_without_jaxyard(files, reference).items():
        assert got["diff"]["onnx"] <= 1e-4, (task, got)


@ONNX
def test_an_onnx_file_that_disagrees_with_jaxyard_is_not_written(trained_run, tmp_path, monkeypatch):
    import onnxruntime

    real = onnxruntime.InferenceSession.run
    monkeypatch.setattr(onnxruntime.InferenceSession, "run", lambda self, *a, **k: [o + 1e-3 for o in real(self, *a, **k)])
    from jaxyard.core.deploy.export import export
    from jaxyard.core.errors import UsageError

    with pytest.raises(UsageError, match=r"the ONNX conversion of model 'mlp' gives outputs \(8, 4\) differing from jaxyard's "
                                         r"\(8, 4\) by 0.001 \(more than 0.0001\) on 8 rows of .*: not written"):
        export(trained_run("classification"), format="onnx", out=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@ONNX
def test_a_model_jax2onnx_cannot_convert_is_named_in_one_line():
    """The rnn's nnx.RNN layers draw a random key when called: the refusal names the model and the op."""
    import types

    from flax import nnx

    from jaxyard.core.deploy.export import onnx_artifact
    from jaxyard.core.deploy.loading import Trained
    from jaxyard.core.errors import UsageError
    from jaxyard.plugins.models import rnn

    model = rnn.factory(rnn.Params(hidden=4), input_shape=(6,), num_outputs=5, rngs=nnx.Rngs(0), vocab_size=5)
    model.eval()
    config = types.SimpleNamespace(model=types.SimpleNamespace(name="rnn"))
    trained = Trained(None, config, model, None, {}, np.zeros((2, 6), np.int32), 1, 1, "latest", "model")
    with pytest.raises(UsageError, match=r"^jax2onnx \S+ cannot convert model 'rnn': it draws random numbers when called "
                                         r"\(random_\w+\), which ONNX cannot hold; .* \(--format jax exports every model\)$"):
        onnx_artifact(trained)


@ONNX
def test_the_cnn_converts_to_onnx_and_matches_jaxyard(tmp_path):
    """The cnn's max pooling (by keyword: the form jax2onnx converts) and its batch norm in evaluation mode."""
    import types

    from flax import nnx

    from jaxyard.core.deploy.export import onnx_artifact
    from jaxyard.core.deploy.loading import Trained
    from jaxyard.plugins.models import cnn

    model = cnn.factory(cnn.Params(channels=[4, 8]), input_shape=(8, 8, 1), num_outputs=3, rngs=nnx.Rngs(0))
    model.eval()
    choice = types.SimpleNamespace(name="cnn", key="cnn", params=cnn.Params(channels=[4, 8]))
    config = types.SimpleNamespace(model=choice, task=choice)
    sample = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
    trained = Trained(tmp_path, config, model, None, {}, sample, 1, 1, "latest", "model")
    blob, difference = onnx_artifact(trained)
    assert blob and difference <= 1e-4
