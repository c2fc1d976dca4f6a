"""The `datasets` loader on real files (parquet, csv, jsonl, a directory of splits, a cached hub data
set): the data arrives exactly, each bad input is one line, and it stays offline and writes nothing
outside the run directory unless the user's own word says download."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import tomllib

import numpy as np
import pytest

import jaxyard
from jaxyard.core.registry.params import build

from helpers import as_options, assert_one_line_error, changed, clean_environ, probe_imports, snapshot

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(strict=True)


def load(registry, **values):
    entry = registry.get("loader", "datasets")
    return entry.create(build(entry.params, values, where="loader 'datasets'"), seed=0)


def write_parquet(path, n=40, classes=3):
    """Rows i = 0..n-1: f = i / 2 (float64), k = -i (int64), vec = [i, 10 i, 100 i] (a list column),
    label = i % classes, note = a string column (not a feature)."""
    i = np.arange(max(n, 1))
    table = pa.table({"f": i / 2.0, "k": -i, "vec": [[float(a), 10.0 * a, 100.0 * a] for a in i],
                      "label": i % classes, "note": [f"row {a}" for a in i]})
    pq.write_table(table.slice(0, n), path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any connection or name lookup fails the test (the loader must not try one)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- the data arrives exactly ------------------------------------------------------------------------


def test_a_parquet_file_arrives_exactly(registry, tmp_path):
    """Features stacked in the order named (a list column gives its values), float32; labels int32;
    test_fraction held out by split_seed, val left to the engine's carve (None); nothing lost."""
    data = load(registry, path=str(write_parquet(tmp_path / "data.parquet")), features="f,vec", test_fraction=0.25)
    assert data.val is None and data.sizes() == {"train": 30, "val": 0, "test": 10} and data.num_classes == 3
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int32 and data.input_shape == (4,)
    x, y = np.concatenate([data.train.x, data.test.x]), np.concatenate([data.train.y, data.test.y])
    i = np.rint(x[:, 1]).astype(int)  # vec's first value is the row's index
    assert sorted(i) == list(range(40))
    np.testing.assert_array_equal(x, np.stack([i / 2.0, i, 10.0 * i, 100.0 * i], axis=1).astype(np.float32))
    np.testing.assert_array_equal(y, i % 3)
    assert list(np.diff(data.train.x[:, 1]) > 0) == [True] * 29  # rows keep their order
    again = load(registry, path=str(tmp_path / "data.parquet"), features="f,vec", test_fraction=0.25)
    np.testing.assert_array_equal(again.test.x, data.test.x)  # the same held-out rows every time


def test_a_csv_file_with_every_numeric_column_and_float_targets(registry, tmp_path):
    """No features named: every numeric column but the label's; a float label column is a regression target."""
    path = tmp_path / "data.csv"
    path.write_text("a,b,target\n" + "".join(f"{i},{2 * i},{i * 0.5}\n" for i in range(20)))
    data = load(registry, path=str(path), label="target", test_split="", test_fraction=0.2)
    assert data.num_classes is None and data.train.y.dtype == np.float32 and data.train.x.dtype == np.float32
    x, y = np.concatenate([data.train.x, data.test.x]), np.concatenate([data.train.y, data.test.y])
    np.testing.assert_array_equal(x[:, 1], 2 * x[:, 0])
    np.testing.assert_array_equal(y, x[:, 0] * 0.5)
    assert len(data.test.y) == 4


def test_a_directory_of_jsonl_splits_with_string_labels(registry, tmp_path):
    """train/validation/test files are those splits; string labels are numbered in sorted order over
    every split (a label seen only in test has its number too)."""
    labels = {"train": ["dog", "cat", "dog"], "validation": ["cat", "dog"], "test": ["emu", "cat"]}
    for split, names in labels.items():
        rows = [json.dumps({"pixels": [j, j + 1], "animal": name}) for j, name in enumerate(names)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    data = load(registry, path=str(tmp_path), features="pixels", label="animal")
    assert data.sizes() == {"train": 3, "val": 2, "test": 2} and data.num_classes == 3
    assert data.train.y.tolist() == [1, 0, 1] and data.val.y.tolist() == [0, 1] and data.test.y.tolist() == [2, 0]
    np.testing.assert_array_equal(data.test.x, np.array([[0, 1], [1, 2]], np.float32))


def test_columns_give_dict_batches_for_next_token(registry, tmp_path):
    path = tmp_path / "tokens.jsonl"
    path.write_text("".join(json.dumps({"input_ids": [j % 7, (j + 1) % 7, (j + 2) % 7]}) + "\n" for j in range(10)))
    data = load(registry, path=str(path), columns="tokens=input_ids", test_fraction=0.2)
    assert set(data.train) == {"tokens"} and data.train["tokens"].dtype == np.int32 and data.train["tokens"].shape == (8, 3)
    assert data.num_classes == 7 and data.val is None


def test_a_run_trains_on_a_parquet_file(run_cli, tmp_path):
    """In process, through the CLI: the engine carves val from train (run.val_fraction) and the model
    learns. The shapes are test_loaders.py's npz run's (240/30/30 rows of 8 features, 3 classes): the
    suite's compile cache serves both."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 8)) + 3.0 * np.eye(3, 8)[y]
    pq.write_table(pa.table({"pixels": list(x), "label": y}), tmp_path / "mine.parquet")
    result = run_cli(["run", "--loader", "datasets", "--set", f"loader.path={tmp_path / 'mine.parquet'}", "--epochs", "5",
                      "--checkpointer", "none", "--lr", "1e-2", "--out", tmp_path / "run",
                      *as_options(["run.warmup_steps=0", "model.hidden_dims=16", "run.val_fraction=0.111"])])
    assert result.exit_code == 0, result.stderr
    assert "Train samples: 240" in result.stdout  # 300 - 30 held out for test (test_fraction) - 30 carved for val
    assert float(result.stdout.split("Test Accuracy: ")[1].split()[0]) > 0.8


# --- one line for each bad input --------------------------------------------------------------------


def refused(registry, *fragments, **values) -> str:
    with pytest.raises(jaxyard.UsageError) as info:
        load(registry, **values)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("loader 'datasets'"), msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    return msg


def test_bad_inputs_are_one_line_each(registry, tmp_path):
    parquet = str(write_parquet(tmp_path / "data.parquet"))
    refused(registry, "missing.parquet: no such file or directory", path=str(tmp_path / "missing.parquet"))
    refused(registry, "matches no file", path=str(tmp_path / "*.csv"))
    refused(registry, "--set loader.path=FILE", "--set loader.name=NAME")
    refused(registry, "no column 'colour'", "columns: f, k, vec, label, note", path=parquet, features="f,colour")
    refused(registry, "no column 'y'", "--set loader.label=", path=parquet, label="y")
    refused(registry, "column 'note' of the train split holds string values, not numbers", "numeric: f, k, vec, label",
            path=parquet, features="note")
    refused(registry, "no split 'dev' (splits: train)", "or \"\" to carve it from train", path=parquet, val_split="dev")
    refused(registry, "no split 'training' (splits: train)", path=parquet, train_split="training")
    refused(registry, "replaces features and label", path=parquet, columns="tokens=k", features="f")
    (tmp_path / "header.csv").write_text("a,label\n")
    refused(registry, "header.csv holds no rows", path=str(tmp_path / "header.csv"))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.csv").write_text("a,label\n1,0\n2,1\n")
    (splits / "test.csv").write_text("a,label\n")
    refused(registry, "splits: its test split holds no rows", path=str(splits))
    (tmp_path / "data.txt").write_text("1,2\n")
    refused(registry, "set the format: --set loader.format=parquet", path=str(tmp_path / "data.txt"))
    refused(registry, "header.csv: cannot read it: ArrowInvalid", path=str(tmp_path / "header.csv"), format="parquet")


def test_files_whose_columns_differ_name_the_columns(registry, tmp_path):
    """pandas writes a non-range index as __index_level_0__: one file with it, one without, and
    datasets' message says why only on its last lines."""
    table = pa.table({"f": [0.5, 1.0], "label": [0, 1]})
    pq.write_table(table, tmp_path / "train.parquet")
    pq.write_table(table.append_column("__index_level_0__", pa.array([3, 7])), tmp_path / "test.parquet")
    refused(registry, "cannot read it: CastError: the files' columns differ: a file has column __index_level_0__, "
            "unlike the first one read (f, label)", "DataFrame.to_parquet(index=False)", path=str(tmp_path))


def test_without_datasets_installed_names_the_extra(registry, monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "datasets" or m.startswith("datasets.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import datasets` now raises ImportError
    monkeypatch.setitem(sys.modules, "datasets", None)
    refused(registry, "loader 'datasets' needs datasets, which is not installed: pip install 'jaxyard[datasets]'",
            path=str(write_parquet(tmp_path / "data.parquet")))


# --- offline, and nothing written outside ----------------------------------------------------------------


def test_a_hub_name_not_in_the_cache_is_refused_offline(registry, monkeypatch, tmp_path, no_network):
    """No network is tried; the message names the data set and the way to fetch it; the environment
    and the libraries' offline flags are as they were."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    flags = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    refused(registry, "nobody/nothing (tiny) is not in the local cache", "--set loader.download=true",
            name="nobody/nothing", config="tiny")
    assert "HF_HUB_OFFLINE" not in __import__("os").environ
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == flags


def test_a_cached_hub_data_set_is_read_offline_without_writing_to_the_cache(registry, monkeypatch, tmp_path, no_network):
    """A data set prepared in HF_DATASETS_CACHE (made here the way datasets lays one out) is read
    with its own splits; the cache is left as it was (datasets' lock files go to a temporary folder)."""
    from jaxyard.plugins.hf_datasets import _hub

    with _hub(online=False) as datasets:  # quiet
        datasets.load_dataset("parquet", data_files={"train": str(write_parquet(tmp_path / "a.parquet", n=30)),
                                                         "test": str(write_parquet(tmp_path / "b.parquet", n=6))},
                              cache_dir=str(tmp_path / "build"))
    (source,) = (tmp_path / "build" / "parquet").glob("*/*/*/")
    cache = tmp_path / "hf"
    target = cache / "toy___digits" / "default" / "0.0.0" / source.name
    target.mkdir(parents=True)
    for f in source.iterdir():
        (target / f.name.replace("parquet-", "digits-")).write_bytes(f.read_bytes())
    info = json.loads((target / "dataset_info.json").read_text())
    (target / "dataset_info.json").write_text(json.dumps({**info, "dataset_name": "digits"}))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    before = snapshot(cache)
    data = load(registry, name="toy/digits", features="f")
    assert data.sizes() == {"train": 30, "val": 0, "test": 6} and data.num_classes == 3
    np.testing.assert_array_equal(data.train.x[:, 0], np.arange(30) / 2.0)
    assert changed(before, snapshot(cache)) == []


def test_download_is_the_users_word_only(run_cli, tmp_path):
    """An experiment file cannot turn download on (it connects out); --set can."""
    hostile = tmp_path / "hostile.toml"
    hostile.write_text('[run]\nloader = "datasets"\n[loader.datasets]\nname = "someone/big"\ndownload = true\n')
    result = run_cli(["run", "--config", hostile, "--dry-run"])
    assert_one_line_error(result, str(hostile), "download = True", "--set loader.download=True")
    result = run_cli(["run", "--config", hostile, "--set", "loader.download=true", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert tomllib.loads(result.stdout)["loader"]["datasets"]["download"] is True


LOADS = """
import json, os, sys
records = []
sys.addaudithook(lambda event, args: records.append(event) if event in ("socket.connect", "socket.getaddrinfo") else None)
import jaxyard
from jaxyard.core.registry.params import build
entry = jaxyard.build_registry(strict=True).get("loader", "datasets")
data = entry.create(build(entry.params, {{"path": {path!r}}}, where="loader"), seed=0)
try:
    entry.create(build(entry.params, {{"name": "nobody/nothing"}}, where="loader"), seed=0)
except jaxyard.UsageError as err:
    refused = str(err)
print(json.dumps({{"sizes": data.sizes(), "refused": refused, "network": records}}))
"""


def test_loading_writes_nothing_in_home_cwd_or_tmpdir_and_connects_nowhere(tmp_path_factory):
    """A fresh process whose HOME, working directory, TMPDIR and caches are one sandbox: a local file
    and an uncached hub name leave every path in it as it was (but TMPDIR itself, where the temporary
    cache came and went), with no connection or name lookup."""
    root, elsewhere = tmp_path_factory.mktemp("sandbox"), tmp_path_factory.mktemp("data")
    (root / "tmp").mkdir()
    path = write_parquet(elsewhere / "data.parquet")
    env = clean_environ(HOME=str(root), TMPDIR=str(root / "tmp"), XDG_CACHE_HOME=str(root / ".cache"),
                        XDG_CONFIG_HOME=str(root / ".config"), XDG_DATA_HOME=str(root / ".local"), PYTHONDONTWRITEBYTECODE="1")
    for var in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(var, None)
    before = snapshot(root)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(LOADS.format(path=str(path)))], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr  # no progress bar, no warning
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["sizes"] == {"train": 36, "val": 0, "test": 4}
    assert "is not in the local cache" in report["refused"] and report["network"] == []
    assert set(changed(before, snapshot(root))) <= {"tmp"}, changed(before, snapshot(root))


def test_the_loader_module_imports_nothing_heavy():
    """`jaxyard list` stays light: the module imports neither datasets, pyarrow nor jax."""
    (step,) = probe_imports(["jaxyard.plugins.hf_datasets"], heavy=("datasets", "pyarrow", "jax", "numpy"))
    assert step["heavy"] == [], step
