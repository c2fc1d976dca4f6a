"""Damaged or hostile files that `compare`, `resume` and `eval` read: one line naming the file, never a traceback.

config.toml not UTF-8 or nested thousands deep (tomllib recurses per level), and sweep.jsonl
lines whose run_dir or trial is not what jaxyard writes. Nothing trains: the run and sweep
directories are written by hand (test_compare's), or a copy of the suite's finished tiny run.
"""

from __future__ import annotations

import json

import pytest
from test_compare import make_run, make_sweep

from helpers import assert_one_line_error

NOT_UTF8 = "# caf\xe9\n".encode("latin-1")
DEEP = "[run]\nepochs = " + "[" * 10000 + "]" * 10000 + "\n"  # RecursionError in tomllib


def damage(path, how: str) -> None:
    config = path / "config.toml"
    if how == "not-utf8":
        config.write_bytes(config.read_bytes() + NOT_UTF8)
    else:
        config.write_text(DEEP)


FRAGMENTS = {"not-utf8": "not UTF-8", "deep": "nested too deeply"}


@pytest.mark.parametrize("how", ["not-utf8", "deep"])
def test_compare_names_a_config_toml_it_cannot_read(run_cli, tmp_path, how):
    run = make_run(tmp_path / "run")
    sweep = make_sweep(tmp_path / "sweep")
    damage(run, how)
    damage(sweep / "trials" / "0003", how)
    for given, bad in ((run, run), (sweep, sweep / "trials" / "0003")):
        result = run_cli(["compare", str(given)])
        assert_one_line_error(result, f"{bad / 'config.toml'}", FRAGMENTS[how])


@pytest.mark.parametrize("how", ["not-utf8", "deep"])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_resume_and_eval_name_a_config_toml_they_cannot_read(run_cli, finished_run, how, command):
    run = finished_run("none").dir
    damage(run, how)
    result = run_cli([command, str(run)])
    assert_one_line_error(result, f"{run / 'config.toml'}", FRAGMENTS[how])


@pytest.mark.parametrize("run_dir", [5, ["trials/0000"], {"a": 1}, True, "../../elsewhere", "/etc", ""])
def test_compare_refuses_a_run_dir_that_is_not_a_directory_inside_the_sweep(run_cli, tmp_path, run_dir):
    sweep = make_sweep(tmp_path / "sweep")
    lines = [json.loads(x) for x in (sweep / "sweep.jsonl").read_text().splitlines()]
    lines[0]["run_dir"] = run_dir
    (sweep / "sweep.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = run_cli(["compare", str(sweep)])
    if run_dir == "":  # no run directory: a trial that failed early, left out
        assert result.exit_code == 0, result.stderr
        return
    assert_one_line_error(result, f"{sweep / 'sweep.jsonl'}: trial 0's run_dir {run_dir!r} is not a directory inside the sweep")


@pytest.mark.parametrize("line, fragment", [
    ('{"trial": [1], "state": "complete"}', "trial [1] is not a trial number"),
    ('{"trial": 9, "state": "complete", "run_dir": "trials/0000", "x": ' + "[" * 10000 + "]" * 10000 + "}", "sweep.jsonl:6 is not a JSON line"),
    (b"\xff\xfe", "sweep.jsonl:6 is not a JSON line"),
], ids=["trial-a-list", "nested-too-deeply", "not-utf8"])
def test_compare_refuses_a_sweep_jsonl_line_it_cannot_use(run_cli, tmp_path, line, fragment):
    sweep = make_sweep(tmp_path / "sweep")
    with open(sweep / "sweep.jsonl", "ab") as f:
        f.write((line.encode() if isinstance(line, str) else line) + b"\n")
        f.write(b'{"trial": 10, "state": "failed", "run_dir": null}\n')  # not the last line: not a torn one
    assert_one_line_error(run_cli(["compare", str(sweep)]), fragment)
