"""The code blocks of README.md and docs/*.md run as they are documented.

One test per page (``test_page[README.md]``, ``test_page[docs/training.md]``, ...), so a failure
names the page, and the line of the command that failed. A page's fenced code blocks are taken in
order, and the language after the fence decides what happens to each:

- ``python``: executed, in the page's temporary working directory, every block of a page in one
  namespace (a block may write the data file that a later ``bash`` block trains on).
- ``bash`` (``sh``, ``shell``): each line whose command is ``python cli.py ...``, ``jaxyard ...`` or
  ``python -m jaxyard ...`` is run, after ``VAR=value`` prefixes (set for that command) and with
  ``&&`` joining several such commands; must exit 0. A line that starts with anything else
  (``pip install``, ``cd``, ``srun``, ``python -m pytest``, a comment) is not run, and neither is
  the rest of that line. A command using ``|``, ``>``, ``;`` or similar fails the test: the block
  needs a marker (below). ``#`` comments and ``\\`` continuations are understood.
- anything else (``text``, ``console``, ``toml``, a fence with no language): shown output or
  file contents, not run.

A marker comment on the line directly before the opening fence changes that:

- ``<!-- not run: REASON -->``: the block is skipped. Every reason is printed (``-s``, or
  ``python tests/docs/test_doc_pages.py`` lists them all) so that what the docs leave untested is
  written down: a GPU, several processes, ``--cpu-devices`` (it must act before jax starts, and
  this process has jax loaded; tests/scale covers it), an install, minutes of training.
- ``<!-- expect-fail -->``: every command of the block must fail: an exit code other than 0 and
  one ``Error:`` line on stderr (an error message shown as an example).
- ``<!-- file: NAME -->``: the block's text is written to NAME in the working directory instead
  of being run (a plugin that a later command loads with ``--plugin NAME``, a registry file).
- ``<!-- needs: MODULE -->``: the block runs where MODULE is installed and is skipped (and
  listed) elsewhere: an optional extra that the test extra leaves out (``jax2onnx``: .ci/run
  installs the onnx extra after the suite and runs docs/export.md again).

How the commands run, so that every page costs seconds: in this process, one click
``CliRunner`` invocation of ``jaxyard.cli.cli`` per command (no interpreter start, no import of
jax per command), with the suite's compile cache (tests/conftest.py), in a temporary working
directory where ``examples`` links to the checkout's ``examples/`` (read only, by convention).
``$JAXYARD_REGISTRY`` points at ``tests/docs/registry.toml``: one epoch, tiny synthetic data sets
and models, no curves. A documented option or file that sets a value itself keeps it (``--epochs 3``
trains 3 epochs; ``--config examples/experiment.toml`` trains what the file says), so the docs'
commands use small numbers. Commands that start processes (``launch``) or need ``--cpu-devices``
are refused here with a message asking for a ``not run`` marker.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REGISTRY = HERE / "registry.toml"
PAGES = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]
# Pages that take more than ~5 s single-worker (measured with this module's registry): marked slow.
SLOW = {"README.md", "docs/training.md", "docs/library.md", "docs/data.md", "docs/grain.md", "docs/export.md"}
PROGRAMS = (("python", "cli.py"), ("jaxyard",), ("python", "-m", "jaxyard"))
# a line that looks like one of PROGRAMS but is not (a typo would otherwise leave it silently unrun)
NEAR_MISS = re.compile(r"(^|\s)(\$\s|python3?\s+(-m\s+jaxyard\S|\S*cli\.py)|\./cli\.py|\S+/jaxyard\s)")
RUN_LANGUAGES = {"bash", "sh", "shell"}
MARKER = re.compile(r"^\s*<!--\s*(not run:\s*(?P<reason>.*?)|(?P<fail>expect-fail)|file:\s*(?P<file>\S+)|needs:\s*(?P<needs>[\w.]+))\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")


@dataclass
class Block:
    """A fenced code block: its language, first line of code (1-based), text, and marker."""

    page: str
    lang: str
    line: int
    text: str
    not_run: str | None = None
    expect_fail: bool = False
    file: str | None = None
    needs: str | None = None  # a module the block needs (an extra's): run only where it is installed


@dataclass
class Command:
    line: int
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of ``page`` (relative to the checkout), with their markers."""
    lines = (REPO / page).read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        marker = MARKER.match(lines[i])
        if marker and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
            raise AssertionError(f"{page}:{i + 1}: a marker must be on the line directly before a code fence: {lines[i].strip()}")
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page}:{i + 1}: a code fence that is never closed"
        indent = len(fence["indent"])
        block = Block(page, fence["lang"].lower(), i + 2, "\n".join(line[indent:] for line in lines[i + 1:end]) + "\n")
        before = MARKER.match(lines[i - 1]) if i else None
        if before:
            block.not_run = before["reason"] if before["reason"] is not None else None
            block.expect_fail = bool(before["fail"])
            block.file = before["file"]
            block.needs = before["needs"]
            if before["reason"] is not None and not before["reason"].strip():
                raise AssertionError(f"{page}:{i}: `<!-- not run: REASON -->` needs its reason")
        found.append(block)
        i = end + 1
    return found


def commands(block: Block) -> list[Command]:
    """The jaxyard commands of a shell block, each with its line number."""
    found = []
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        logical.append((start, pending + raw))
        pending = ""
    for line, text in logical:
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        segments: list[list[str]] = [[]]
        for token in tokens:
            if token == "&&":
                segments.append([])
            else:
                segments[-1].append(token)
        parsed = []
        for segment in segments:
            env = {}
            while segment and re.match(r"^[A-Z_][A-Z0-9_]*=", segment[0]):
                key, _, value = segment.pop(0).partition("=")
                env[key] = value
            program = next((p for p in PROGRAMS if tuple(segment[:len(p)]) == p), None)
            if program is None:
                near = " ".join(segment[:3])
                if NEAR_MISS.search(near):  # `python3 cli.py`, `$ jaxyard`, `python -m jaxyard.cli`, `./cli.py`: meant to run
                    raise AssertionError(f"{block.page}:{line}: `{near} ...` reads as a jaxyard command this test does not run: "
                                         f"write it `python cli.py ...` or `jaxyard ...`, or mark the block <!-- not run: REASON -->")
                break  # not a jaxyard command: neither it nor the rest of the line is run
            args = segment[len(program):]
            odd = [t for t in args if t and set(t) <= set("();<>|&")]
            if odd:
                raise AssertionError(f"{block.page}:{line}: shell syntax {odd} in a run block: mark it <!-- not run: REASON --> or simplify it")
            if "--cpu-devices" in args or "launch" in args:
                raise AssertionError(f"{block.page}:{line}: `{' '.join(args)}` needs --cpu-devices or processes, which this in-process "
                                     f"test cannot give: mark the block <!-- not run: REASON -->")
            parsed.append(Command(line, args, env))
        found.extend(parsed)
    return found


def not_run(pages=PAGES) -> list[tuple[str, int, str]]:
    """(page, line, reason) of every block marked not run."""
    return [(b.page, b.line - 1, b.not_run) for page in pages for b in blocks(page) if b.not_run is not None]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory for one page, with the checkout's examples/ and the tiny registry."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("JAXYARD_REGISTRY", str(REGISTRY))
    return work


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p for p in PAGES])
def test_page(page, workdir, capsys):
    """Every python block and jaxyard command of the page runs (and an expect-fail one fails)."""
    from click.testing import CliRunner

    from jaxyard.cli import cli

    namespace: dict = {"__name__": "__docs__"}
    timings, skipped = [], []
    for block in blocks(page):
        if block.not_run is not None:
            skipped.append(f"{page}:{block.line - 1}: not run: {block.not_run}")
            continue
        if block.file:
            (workdir / block.file).write_text(block.text, encoding="utf-8")
            continue
        if block.needs and importlib.util.find_spec(block.needs) is None:
            skipped.append(f"{page}:{block.line - 1}: not run here: needs {block.needs} (an extra; .ci/run runs it with the extra)")
            continue
        if block.lang == "python":
            started = time.perf_counter()
            exec(compile(block.text, f"{page}:{block.line}", "exec"), namespace)  # noqa: S102 - the page's own code
            timings.append((time.perf_counter() - started, f"{page}:{block.line}: python block"))
            continue
        if block.lang not in RUN_LANGUAGES:
            continue
        found = commands(block)
        if block.expect_fail and not found:
            raise AssertionError(f"{page}:{block.line - 1}: an expect-fail block with no jaxyard command in it")
        for command in found:
            where = f"{page}:{command.line}: jaxyard {shlex.join(command.args)}"
            started = time.perf_counter()
            result = CliRunner().invoke(cli, command.args, env=command.env or None)
            timings.append((time.perf_counter() - started, where))
            if block.expect_fail:
                err = result.stderr.strip()
                assert result.exit_code not in (0, None) and err.startswith("Error: ") and "\n" not in err, (
                    f"{where}: expected to fail with one Error: line", result.exit_code, result.stdout[-1500:], result.stderr[-1500:])
            else:
                assert result.exit_code == 0, (
                    f"{where}: exit {result.exit_code}", result.stdout[-2500:], result.stderr[-2500:], result.exception)
    with capsys.disabled():  # shown with -s or -rA; the lead lists the not-run blocks
        for line in skipped:
            print(f"\n  {line}", end="")
        for seconds, where in sorted(timings, reverse=True)[:5]:
            print(f"\n  {seconds:5.2f} s  {where[:150]}", end="")


def test_markers_are_well_formed():
    """Every page parses: each marker sits right before a fence and each not-run block gives a reason;
    every shell block's jaxyard commands are ones this module can run."""
    for page in PAGES:
        for block in blocks(page):
            if block.lang in RUN_LANGUAGES and block.not_run is None and not block.file:
                commands(block)


@pytest.mark.parametrize("line", ["python3 cli.py run", "$ jaxyard run", "python -m jaxyard.cli run", "./cli.py run", ".venv/bin/jaxyard run"])
def test_a_command_this_test_would_not_run_is_refused(line):
    """A jaxyard command spelt another way would be skipped silently like `pip install`: it fails instead."""
    with pytest.raises(AssertionError, match="reads as a jaxyard command this test does not run"):
        commands(Block("page.md", "bash", 2, line + "\n"))
    assert commands(Block("page.md", "bash", 2, "pip install -e . && python cli.py run --epochs 1\n")) == []  # after pip: not run
    assert [c.args for c in commands(Block("page.md", "bash", 2, "python cli.py list && jaxyard show run\n"))] == [["list"], ["show", "run"]]


if __name__ == "__main__":  # python tests/docs/test_doc_pages.py: the blocks the docs do not run, and why
    for page, line, reason in not_run():
        print(f"{page}:{line}: {reason}")
