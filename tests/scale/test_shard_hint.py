"""run.shard_params = true on one device is refused naming the way out of the command at hand
(`run`: --set run.shard_params=false; `resume`: --no-shard-params), and every run prints its
devices and backend."""

from __future__ import annotations

import re

from helpers import TINY, as_options, assert_one_line_error, snapshot


def test_run_names_set_shard_params_false(run_cli, tmp_path):
    result = run_cli(["run", "--devices", "all", "--set", "run.shard_params=true", "--out", tmp_path / "run", *as_options(TINY)])
    assert_one_line_error(result, "run.shard_params = true needs several devices, but run.devices = all gives 1 cpu device: "
                                  "use --set run.shard_params=false, or more devices (--cpu-devices N for N host devices)")
    assert not any(tmp_path.iterdir())


def test_resume_names_no_shard_params_before_anything_is_read_or_written(run_cli, tmp_path):
    """The run's own config.toml (as `run` writes it) says shard_params = true; this resume has one device."""
    config = run_cli(["run", "--dry-run", "--set", "run.shard_params=true", *as_options(TINY)])
    assert config.exit_code == 0, config.stderr
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(config.stdout)
    before = snapshot(run_dir)
    for extra in (["--devices", "1"], []):
        result = run_cli(["resume", run_dir, *extra])
        assert_one_line_error(result, "run.shard_params = true needs several devices", "use --no-shard-params (this resume only)")
    assert snapshot(run_dir) == before


def test_a_run_on_one_device_prints_its_device_and_backend(finished_run):
    assert re.search(r"^  Devices: 1 \w+ device \((.+, )?backend \w+\)$", finished_run().stdout, re.M), finished_run().stdout
