"""`jaxyard predict`: each task's postprocessing from a run directory and from its jax artifact
(the two agree), batching, the three output formats, greedy generation equal to a hand-written
loop, and one-line refusals of bad inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from helpers import assert_one_line_error

pytestmark = pytest.mark.xdist_group("deploy")  # the runs of tests/deploy/conftest.py, trained once


@pytest.fixture(scope="module")
def artifact(trained_run, tmp_path_factory):
    """``artifact("classification")``: the jax artifact of that task's run (exported once)."""
    from jaxyard.core.deploy.export import export

    made = {}

    def make(task):
        if task not in made:
            made[task] = export(trained_run(task), format="jax", out=tmp_path_factory.mktemp(f"artifact-{task}") / "model.jax").path
        return made[task]

    return make


def predicted(run_cli, *args):
    result = run_cli(["predict", *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def test_classification_from_the_run_and_from_its_artifact(run_cli, trained_run, artifact, tmp_path):
    """Classes are the argmax of probabilities that sum to 1; 10 rows in batches of 4 (the last
    padded) give what one batch gives; the artifact gives what the run gives."""
    x = np.random.default_rng(1).normal(size=(10, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = predicted(run_cli, trained_run("classification"), "--input", tmp_path / "in.npz", "--output", tmp_path / "run.npz")
    assert f"Predicted 10 examples with {trained_run('classification')} at checkpoint step 7 (epoch 1, latest)" in out
    assert "class (10,), probabilities (10, 4)" in out
    predicted(run_cli, artifact("classification"), "--input", tmp_path / "in.npz", "--output", tmp_path / "art.npz",
              "--batch-size", "4")
    run, art = np.load(tmp_path / "run.npz"), np.load(tmp_path / "art.npz")
    assert sorted(run.files) == ["class", "probabilities"] and run["class"].dtype == np.int32
    np.testing.assert_allclose(run["probabilities"].sum(axis=1), 1.0, atol=1e-6)
    assert np.array_equal(run["class"], run["probabilities"].argmax(axis=1))
    np.testing.assert_allclose(art["probabilities"], run["probabilities"], atol=1e-5)
    assert np.array_equal(art["class"], run["class"])


def test_regression_values_as_csv_and_jsonl(run_cli, trained_run, tmp_path):
    """A CSV with a header row in; one row per example out, a column per target; the values are the model's."""
    import jax

    from jaxyard.core.deploy.loading import load_trained

    run = trained_run("regression")
    x = np.random.default_rng(2).normal(size=(5, 6))
    (tmp_path / "in.csv").write_text("a,b,c,d,e,f\n" + "".join(",".join(repr(float(v)) for v in row) + "\n" for row in x))
    predicted(run_cli, run, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.csv")
    predicted(run_cli, run, "--input", tmp_path / "in.csv", "--output", tmp_path / "out.jsonl")
    trained = load_trained(run)
    want = np.asarray(jax.jit(trained.function())(x.astype(np.float32)))
    rows = list(csv.reader((tmp_path / "out.csv").read_text().splitlines()))
    assert rows[0] == ["value_0", "value_1"] and len(rows) == 6
    np.testing.assert_allclose(np.asarray(rows[1:], float), want, atol=1e-5)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([line["value"] for line in lines], want, atol=1e-5)


def test_next_token_generation_is_greedy_and_the_same_from_the_artifact(run_cli, trained_run, artifact, tmp_path):
    """5-token prompts and 6 new tokens: past the model's 8-token window, which then slides;
    equal to a hand-written greedy loop over the unpadded prompt, twice the same."""
    import jax
    from flax import nnx

    from jaxyard.core.deploy.loading import load_trained

    run = trained_run("next_token")
    prompts = np.random.default_rng(3).integers(0, 12, size=(3, 5))
    np.savez(tmp_path / "prompts.npz", tokens=prompts)
    args = ["--input", tmp_path / "prompts.npz", "--max-new-tokens", "6"]
    predicted(run_cli, run, *args, "--output", tmp_path / "a.npz")
    predicted(run_cli, run, *args, "--output", tmp_path / "b.npz")
    predicted(run_cli, artifact("next_token"), *args, "--output", tmp_path / "c.npz", "--batch-size", "2")
    a, b, c = (np.load(tmp_path / f"{n}.npz")["tokens"] for n in "abc")
    assert a.shape == (3, 6) and np.array_equal(a, b) and np.array_equal(a, c)
    graphdef, state = nnx.split(load_trained(run).model)
    logits_of = jax.jit(lambda x: nnx.merge(graphdef, state, copy=True)(x))
    sequence = prompts.astype(np.int32)
    for _ in range(6):
        following = np.asarray(logits_of(sequence[:, -8:]))[:, -1].argmax(axis=-1)
        sequence = np.concatenate([sequence, following[:, None].astype(np.int32)], axis=1)
    assert np.array_equal(a, sequence[:, 5:])


def test_multilabel_and_a_task_without_its_own_predict():
    """Multilabel: sigmoid probabilities, labels where above 0.5; the default: the model's outputs as they are."""
    from jaxyard import Task
    from jaxyard.plugins.tasks import Multilabel, MultilabelParams

    logits = np.array([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]], np.float32)
    got = Multilabel(MultilabelParams()).predict(lambda x: x, logits, {"num_outputs": 3})
    np.testing.assert_allclose(got["probabilities"], 1 / (1 + np.exp(-logits)), rtol=1e-6)
    assert got["labels"].tolist() == [[1, 0, 0], [0, 1, 1]]
    assert Task().predict(lambda x: 2 * x, logits, {})["output"].tolist() == (2 * logits).tolist()


@pytest.mark.parametrize(("make", "args", "fragments"), [
    (lambda d: np.savez(d / "in.npz", x=np.zeros((3, 17), np.float32)), ["--input", "in.npz", "--output", "o.npz"],
     ["in.npz array 'x': examples of shape (17,); the model reads examples of shape (16,) (float32)"]),
    (lambda d: np.savez(d / "in.npz", a=np.zeros((3, 16)), b=np.zeros(3)), ["--input", "in.npz", "--output", "o.npz"],
     ["in.npz has no array 'x' or 'tokens' (it holds a, b); choose one with --key"]),
    (lambda d: np.savez(d / "in.npz", x=np.zeros((3, 16))), ["--input", "in.npz", "--output", "o.txt"],
     ["--output", "o.txt: unknown extension '.txt'; expected .npz, .csv, .jsonl"]),
    (lambda d: (d / "in.json").write_text("[]"), ["--input", "in.json", "--output", "o.npz"],
     ["--input", "in.json: unknown extension '.json'; expected .npz, .csv"]),
    (lambda d: np.savez(d / "in.npz", x=np.zeros((3, 16))), ["--input", "in.npz", "--output", "o.npz", "--max-new-tokens", "3"],
     ["--max-new-tokens: task 'classification' does not generate"]),
], ids=["shape", "key", "output-extension", "input-extension", "not-generating"])
def test_bad_inputs_are_one_line(run_cli, trained_run, tmp_path, make, args, fragments):
    make(tmp_path)
    args = [tmp_path / a if a.startswith(("in.", "o.")) else a for a in args]
    result = run_cli(["predict", trained_run("classification"), *args])
    assert_one_line_error(result, *fragments)
    assert not any(p.name.startswith("o.") for p in tmp_path.iterdir())


def test_an_onnx_file_is_not_something_predict_reads(run_cli, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 16)))
    result = run_cli(["predict", tmp_path / "m.onnx", "--input", tmp_path / "in.npz", "--output", tmp_path / "o.npz"])
    assert_one_line_error(result, "m.onnx: predict reads a run directory or a jax artifact (export --format jax)")


def test_the_help_of_export_and_predict_imports_no_jax():
    from helpers import probe_imports

    steps = ["from jaxyard.cli import main", "main(['export', '--help'])", "main(['predict', '--help'])"]
    report = probe_imports(steps, heavy=("jax", "flax", "optax", "orbax", "jax2onnx", "onnxruntime", "safetensors"))
    assert [step["exit"] for step in report] == [0, 0, 0] and report[-1]["heavy"] == []


def test_an_artifact_and_a_sidecar_that_do_not_belong_together_are_refused(run_cli, artifact, tmp_path):
    import shutil

    source = artifact("classification")
    shutil.copy(source, tmp_path / "model.jax")
    shutil.copy(f"{source}.json", tmp_path / "model.jax.json")
    with open(tmp_path / "model.jax", "ab") as f:
        f.write(b"\0")
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 16), np.float32))
    args = ["--input", tmp_path / "in.npz", "--output", tmp_path / "o.npz"]
    result = run_cli(["predict", tmp_path / "model.jax", *args])
    assert_one_line_error(result, "model.jax is not the artifact its sidecar model.jax.json describes")
    result = run_cli(["predict", source, *args, "--checkpoint", "best"])
    assert_one_line_error(result, "--checkpoint best: ", "is an exported artifact, which holds the weights of one checkpoint")


# -- the file handling, with a stand-in model (no checkpoint, no compiling) ----------------------


@pytest.fixture
def doubling(monkeypatch):
    """Predict with a stand-in model (4 float32 features, ``2 * x``, the default task's raw
    outputs): the list of the batch shapes it was called with."""
    from jaxyard import Task
    from jaxyard.core.deploy import predict as module

    shapes: list[tuple[int, ...]] = []

    def call(x):
        shapes.append(tuple(x.shape))
        with np.errstate(over="ignore"):
            return 2 * x

    predictor = module.Predictor(Task(), "stand-in", {}, (4,), np.dtype(np.float32), call, "a stand-in")
    monkeypatch.setattr(module, "open_predictor", lambda *a, **k: predictor)
    return shapes


def write_rows(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_a_csv_header_row_is_detected_pandas_style_included_and_said(run_cli, doubling, tmp_path):
    """pandas' ``to_csv`` of an array heads it 0,1,2,3: a header (said), as is a row of names; a
    first row of other numbers is an example; --header/--no-header (and the API's header) choose."""
    from jaxyard.core.deploy.predict import predict

    pandas = write_rows(tmp_path / "pandas.csv", "0,1,2,3", "1,2,3,4", "5,6,7,8")
    out = predicted(run_cli, tmp_path, "--input", pandas, "--output", tmp_path / "o.npz")
    assert "pandas.csv: header row: yes (auto; --no-header reads it as an example)" in out
    assert np.load(tmp_path / "o.npz")["output"].tolist() == [[2, 4, 6, 8], [10, 12, 14, 16]]
    plain = write_rows(tmp_path / "plain.csv", "0,1,2,4", "1,2,3,4")
    out = predicted(run_cli, tmp_path, "--input", plain, "--output", tmp_path / "o.npz")
    assert "plain.csv: header row: no (auto; --header skips it)" in out and len(np.load(tmp_path / "o.npz")["output"]) == 2
    out = predicted(run_cli, tmp_path, "--input", pandas, "--output", tmp_path / "o.npz", "--no-header")
    assert "pandas.csv: header row: no" in out and len(np.load(tmp_path / "o.npz")["output"]) == 3
    said = []
    done = predict(tmp_path, inputs=pandas, output=tmp_path / "o.npz", header=False, echo=said.append)
    assert done.rows == 3 and done.header is False and said == [f"{pandas}: header row: no"]
    assert predict(tmp_path, inputs=plain, output=tmp_path / "o.npz", header=True).rows == 1
    named = write_rows(tmp_path / "named.csv", "a,b,c,d", "1,2,3,4")
    assert predict(tmp_path, inputs=named, output=tmp_path / "o.npz").header is True
    with pytest.raises(Exception, match=r"data row 1 holds 'a', not a number \(--header reads the first row as column names\)"):
        predict(tmp_path, inputs=named, output=tmp_path / "o.npz", header=False)


def test_every_batch_is_padded_to_one_shape_and_trimmed_back(doubling, tmp_path):
    """10 rows in batches of 4: three calls of 4 rows (the last 2 padded), 10 rows out; 3 rows
    with batches of 256: one call of 3 rows (one compiled program each time)."""
    from jaxyard.core.deploy.predict import predict

    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.savez(tmp_path / "in.npz", x=x)
    predict(tmp_path, inputs=tmp_path / "in.npz", output=tmp_path / "o.npz", batch_size=4)
    assert doubling == [(4, 4)] * 3 and np.array_equal(np.load(tmp_path / "o.npz")["output"], 2 * x)
    doubling.clear()
    np.savez(tmp_path / "in.npz", x=x[:3])
    predict(tmp_path, inputs=tmp_path / "in.npz", output=tmp_path / "o.npz")
    assert doubling == [(3, 4)] and np.array_equal(np.load(tmp_path / "o.npz")["output"], 2 * x[:3])


def test_extensions_are_read_in_any_case_and_one_value_a_row_is_one_column(doubling, tmp_path):
    from jaxyard.core.deploy.predict import predict, write_outputs

    write_rows(tmp_path / "in.CSV", "1,2,3,4")
    predict(tmp_path, inputs=tmp_path / "in.CSV", output=tmp_path / "o.JSONL")
    assert json.loads((tmp_path / "o.JSONL").read_text()) == {"output": [2, 4, 6, 8]}
    np.savez(tmp_path / "x.npz", x=np.ones((2, 4)))
    (tmp_path / "x.npz").rename(tmp_path / "in.NPZ")
    predict(tmp_path, inputs=tmp_path / "in.NPZ", output=tmp_path / "o.Npz")
    assert np.load(tmp_path / "o.Npz")["output"].shape == (2, 4)
    write_outputs(tmp_path / "one.csv", {"value": np.array([[0.5], [1.5]], np.float32), "class": np.array([1, 2])})
    assert (tmp_path / "one.csv").read_text() == "value,class\n0.5,1\n1.5,2\n"


@pytest.mark.parametrize(("make", "fragments"), [
    (lambda d: write_rows(d / "in.csv", "a,b,c,d", "1,2,3,4", "1,nan,3,4"), ["in.csv: data row 2 holds 'nan', not a finite number"]),
    (lambda d: np.savez(d / "in.npz", x=np.array([[0, 1, 2, 3]] * 3 + [[0, np.inf, 2, 3]])),
     ["in.npz array 'x' example 3 has a non-finite feature (inf)"]),
    (lambda d: (d / "in.npz").write_bytes(b"not a zip at all"), ["in.npz is not a readable .npz file (not a zip of .npy arrays"]),
    (lambda d: (d / "in.npz").write_bytes(b"PK\x03\x04 truncated"), ["in.npz is not a readable .npz file"]),
    (lambda d: np.savez(d / "in.npz", x=np.array([{}], dtype=object)), ["in.npz array 'x' holds Python objects (pickled)"]),
], ids=["csv-nan", "npz-inf", "not-a-zip", "truncated-zip", "objects"])
def test_unreadable_or_non_finite_inputs_are_one_line(run_cli, doubling, tmp_path, make, fragments):
    make(tmp_path)
    name = next(p.name for p in tmp_path.iterdir() if p.name.startswith("in."))
    result = run_cli(["predict", tmp_path, "--input", tmp_path / name, "--output", tmp_path / "o.jsonl"])
    assert_one_line_error(result, *fragments)
    assert doubling == [] and not (tmp_path / "o.jsonl").exists()


def test_a_non_finite_prediction_is_not_written_as_invalid_json(run_cli, doubling, tmp_path):
    np.savez(tmp_path / "in.npz", x=np.full((2, 4), 3e38, np.float32))  # doubled: inf in float32
    result = run_cli(["predict", tmp_path, "--input", tmp_path / "in.npz", "--output", tmp_path / "o.jsonl"])
    assert_one_line_error(result, "o.jsonl: task 'stand-in' predicted a non-finite 'output' for example 0",
                          "write .npz or .csv to keep it")
    assert not (tmp_path / "o.jsonl").exists()
