"""The real programs, in subprocesses: `python cli.py` in the checkout and the `jaxyard` script.

Kept to a handful of processes: each command runs in-process within one interpreter per program.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, clean_environ, probe_imports

LIGHT_COMMANDS = [["--help"], ["list"], ["show", "optimizer", "adam"], ["show", "task", "classification"], ["plugins"],
                  ["show", "optimizer", "signsgd"], ["list", "--json"]]


def console_script() -> str:
    script = shutil.which("jaxyard", path=str(Path(sys.executable).parent))
    assert script, f"no jaxyard console script next to {sys.executable}"
    return script


def _probe(program: str, cwd: Path) -> list[dict]:
    """Each of LIGHT_COMMANDS through ``program`` (run as __main__) in one interpreter: its exit
    status and the heavy modules imported by its end."""
    commands = [f"sys.argv = [{program!r}, *{args!r}]\nrunpy.run_path({program!r}, run_name='__main__')" for args in LIGHT_COMMANDS]
    _, *report = probe_imports(["import runpy, sys", *commands], cwd=cwd)
    return [{"args": args, **r} for args, r in zip(LIGHT_COMMANDS, report, strict=True)]


@pytest.mark.parametrize("program", ["cli.py", "console script"])
def test_listing_commands_import_no_heavy_library(program, tmp_path):
    if program == "cli.py":
        report = _probe("cli.py", cwd=REPO)
    else:
        report = _probe(console_script(), cwd=tmp_path)
    assert [r["args"] for r in report] == LIGHT_COMMANDS
    for r in report:
        assert r["exit"] == 0, r
        assert r["heavy"] == [], f"`jaxyard {' '.join(r['args'])}` imported {r['heavy']}"


def _run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, env=clean_environ(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("args", [["list"], ["--help"]], ids=["list", "help"])
def test_checkout_and_installed_program_agree(args, tmp_path):
    from_checkout = _run([sys.executable, "cli.py", *args], cwd=REPO)
    installed = _run([console_script(), *args], cwd=tmp_path)
    assert from_checkout == installed
    assert from_checkout.strip()
    if args == ["list"]:
        assert "signsgd" in from_checkout and "adam" in from_checkout
    else:
        assert from_checkout.startswith("Usage: jaxyard ")


def test_errors_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [console_script(), "show", "optimizer", "adamx"], cwd=tmp_path, env=clean_environ(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "did you mean adam, adamw?" in proc.stderr
