"""The real programs, in subprocesses: `python cli.py` in the checkout and the `jaxyard` script.

Kept to a handful of processes: each command runs in-process within one interpreter per program.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import HEAVY, REPO, clean_environ

LIGHT_COMMANDS = [["--help"], ["list"], ["show", "optimizer", "adam"], ["plugins"], ["show", "optimizer", "signsgd"], ["list", "--json"]]

# Runs each command of argv[2] (JSON) through the program argv[1] with runpy, in one interpreter,
# and reports after each one the exit status and which heavy top-level modules are imported.
PROBE = """
import json, os, runpy, sys
program, commands, heavy = sys.argv[1], json.loads(sys.argv[2]), tuple(json.loads(sys.argv[3]))
report = []
for args in commands:
    sys.argv = [program, *args]
    code = 0
    try:
        runpy.run_path(program, run_name="__main__")
    except SystemExit as exit:
        code = exit.code or 0
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(heavy))
    report.append({"args": args, "exit": code, "heavy": loaded})
os.write(2, ("PROBE " + json.dumps(report) + "\\n").encode())
"""


def console_script() -> str:
    script = shutil.which("jaxyard", path=str(Path(sys.executable).parent))
    assert script, f"no jaxyard console script next to {sys.executable}"
    return script


def _probe(program: str, cwd: Path) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, program, json.dumps(LIGHT_COMMANDS), json.dumps(HEAVY)],
        cwd=cwd,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stderr
    return json.loads(lines[-1].removeprefix("PROBE "))


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
    proc = subprocess.run(cmd, cwd=cwd, env=clean_environ(), capture_output=True, text=True, timeout=120)
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
        [console_script(), "show", "optimizer", "adamx"], cwd=tmp_path, env=clean_environ(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "did you mean adam, adamw?" in proc.stderr
