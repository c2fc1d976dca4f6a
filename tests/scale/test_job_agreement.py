"""A job's processes agree before anything is built: processes given different configurations stop
with the same one line naming the keys, writing nothing; a coordinator port that is taken is refused
before any process starts."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from helpers import as_options, clean_environ, tiny


def run_by_hand(out, own: dict[int, list[str]], *, timeout: float) -> tuple[list[subprocess.Popen], list[tuple[str, str]]]:
    """`jaxyard run` as a job of 2 processes started by hand, each with the tiny workload and its
    own options ``own[i]`` (launch gives every process the same ones); their (stdout, stderr)."""
    from jaxyard.core.scale.launch import free_port

    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen([sys.executable, "-m", "jaxyard.cli", "run", "--out", str(out), *as_options(tiny()), *own[i],
                          "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)],
                         env=clean_environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        return procs, [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()


@pytest.fixture
def taken_port():
    """A loopback port another socket listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.slow
def test_processes_given_different_configurations_stop_with_one_line_naming_the_keys(tmp_path):
    """One job of 2 processes started by hand, each with its own command line (`launch` gives both
    the same one): process 1 has other epochs and another model."""
    out = tmp_path / "job"
    procs, outputs = run_by_hand(out, {0: ["--epochs", "3"], 1: ["--epochs", "4", "--set", "model.hidden_dims=48"]}, timeout=300)
    message = ("Error: the processes of the job were given different configurations: process 0 vs process 1: "
               "run.epochs 3 vs 4, model.hidden_dims [32] vs [48]; give every process the same options, --set values and files")
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 2, stderr[-3000:]
        assert [line for line in stderr.splitlines() if "Gloo" not in line] == [message], stderr[-3000:]
        assert [line for line in stdout.splitlines() if "Gloo" not in line] == []  # gloo's connection lines (launch drops them)
    assert not out.exists()  # nothing written


def test_launch_refuses_a_taken_port_before_starting_anything(run_cli, monkeypatch, taken_port):
    from jaxyard.core.scale import launch

    def start(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(launch.subprocess, "Popen", start)
    port = taken_port
    result = run_cli(["launch", "-n", "2", "--port", port, "--", "check"])
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert result.stderr == (f"Error: --port {port}: the job cannot be served at 127.0.0.1:{port}: another process is listening on it; "
                             f"choose another port, or leave --port out for a free one\n")


def test_process_0_refuses_a_taken_port_before_joining(monkeypatch, taken_port):
    """By hand (no launch): process 0 would serve the job on a taken port; refused before jax's
    coordination service is started (which crashes on it, or prints gRPC's raw line)."""
    import jax

    from jaxyard.core.errors import UsageError
    from jaxyard.core.scale.processes import join

    def initialize(*args, **kwargs):
        raise AssertionError("jax.distributed.initialize was called")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    port = taken_port
    with pytest.raises(UsageError, match=rf"process 0 cannot serve the job at 127.0.0.1:{port}: another process is listening on it"):
        join(f"127.0.0.1:{port}", 2, 0)


@pytest.mark.slow
def test_a_process_whose_options_do_not_resolve_stops_every_process_with_its_line(tmp_path):
    """Started by hand: process 1's options fail to resolve (logreg takes no model.hidden_dims). The
    processes join first, then resolve together: its line on both, at once (before, process 1 exited
    alone and process 0 waited 5 minutes in jax.distributed.initialize, then died of a C++ trace)."""
    out = tmp_path / "job"
    procs, outputs = run_by_hand(out, {0: ["--epochs", "2"], 1: ["--epochs", "2", "--model", "logreg"]}, timeout=60)
    lines = [[line for line in stderr.splitlines() if "Gloo" not in line] for _, stderr in outputs]
    assert len(lines[1]) == 1 and lines[1][0].startswith("Error: ") and "hidden_dims" in lines[1][0], outputs[1][1][-3000:]
    for proc, (stdout, stderr), own_lines in zip(procs, outputs, lines, strict=True):
        assert proc.returncode == 2, stderr[-3000:]
        assert own_lines == lines[1], stderr[-3000:]  # process 1's line, on every process
        assert [line for line in stdout.splitlines() if "Gloo" not in line] == []
    assert not out.exists()  # nothing written


@pytest.mark.slow
def test_launch_whose_output_reader_has_gone_stops_the_job_quietly(tmp_path):
    """`jaxyard launch -n 1 -- run ... | head -1`: launch ends quietly like other CLIs on a broken pipe
    (status 1; it was status 0 with a relay thread's BrokenPipeError traceback, the job running on),
    the job stopped as on Ctrl-C at launch's next line (how soon depends on when the run prints)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jaxyard.cli", "launch", "-n", "1", "--", "run", "--out", str(out), "--epochs", "3",
                             *as_options(tiny("run.checkpointer=none"))],
                            env=clean_environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline()  # what `head -1` reads, then it is gone
        proc.stdout.close()
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1 and stderr.strip() == "", stderr[-3000:]
