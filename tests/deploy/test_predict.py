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
