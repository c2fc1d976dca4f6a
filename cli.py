"""The jaxyard command line: parse, resolve through the library, print.

``python cli.py ARGS`` in a checkout and the installed ``jaxyard ARGS`` are the same program.
``--help``, ``list``, ``show`` and ``plugins`` never import jax, flax, optax or orbax.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__" and not importlib.util.find_spec("jaxyard"):  # `python cli.py` before installing
    sys.exit("jaxyard is not installed: run `python -m pip install -e .` in this checkout first")

import click  # noqa: E402

from jaxyard.core.errors import JaxyardError  # noqa: E402
from jaxyard.core.registry import describe as D  # noqa: E402
from jaxyard.core.registry.entries import CHOSEN, KINDS  # noqa: E402
from jaxyard.core.registry.settings import env_flag  # noqa: E402

ENV_NO_CACHE = "JAXYARD_NO_COMPILE_CACHE"


class Session:
    """Global options, and the registry loaded on first use."""

    def __init__(self, registry_file, plugins, disable, strict, debug):
        self.registry_file, self.plugins, self.disable = registry_file, plugins, disable
        self.strict, self.debug = strict, debug
        self._registry = self._settings = None

    @property
    def settings(self):
        if self._settings is None:
            from jaxyard.core.registry.settings import load_settings

            self._settings = load_settings(self.registry_file)
        return self._settings

    @property
    def registry(self):
        if self._registry is None:
            from jaxyard.core.registry.loading import build_registry

            def warn(info):
                click.echo(f"Warning: plugin {info.label()} failed to load and was skipped: {info.error}", err=True)

            self._registry = build_registry(
                self.settings, plugins=self.plugins, disable=self.disable, strict=self.strict or None, on_failure=warn,
                on_warning=lambda line: click.echo(line, err=True),
            )
            for info in self._registry.plugins:
                for warning in info.warnings:
                    click.echo(f"Warning: {warning}", err=True)
        return self._registry


class JaxyardGroup(click.Group):
    """Turns a JaxyardError (or an OSError) into one line on stderr and its exit code; --debug re-raises.
    Output whose reader has gone (``jaxyard list | head -3``) ends the command quietly.
    Global options may come after the command too (:meth:`parse_args`)."""

    #: the options of the group that :meth:`parse_args` takes from after the command
    GLOBAL = ("--registry", "--plugin", "--disable", "--strict-plugins", "--debug", "--cpu-devices")

    def parse_args(self, ctx, args):
        """``jaxyard run --debug --plugin x.py`` as ``jaxyard --debug --plugin x.py run``: a global
        option (with its value) after the command moves before it, unless the command has an
        option of that name. Nothing after ``--`` is touched, nor anything after the first
        argument of a command that passes its arguments on (``launch``)."""
        return super().parse_args(ctx, self._globals_first(ctx, list(args)))

    def _globals_first(self, ctx, args: list[str]) -> list[str]:
        mine = _valued(self.get_params(ctx))
        at = 0
        while at < len(args) and args[at].startswith("-") and args[at] != "--":
            at = _option_end(args, at, mine)
        cmd = self.get_command(ctx, args[at]) if at < len(args) else None
        if cmd is None:
            return args
        own = _valued(cmd.get_params(ctx))
        interspersed = cmd.context_settings.get("allow_interspersed_args", cmd.allow_interspersed_args)
        moved: list[str] = []
        kept: list[str] = []
        i = at + 1
        while i < len(args) and args[i] != "--":
            token, name = args[i], args[i].split("=", 1)[0]
            if not token.startswith("-") and not interspersed:  # the rest are another command's arguments
                break
            if name in self.GLOBAL and name not in own:
                end = _option_end(args, i, mine)
                if (end > len(args) or "--" in args[i + 1:end]) and not ctx.resilient_parsing:
                    raise click.UsageError(f"{name} needs a value: put {name} VALUE before the command, e.g. jaxyard {name} VALUE {args[at]}")
                moved += args[i:end]
            else:
                end = _option_end(args, i, own) if token.startswith("-") else i + 1
                kept += args[i:end]
            i = end
        return [*args[:at], *moved, args[at], *kept, *args[i:]]

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _ReaderGone as gone:  # a run stopped as if interrupted (resumable); the command ends as on any broken pipe
            _leave_job(click.exceptions.Exit(1))
            raise gone.__cause__ from None  # click's main exits quietly (status 1, no message)
        except (JaxyardError, OSError) as err:
            if isinstance(err, BrokenPipeError) and _reader_gone():
                _leave_job(click.exceptions.Exit(1))
                raise  # click's main exits quietly (status 1, no message), as other CLIs do on EPIPE
            if (ctx.obj and ctx.obj.debug) or env_flag("JAXYARD_DEBUG"):
                _leave_job(err)
                raise
            if isinstance(err, OSError):  # a full disk, a file that vanished: name it, exit 1
                where = f"{err.filename}: " if err.filename else ""
                error = click.ClickException(f"{where}{err.strerror or err}")
            else:
                error = click.ClickException(str(err))
                error.exit_code = err.exit_code
            _leave_job(error)
            raise error from None
        except BaseException as err:
            _leave_job(err)
            raise


def _valued(params) -> dict[str, int]:
    """Each option name of ``params`` and how many values follow it (0: a flag)."""
    return {name: 0 if p.is_flag or p.count else p.nargs
            for p in params if isinstance(p, click.Option) for name in [*p.opts, *p.secondary_opts]}


def _option_end(args: list[str], i: int, valued: dict[str, int]) -> int:
    """The index after the option ``args[i]`` and its values (past the end when some are missing)."""
    token = args[i]
    return i + 1 if "=" in token else i + 1 + valued.get(token, 0)


class _ReaderGone(KeyboardInterrupt):
    """stdout's reader has gone while a run was printing (``jaxyard run | head -2``). The run stops
    as a Ctrl-C stops it (every plugin told, the run directory resumable), then the command ends
    quietly as other CLIs end on a broken pipe. Its cause is the BrokenPipeError."""


def _report_echo():
    """click.echo for a run's report: the first write to stdout whose reader has gone stops the run
    (:class:`_ReaderGone`); nothing more is printed to it (what the plugins say as the run stops)."""
    gone = []

    def echo(line: str = "") -> None:
        if gone:
            return
        try:
            click.echo(line)
        except BrokenPipeError as err:
            if not _reader_gone():
                raise
            gone.append(err)
            raise _ReaderGone() from err

    return echo


def _reader_gone() -> bool:
    """Whether stdout or stderr is a pipe whose reader has closed it (a broken pipe of this
    process's own output, not of a socket or a child's pipe): ``poll`` reports an error on it."""
    import select

    if not hasattr(select, "poll"):  # (Windows) any broken pipe is taken for the output's
        return True
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # replaced (click's test runner): not a pipe
            continue
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            return True
    return False


def _leave_job(err: BaseException) -> None:
    """A process of a job that fails exits now: at a normal exit jax waits (5 minutes) for every
    process to shut down, while the others wait in a collective for this one."""
    from jaxyard.core.scale import processes

    if not processes.joined() or isinstance(err, SystemExit) and not err.code:
        return
    import traceback

    if isinstance(err, click.ClickException):
        err.show()
        code = err.exit_code
    elif isinstance(err, click.exceptions.Exit):  # nothing to say (the output's reader has gone)
        code = err.exit_code
    elif isinstance(err, KeyboardInterrupt):
        click.echo("Aborted!", err=True)
        code = 130
    else:
        traceback.print_exception(err)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that has gone
            pass
    os._exit(code)


@click.group(cls=JaxyardGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--registry", "registry_file", metavar="FILE", envvar="JAXYARD_REGISTRY",
    help="A registry.toml merged over the shipped one [env JAXYARD_REGISTRY].",
)
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE|FILE.py", help="Load a local plugin (repeatable).")
@click.option("--disable", multiple=True, metavar="NAME", help="Block a plugin by name (repeatable) [env JAXYARD_DISABLE_PLUGINS].")
@click.option("--strict-plugins", is_flag=True, help="Fail if any plugin fails to load [env JAXYARD_STRICT_PLUGINS=1].")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--cpu-devices", metavar="N", envvar="JAXYARD_CPU_DEVICES",
    help="Make N host (CPU) devices, e.g. to try --devices on a laptop [env JAXYARD_CPU_DEVICES].",
)
@click.version_option(package_name="jaxyard")
@click.pass_context
def cli(ctx, registry_file, plugins, disable, strict_plugins, debug, cpu_devices):
    """jaxyard: train with swappable optimizers, schedules, models, loaders and checkpointers.

    Components come from plugins: jaxyard's built-ins, installed packages (entry points in the
    group "jaxyard") and local modules. `jaxyard list` shows them; `jaxyard run` trains.
    Global options may also come after the command: `jaxyard run --debug`.
    """
    ctx.obj = Session(registry_file, plugins, disable, strict_plugins, debug)
    if cpu_devices:
        from jaxyard.core.scale.layout import use_cpu_devices

        try:
            use_cpu_devices(cpu_devices)  # before jax starts: this CLI imports it late
        except JaxyardError as err:
            raise click.UsageError(str(err)) from None


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@cli.command("list", short_help="List the registered components.")
@click.argument("kind", required=False)
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(session, kind, pattern, as_json):
    """List registered components, optionally of one KIND and matching a glob PATTERN.

    \b
    Examples:
      jaxyard list
      jaxyard list optimizers 'adam*'
      jaxyard list '*sgd*'
    """
    registry = session.registry
    if kind and pattern is None and kind.rstrip("s") not in KINDS and any(c in kind for c in "*?["):
        kind, pattern = None, kind  # `jaxyard list 'adam*'`: a pattern over every kind
    entries = registry.entries(kind, pattern)
    if as_json:
        return _echo_json([D.entry_dict(e, registry) for e in entries])
    if not entries:
        click.echo("No components match.")
        return
    rows = {k: [[e.selector, e.description, f"[{e.plugin}]"] for e in entries if e.kind == k] for k in KINDS}
    widths = D.table([r for rs in rows.values() for r in rs])  # align every kind alike
    lines = iter(widths)
    for k in KINDS:
        if rows[k]:
            click.echo(f"{k}s:")
            for _ in rows[k]:
                click.echo(next(lines))


@cli.command(short_help="Show a component's parameters (or the [run] settings).")
@click.argument("kind")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(session, kind, name, as_json):
    """Show a component's parameters, or the [run] settings with `show run`.

    \b
    Examples:
      jaxyard show optimizer adamw
      jaxyard show run
    """
    if kind == "run":
        from jaxyard.core.registry.run_settings import RunSettings

        params = D.params_list(RunSettings, session.settings.values.get("run"))
        data = {"kind": "run", "name": "run", "description": "the [run] table of registry and config files", "params": params}
    else:
        registry = session.registry
        if not name:
            from jaxyard.core.registry.loading import normalize_kind

            try:
                normalize_kind(kind)
            except JaxyardError:  # `show cnn`: a component's name where the kind goes
                owners = [k for k in KINDS if kind in registry.names(k)]
                if owners:
                    from jaxyard.core.errors import UsageError

                    article = "an" if owners[0][0] in "aeiou" else "a"
                    raise UsageError(f"{kind!r} is not a kind but {article} {owners[0]}: jaxyard show {owners[0]} {kind}") from None
                raise
            raise click.UsageError("missing NAME: jaxyard show KIND NAME")
        entry = registry.get(kind, name)
        configured = session.settings.values.get(entry.kind, {}).get(entry.selector)
        data = D.entry_dict(entry, registry, params=True, configured=configured)
    if as_json:
        return _echo_json(data)
    click.echo(f"{data['kind']} {data['name']}: {data['description']}")
    if data.get("plugin"):
        dist = f" ({data['distribution']} {data['version']})" if data["distribution"] else ""
        click.echo(f"  plugin: {data['plugin']}{dist}")
    if data.get("metrics"):
        click.echo("  metrics: " + ", ".join(f"{name} ({way})" for name, way in data["metrics"].items()))
    if not data["params"]:
        click.echo("  parameters: none")
        return
    click.echo("  parameters:")
    marks = {"traced": " [traced in sweeps]", "writes": " [a path inside the run directory]",
             "outside": " [a destination: --set or a registry file only]"}
    rows = [[p["name"], p["type"], _value_text(p), p["doc"] + "".join(m for k, m in marks.items() if p.get(k))] for p in data["params"]]
    for line in D.table(rows, indent="    "):
        click.echo(line)


def _value_text(p: dict) -> str:
    """``= default``, or ``= value`` and where it differs the default, when a registry file sets it."""
    value = f"= {json.dumps(p.get('configured', p['default']), default=str)}"
    if "configured" in p and p["configured"] != p["default"]:
        value += f" (registry; default {json.dumps(p['default'], default=str)})"
    return value


@cli.command(short_help="Show the plugins, their hooks and components.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def plugins(session, as_json):
    """Show the plugins loaded (and those that failed), their hooks and components, and the
    jaxyard each installed package requires."""
    from jaxyard.core.registry.api import PLUGIN_API

    registry = session.registry
    infos = registry.plugins
    if as_json:
        return _echo_json([{**D.plugin_dict(p), "requires": _requires_text(registry, p)} for p in infos])
    for p in infos:
        status = "disabled" if p.disabled else "ok" if p.ok else "FAILED"
        dist = f"{p.distribution} {p.version}" if p.distribution else "-"
        click.echo(f"{p.name}  [{p.source}, {dist}]  {status}")
        if p.source == "entry point":
            click.echo(f"  requires: {_requires_text(registry, p) or 'jaxyard (its package declares no version)'}")
        if p.disabled:
            continue
        if p.ok:
            click.echo(f"  hooks: {', '.join(p.hooks) or '-'}")
            click.echo(f"  components: {', '.join(p.components) or '-'}")
            for warning in p.warnings:
                click.echo(f"  warning: {warning}")
        else:
            click.echo(f"  error: {p.error}")
    import jaxyard

    click.echo(f"jaxyard {jaxyard.__version__}, plugin API {PLUGIN_API} (a plugin package declares the jaxyard it needs as a dependency)")


def _requires_text(registry, info) -> str | None:
    """``jaxyard>=0.2`` for a plugin whose package declares it, else None."""
    specifier = registry.requirement(info.name)
    return None if specifier is None else f"jaxyard{specifier}"


def _run_options(f, *, sweep: bool = False, only: tuple[str, ...] = ()):
    """The options of ``run`` (``only``: those of these names); for ``sweep`` each value may also
    be a list or a distribution."""
    spec = " (or a list, a-b, log(a,b), int(a,b), choice(a,b))" if sweep else ""
    listed = " (or a list)" if sweep else ""
    number = {"type": str} if sweep else {}
    options = {
        "config": click.option("--config", "config_file", metavar="FILE", help="An experiment TOML file ([run] and [KIND.NAME] tables)."),
        **{k: click.option(f"--{k}", metavar="NAME", help=f"The {k} to use (jaxyard list {k}s){listed}.") for k in CHOSEN},
        "logger": click.option(
            "--logger", "loggers", multiple=True, metavar="NAME", help="Add an experiment logger to run.loggers (repeatable; jaxyard list loggers)."
        ),
        "epochs": click.option("--epochs", **(number or {"type": int}), help=f"Number of epochs{listed}."),
        "steps": click.option(
            "--steps", **(number or {"type": int}),
            help=f"Train this many batches instead of --epochs (run.steps; run.eval_every: how often to validate){listed}.",
        ),
        "batch-size": click.option("--batch-size", **(number or {"type": int}), help=f"Examples per step{listed}."),
        "lr": click.option("--lr", "learning_rate", **(number or {"type": float}), help=f"Peak learning rate{spec}."),
        "devices": click.option("--devices", metavar="N|all", help="Local devices to train on: the batch is split over them (run.devices)."),
        "seed": click.option(
            "--seed", **(number or {"type": int}),
            help=f"Seeds the initialisation, dropout and the shuffle (the data has its own seeds, e.g. loader.data_seed){spec}.",
        ),
        "set": click.option(
            "--set", "sets", multiple=True, metavar="KIND.KEY=VALUE", help=f"Set a parameter of a chosen component or of run (repeatable){spec}."
        ),
    }
    for name, option in reversed(options.items()):
        if not only or name in only:
            f = option(f)
    return f


def _job_options(f):
    """Joining a job of several processes (``jax.distributed``; ``launch`` sets the environment): the
    command receives them as one ``job`` dict, for :func:`_join`."""
    from jaxyard.core.scale import processes as J

    @functools.wraps(f)
    def command(*args, coordinator, num_processes, process_id, coordinator_bind, cluster, **kwargs):
        job = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id, "bind": coordinator_bind,
               "cluster": cluster}
        return f(*args, job=job, **kwargs)

    for option in reversed([
        click.option("--coordinator", metavar="HOST:PORT", envvar=J.ENV_COORDINATOR,
                     help=f"Join a multi-process job whose process 0 serves at HOST:PORT [env {J.ENV_COORDINATOR}]."),
        click.option("--num-processes", type=int, metavar="M", envvar=J.ENV_NUM_PROCESSES,
                     help=f"Processes in the job [env {J.ENV_NUM_PROCESSES}]."),
        click.option("--process-id", type=int, metavar="I", envvar=J.ENV_PROCESS_ID,
                     help=f"This process's index, 0 to M-1 [env {J.ENV_PROCESS_ID}]."),
        click.option("--coordinator-bind", metavar="HOST:PORT",
                     help="Where process 0's coordination service listens (default: the --coordinator address if it is a loopback one, "
                          "else every interface)."),
        click.option("--cluster", is_flag=True, help="Join the job JAX finds in the environment (SLURM, Open MPI, ...)."),
    ]):
        command = option(command)
    return command


def _join(job: dict, resolve=None, *, agree: bool = False):
    """Join the job (before jax starts), if one is asked for; then ``resolve()`` the configuration
    on every process and return it: one that fails on any process fails on every process with its
    line (a process that failed alone would leave the others waiting in the job). ``agree``: the
    processes then agree that they resolved the same one (``train`` and ``resume`` check theirs
    themselves)."""
    from jaxyard.core.scale.processes import join, together

    joined = join(**job)
    if resolve is None:
        return None
    config = together(resolve)
    if joined and agree:
        from jaxyard.core.train.engine import agree_config

        agree_config(config)
    return config


def _resolve(session, config_file, sets, loggers=(), *, unbuilt=(), **options):
    from jaxyard.core.registry.config import resolve_config

    return resolve_config(session.registry, session.settings, config_file=config_file, options=options, sets=sets, loggers=loggers,
                          unbuilt=unbuilt)


def _warn(line: str) -> None:
    click.echo(line, err=True)


def _progress():
    """A progress-bar factory when stdout is a terminal; none otherwise (logs stay clean)."""
    if not sys.stdout.isatty():
        return None
    return functools.partial(click.progressbar, show_pos=True)


def _exit_quickly() -> None:
    """Have this training process end without walking its objects again: jax, flax and optax leave
    a million of them, and the interpreter's collections while it tears down cost 0.2 to 0.5 s.
    ``gc.freeze()`` as an exit handler (after every handler registered later, before those
    registered earlier) leaves them out; they are freed with the process (Python never promised
    to collect them at exit). The program's choice, not the library's: a notebook is left alone."""
    import atexit
    import gc

    if not getattr(_exit_quickly, "done", False):
        _exit_quickly.done = True  # type: ignore[attr-defined]
        atexit.register(gc.freeze)


# Set by main(): this process is the jaxyard program (not a CliRunner in a test, nor a notebook), and may
# start helper processes of its own.
_AS_PROGRAM = False


def _prepare_plotting(curves: bool) -> None:
    """The program's run that will plot its curves starts matplotlib in a process of its own, beside
    jax's start (one process of a job plots: a job's are left alone). Not ``resume``'s: it may yet
    refuse a run directory, and must then have started nothing."""
    from jaxyard.core.scale.processes import joined

    if _AS_PROGRAM and curves and not joined():
        from jaxyard.core.experiments.plot import prepare

        prepare()


@contextlib.contextmanager
def _imported_for_good():
    """The program's imports of the engine (jax, flax, optax: about a million objects that live as
    long as it does) run with the cyclic garbage collector off, and are frozen after: otherwise
    three full collections walk them during the import and the first compile (~0.1 s on 2
    cores), and every later one again. The program's choice: a test or a notebook is left alone."""
    if not _AS_PROGRAM:
        yield
        return
    import gc

    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _compile_cache(no_cache: bool):
    if no_cache or env_flag(ENV_NO_CACHE):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxyard" / "jax"


@cli.command(short_help="Train with the chosen components.")
@_run_options
@click.option("--out", metavar="DIR", help="The run's directory (default: run.runs_dir/<timestamp>-<model>-<optimizer>-<loader>).")
@click.option("--profile", is_flag=True, default=None, help="Write a jax.profiler trace of the second epoch to RUN_DIR/profile (run.profile).")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and exit.")
@click.option("--no-compile-cache", is_flag=True, help=f"Do not use JAX's persistent compilation cache [env {ENV_NO_CACHE}=1].")
@_job_options
@click.pass_obj
def run(session, config_file, sets, out, dry_run, no_compile_cache, job, **options):
    """Train a model with the chosen components and write a run directory.

    \b
    Examples:
      jaxyard run
      jaxyard run --optimizer sgd --set optimizer.momentum=0.9 --set optimizer.nesterov=true
      jaxyard run --config examples/experiment.toml --dry-run
      jaxyard run --loader npz --set loader.path=data.npz --epochs 20
      jaxyard launch -n 2 -- run    (a job of 2 processes on this machine)
    """
    if dry_run:
        click.echo(_resolve(session, config_file, sets, **options).to_toml(), nl=False)
        return
    config = _join(job, lambda: _resolve(session, config_file, sets, **options))  # joined first: a failure is every process's line
    _prepare_plotting(config.run.curves)
    with _imported_for_good():
        from jaxyard.core.train.engine import train

    _exit_quickly()
    train(config, out_dir=out, echo=_report_echo(), warn=_warn, progress=_progress(), compile_cache=_compile_cache(no_compile_cache))


@cli.command(short_help="Compile one step and report its cost, memory and fit.")
@_run_options
@click.option(
    "--memory-limit", metavar="GIB", type=click.FloatRange(min=0, min_open=True),
    help="Check the fit against this many GiB per device (default: what the device has free).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_job_options
@click.pass_obj
def check(session, config_file, sets, memory_limit, as_json, job, **options):
    """Build the configured run as shapes only, compile one training step ahead of time for its
    devices and print its size, FLOPs per step, memory per device, compile time and whether it
    fits. A combination that cannot work fails here with the same one-line error as `run`.

    \b
    Examples:
      jaxyard check --set model.hidden_dims=[4096,4096]
      jaxyard --cpu-devices 4 check --devices 4 --set run.shard_params=true --json
      jaxyard --cpu-devices 2 launch -n 2 -- check    (the layout of a job of 2 processes)
    """
    # joined first: a failure is every process's line; no logger is built, so none of their destinations is refused
    config = _join(job, lambda: _resolve(session, config_file, sets, unbuilt=("logger",), **options), agree=True)
    from jaxyard.core.scale import processes
    from jaxyard.core.train.check import check as check_config

    limit = int(memory_limit * 2**30) if memory_limit else None
    info = check_config(config, memory_limit=limit)
    if processes.is_primary() and as_json:  # process 0 reports for the job
        _echo_json(info)
    elif processes.is_primary():
        _print_check(info)
    if info["fits"] is False:
        from jaxyard.core.errors import UsageError

        raise UsageError(
            f"model {info['model']!r} needs {info['memory_per_device_bytes'] / 2**30:.2f} GiB per device, more than the "
            f"{info['memory_limit_bytes'] / 2**30:.2f} GiB of {info['memory_limit_source']}: lower run.batch_size or the model's sizes, "
            f"or add devices with run.shard_params = true"
        )


def _print_check(info) -> None:
    gib = 2**30
    click.echo(f"{info['model']} with {info['optimizer']} on {info['layout']}, batch {info['batch_size']}:")
    click.echo(f"  parameters:        {info['parameters']:,} ({info['parameter_bytes'] / 2**20:.2f} MiB)")
    click.echo(f"  optimizer state:   {info['optimizer_state_bytes'] / 2**20:.2f} MiB")
    flops = info["flops_per_step_per_device"]
    where = " per device" if info["devices"] > 1 else ""
    click.echo(f"  FLOPs per step:    {flops / 1e9:.3f} GFLOP{where}" if flops else "  FLOPs per step:    unknown (the backend reports none)")
    step = info["step_memory_per_device_bytes"]
    click.echo(f"  memory per device: {info['memory_per_device_bytes'] / 2**20:.2f} MiB"
               + (f" (step {step / 2**20:.2f} MiB + data {info['data_per_device_bytes'] / 2**20:.2f} MiB)" if step is not None else ""))
    click.echo(f"  compile time:      {info['compile_seconds']:.2f} s")
    limit = info["memory_limit_bytes"]
    if info["fits"] is None:
        click.echo("  fits:              unknown (no memory figure for this device)")
    else:
        verdict = "yes" if info["fits"] else "NO"
        click.echo(f"  fits:              {verdict}: {info['memory_per_device_bytes'] / gib:.2f} GiB of {limit / gib:.2f} GiB "
                   f"({info['memory_limit_source']})")


@cli.command(short_help="Print (and plot) the learning rate over a run.")
@_run_options  # all of run's: the command line of a run plots its rate (options the rate ignores are checked, not used)
@click.option("--steps-per-epoch", type=click.IntRange(min=1),
              help="Optimizer steps per epoch (default: from the loader's train split and the batch size).")
@click.option("--points", default=11, show_default=True, type=click.IntRange(min=2), help="Rows of the table (at least 2).")
@click.option("--png", metavar="FILE", help="Also plot the rate at every step to this PNG.")
@click.pass_obj
def schedule(session, config_file, sets, steps_per_epoch, points, png, **options):
    """Print the learning rate over a run of the given configuration (nothing is trained; with
    --steps-per-epoch no data is read either).

    \b
    Examples:
      jaxyard schedule
      jaxyard schedule --scheduler exponential --set scheduler.decay_rate=0.9 --epochs 20 --png lr.png
      jaxyard schedule --scheduler warmup --steps-per-epoch 500 --set run.warmup_steps=1000
    """
    config = _resolve(session, config_file, sets, unbuilt=("logger",), **options)  # builds no logger: a destination one names sends nothing
    from jaxyard.core.train.build import schedule_points

    info = schedule_points(config, points, steps_per_epoch=steps_per_epoch)
    run = config.run
    span = f"run.steps; {info['steps_per_epoch']} an epoch" if run.steps else f"{run.epochs} epochs of {info['steps_per_epoch']}"
    click.echo(
        f"{config.scheduler.name}: peak {run.learning_rate:g}, warmup {info['warmup_steps']} steps, "
        f"{info['total_steps']} steps ({span})"
    )
    for line in D.table([["step", "epoch", "learning rate"]] + [
        [str(step), f"{step / info['steps_per_epoch']:.1f}", f"{lr:.6g}"] for step, lr in info["table"]
    ]):
        click.echo(line)
    if png:
        from jaxyard.core.experiments.plot import plot_schedule

        click.echo(f"Plot saved to {plot_schedule(info['every_step'], Path(png), title=config.scheduler.name)}")


@cli.command(short_help="Continue an interrupted run from its newest checkpoint.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), help="Change run.epochs deliberately: a finished run continues to this many.")
@click.option("--steps", type=click.IntRange(min=0), help="Change run.steps deliberately (0: run.epochs).")
@click.option("--set", "sets", multiple=True, metavar="KIND.KEY=VALUE",
              help="Change a value of config.toml deliberately, or give one a data file may not (repeatable; as run's --set).")
@click.option("--devices", metavar="N|all",
              help="Continue on other devices (checkpoints restore in any layout); for this resume only: config.toml keeps the run's own.")
@click.option("--shard-params/--no-shard-params", default=None, help="Continue with the state sharded (or not) over the devices (this resume only).")
@click.option("--no-compile-cache", is_flag=True, help=f"Do not use JAX's persistent compilation cache [env {ENV_NO_CACHE}=1].")
@_job_options
@click.pass_obj
def resume(session, run_dir, epochs, steps, sets, devices, shard_params, no_compile_cache, job):
    """Continue an interrupted run from its newest intact checkpoint, in its own layout or another
    (--devices, a job of several processes: checkpoints restore in any).

    RUN_DIR/config.toml must match the configuration its checkpoints were trained with (before the
    first checkpoint: the one it started with, RUN_DIR/config.bound.json); a difference is refused,
    naming the keys. --epochs, --steps and --set change the run
    deliberately: the change is printed, recorded in RUN_DIR/changes.jsonl and config.toml, and
    the checkpoints saved after carry it.

    \b
    Examples:
      jaxyard resume runs/20261126-101010-mlp-adam-synthetic
      jaxyard resume runs/20261126-101010-mlp-adam-synthetic --epochs 20
      jaxyard resume runs/RUN --set logger.mlflow.tracking_uri=http://127.0.0.1:5000
    """
    _join(job)
    with _imported_for_good():
        from jaxyard.core.train.engine import resume as resume_run

    _exit_quickly()
    resume_run(
        run_dir, registry=session.registry, echo=_report_echo(), warn=_warn, progress=_progress(), compile_cache=_compile_cache(no_compile_cache),
        devices=devices, shard_params=shard_params, epochs=epochs, steps=steps, sets=sets,
    )


@cli.command(short_help="Run a command as M processes of one job on this machine.",
             context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-n", "--num-processes", "count", type=click.IntRange(min=1), required=True, help="Processes to start.")
@click.option("--port", type=click.IntRange(1, 65535), help="The coordinator's port on 127.0.0.1 (default: a free one).")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def launch(session, count, port, args):
    """Start COUNT processes of `jaxyard ARGS` as one job (a loopback coordinator), each line of
    their output prefixed with its process index. If one fails, the others are stopped; the exit
    code is the worst of theirs.

    \b
    Examples:
      jaxyard --cpu-devices 2 launch -n 2 -- run --epochs 3
      jaxyard launch -n 2 -- resume runs/20261126-101010-mlp-adam-synthetic
    """
    from jaxyard.core.scale.launch import launch as launch_job

    args = list(args[1:] if args[:1] == ("--",) else args)
    try:
        code = launch_job(count, [*_global_options(session), *args], echo=click.echo, echo_err=_warn, port=port)
    except KeyboardInterrupt:
        _warn("jaxyard launch: interrupted; every process was stopped")
        code = 130
    sys.exit(code)


def _global_options(session) -> list[str]:
    """The global options this command was given, for the processes it starts."""
    from jaxyard.core.scale.launch import global_options

    return global_options(registry=session.registry_file, plugins=session.plugins, disable=session.disable, strict=session.strict,
                          debug=session.debug)


@cli.command("eval", short_help="Evaluate a saved checkpoint on the test split.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--checkpoint",
    default="latest",
    show_default=True,
    metavar="latest|best|STEP",
    help="The newest intact checkpoint, the one whose epoch is best by the run's monitor (run.monitor), or a step.",
)
@click.option(
    "--weights", type=click.Choice(["model", "ema"]), default="model", show_default=True,
    help="The trained weights, or their moving average (runs with run.ema_decay).",
)
@click.pass_obj
def eval_(session, run_dir, checkpoint, weights):
    """Evaluate a run's saved model on the test split, without training."""
    from jaxyard.core.train.engine import evaluate

    evaluate(run_dir, checkpoint=checkpoint, weights=weights, registry=session.registry, echo=click.echo)


# --- upgrade: a run directory read again after its plugins were upgraded -------------------------


_CHECKPOINT_HELP = "The newest intact checkpoint, the one whose epoch is best by the run's monitor (run.monitor), or a step."


@cli.command(short_help="Write a run's trained model as a file that runs without jaxyard.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--checkpoint", default="latest", show_default=True, metavar="latest|best|STEP", help=_CHECKPOINT_HELP)
@click.option("--weights", type=click.Choice(["model", "ema"]), default="model", show_default=True,
              help="The trained weights, or their moving average (runs with run.ema_decay).")
@click.option("--format", "fmt", type=click.Choice(["jax", "onnx", "safetensors"]), default="jax", show_default=True,
              help="jax: a jax.export program (and a .json sidecar); onnx: via jax2onnx, checked with onnxruntime "
                   "(jaxyard[onnx]); safetensors: the weights by name.")
@click.option("--out", metavar="FILE", help="The file to write (default: RUN_DIR/export/model.<format>).")
@click.pass_obj
def export(session, run_dir, checkpoint, weights, fmt, out):
    """Export RUN_DIR's model at a checkpoint (read as `eval` reads it), written atomically. See docs/export.md."""
    from jaxyard.core.deploy.export import export as export_model

    done = export_model(run_dir, format=fmt, out=out, checkpoint=checkpoint, weights=weights, registry=session.registry,
                        echo=click.echo)
    click.echo(f"Exported {done.trained} as {done.format}: {done.path} ({done.size:,} bytes)")
    if done.sidecar is not None:
        click.echo(f"  Sidecar (shapes, task, source): {done.sidecar}")
    if done.difference is not None:
        click.echo(f"  Checked with onnxruntime on {done.rows} rows: largest difference {done.difference:.2g}")


@cli.command(short_help="Write a trained model's predictions for the examples of a file.")
@click.argument("source", metavar="RUN_DIR|ARTIFACT", type=click.Path(exists=True))
@click.option("--input", "input_file", required=True, metavar="FILE.npz|FILE.csv",
              help="The examples: an .npz array (x, tokens, its only one, or --key) or a .csv of numbers, one example a row.")
@click.option("--output", required=True, metavar="FILE.npz|FILE.csv|FILE.jsonl", help="Where to write the predictions.")
@click.option("--key", metavar="NAME", help="The .npz array to read.")
@click.option("--checkpoint", default="latest", show_default=True, metavar="latest|best|STEP", help=_CHECKPOINT_HELP)
@click.option("--weights", type=click.Choice(["model", "ema"]), default="model", show_default=True,
              help="The trained weights, or their moving average (a run directory with run.ema_decay).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Examples per model call.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), help="Tokens to generate per prompt (next_token; default 16).")
@click.option("--header/--no-header", default=None,
              help="Whether a .csv input's first row holds column names (default: auto; predict says which it chose).")
@click.pass_obj
def predict(session, source, input_file, output, key, checkpoint, weights, batch_size, max_new_tokens, header):
    """Predict for every example of --input with the trained model and write the task's predictions
    (classification: class, probabilities; regression: value; multilabel: probabilities, labels;
    next_token: greedily generated tokens) to --output. See docs/export.md."""
    from jaxyard.core.deploy.predict import predict as predict_rows

    done = predict_rows(source, inputs=input_file, output=output, key=key, checkpoint=checkpoint, weights=weights,
                        batch_size=batch_size, max_new_tokens=max_new_tokens, header=header, registry=session.registry, echo=click.echo)
    shapes = ", ".join(f"{name} {tuple(shape)}" for name, shape in done.shapes.items())
    click.echo(f"Predicted {done.rows} examples with {done.source}: {shapes} -> {done.output}")


@cli.command(short_help="Drop a run's config keys that upgraded plugins no longer take.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Drop them without asking.")
@click.pass_obj
def upgrade(session, run_dir, yes):
    """List the keys of RUN_DIR/config.toml that its components no longer take (a plugin upgraded
    since the run dropped a parameter), ask, then rewrite the file without them, keeping the old one
    as config.toml.bak. The other values are untouched, so eval and resume give the run's numbers."""
    from jaxyard.core.store import rundir as rd

    path = Path(run_dir) / rd.CONFIG

    def confirm(keys, backup) -> bool:
        click.echo(f"Keys of {path} that its components no longer take:")
        for key in keys:
            click.echo(f"  {key.describe()}")
        return yes or click.confirm(f"Drop {_count(keys)}, keeping the old file as {backup.name}?", abort=True)

    keys, backup = rd.drop_stale_keys(run_dir, session.registry, confirm=confirm)
    if not keys:
        click.echo(f"{path}: every key is one its components take; nothing to do")
        return
    click.echo(f"Dropped {_count(keys)} from {path} (the old file is {backup}); "
               f"`jaxyard eval {run_dir}` and `jaxyard resume {run_dir}` read it now.")


def _count(keys: list) -> str:
    return f"{len(keys)} key{'s' * (len(keys) > 1)}"


@cli.command(short_help="Compare runs: the settings that differ, their metrics and curves.")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option(
    "--metric", metavar="METRIC",
    help="The per-epoch metric to rank and plot; which way is better is the runs' task's "
    "[default: val_NAME for the task's first metric besides the loss (val_acc for classification), else val_loss].",
)
@click.option("--png", metavar="FILE", help="Also plot METRIC per epoch, one line per run, to this PNG.")
@click.option("--per-run", is_flag=True, help="One row per run, also for runs that differ only in their seed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with \"groups\": the runs grouped by seed).")
def compare(run_dirs, metric, png, per_run, as_json):
    """Compare run directories (a sweep directory stands for its trials, a folder such as runs/
    for the runs in it), best METRIC first: the settings that differ, epochs run, final and best
    METRIC, and the test metrics of their task (summary.json records each metric's direction;
    runs of 0.2 have loss and acc).

    Runs that differ only in their seed (run.seed) are one row: n, the seeds, and each metric's
    mean ± sample standard deviation (a run alone has its value, n = 1). Only runs that got as
    far are averaged: an unfinished run, a pruned or failed trial and a repeated seed get rows of
    their own. A folder stands for the runs and sweeps inside it, at any depth.

    \b
    Examples:
      jaxyard compare runs/adam runs/sgd
      jaxyard compare runs/
      jaxyard compare sweeps/lr --metric val_loss --png compare.png
    """
    from jaxyard.core.experiments import compare as C
    from jaxyard.core.experiments import seeds as S

    runs = C.load_runs(run_dirs)
    groups = S.group_by_seed(runs, metric)
    if as_json:
        _echo_json({**C.summarize(runs, metric), "groups": groups["groups"]})
    elif S.repeated(groups) and not per_run:
        _print_table(*S.table(groups))
    else:
        headers, rows = C.table(runs, metric)
        _print_table(headers, rows, C.format_rows(headers, rows))
    if png:
        click.echo(f"Plot saved to {C.plot_compare(runs, metric, Path(png))}", err=as_json)  # stdout stays JSON


def _print_table(headers: list[str], rows: list[list], text: list[list[str]]) -> None:
    """``text`` in aligned columns; a rich table when stdout is a terminal (numbers right-aligned)."""
    if not sys.stdout.isatty():
        for line in D.table([headers, *text]):
            click.echo(line)
        return
    from rich.console import Console
    from rich.table import Table

    grid = Table(box=None, header_style="bold", pad_edge=False)
    for i, header in enumerate(headers):
        numeric = all(isinstance(row[i], (int, float)) or row[i] is None for row in rows)
        grid.add_column(header, justify="right" if numeric and i else "left")
    for row in text:
        grid.add_row(*row)
    Console().print(grid)


@cli.command(short_help="Train a grid or a search of configurations and rank them.")
@functools.partial(_run_options, sweep=True)
@click.option("--out", metavar="DIR", help="The sweep's directory (default: run.runs_dir/sweep-<timestamp>).")
@click.option(
    "--sampler", type=click.Choice(["grid", "random", "tpe"]), help="How trials are chosen (default: grid for lists, tpe with a distribution)."
)
@click.option("--trials", type=click.IntRange(min=1), help="How many trials (default: the whole grid; needed with a distribution).")
@click.option(
    "--prune", type=click.Choice(["median", "hyperband", "none"]),
    help="Stop hopeless trials early, from their per-epoch `run.monitor` [default: median].",
)
@click.option("--storage", metavar="URL", help="An Optuna storage URL to share the study (default: a journal file in the sweep directory); "
                                               "with --resume, given again: a sweep directory's own is not followed.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Local worker processes on the same study.")
@click.option("--vectorize", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Train the trials of one static group as one vmapped program (auto: on GPU/TPU, off on CPU, where it is slower).")
@click.option("--resume", "resume_dir", metavar="DIR",
              help="Continue the sweep in DIR: requeue the trials of killed workers and those a full disk (or the like) failed, run the rest.")
@click.option("--worker-index", type=int, hidden=True)
@click.option("--no-compile-cache", is_flag=True, help=f"Do not use JAX's persistent compilation cache [env {ENV_NO_CACHE}=1].")
@click.pass_obj
def sweep(
    session, config_file, sets, loggers, out, sampler, trials, prune, storage, workers, vectorize, resume_dir, worker_index, no_compile_cache,
    **options,
):
    """Train every configuration of a grid, or TRIALS ones an Optuna sampler picks, in one
    process per worker: runs that differ only in traced hyperparameters (the learning rate, the
    optimizer's betas, ...) and the seed share one compiled program.

    \b
    Examples:
      jaxyard sweep --lr 1e-4,3e-4,1e-3,3e-3 --seed 0-2
      jaxyard sweep --lr 'log(1e-4,1e-2)' --set optimizer.b2=0.99,0.999 --trials 20 --workers 2
      jaxyard sweep --resume runs/sweep-20261126-120000
    """
    from jaxyard.core.experiments import sweep as S

    vectorized = S.vectorized(vectorize)
    if worker_index is not None:  # one of --workers: run trials, print them, leave the summary to the parent
        S.check_storage(Path(resume_dir), S.load_spec(resume_dir), storage)
        counts = S.run_worker(resume_dir, registry=session.registry, worker=worker_index, vectorize=vectorized, echo=click.echo,
                              warn=_warn, compile_cache=_compile_cache(no_compile_cache), wave=S.worker_wave(resume_dir, workers),
                              sets=sets)
        click.echo(f"Worker {worker_index}: {_counts_text(counts)}")
        return
    if resume_dir:
        changed = {**options, "config": config_file, "out": out, "sampler": sampler, "trials": trials, "prune": prune}
        flag = {"learning_rate": "--lr"}
        given = [flag.get(k, f"--{k.replace('_', '-')}") for k, v in changed.items() if v] + ["--logger"] * bool(loggers)
        if given:
            from jaxyard.core.errors import UsageError

            raise UsageError(f"{given[0]} cannot change a sweep being resumed (its sweep.json holds them); start a new sweep")
        directory = Path(resume_dir)
        explicit = S.destinations(directory, session.registry, sets)  # --set: only the destinations base.toml names, given again
        S.resume(directory, storage=storage, echo=click.echo, warn=_warn)  # --storage: only the sweep's own, given again
    else:
        from jaxyard.core.registry.config import outside_sets

        bases: list = []  # the configurations resolved from the command line: their destinations are the user's word

        def resolve(values):
            bases.append(_resolve(session, config_file, values, loggers))
            return bases[-1]

        directory = S.new(resolve, options=options, sets=sets, out=out, sampler=sampler, trials=trials, prune=prune or "median",
                          storage=storage)
        explicit = outside_sets(bases[0])
        planned = S.load_spec(directory).trials
        if trials and trials > planned:
            click.echo(f"Note: --trials {trials} is more than the grid's {planned} points: {planned} trials")
    spec = S.load_spec(directory)
    space = ", ".join(f"{S.short(d.name)} {_dim_text(d)}" for d in spec.dims)
    click.echo(f"Sweep {directory}: {spec.trials} trials over {space}; sampler {spec.sampler}, pruner {spec.prune}, "
               f"{workers} worker(s){', vectorized' * vectorized}")
    import time

    started = time.perf_counter()
    stopped: list[int] = []  # workers that failed
    if workers == 1:
        counts = S.run_worker(directory, registry=session.registry, vectorize=vectorized, echo=click.echo, warn=_warn,
                              compile_cache=_compile_cache(no_compile_cache), sets=explicit)
        click.echo(f"Trials {_counts_text(counts)}")
    else:  # a worker that stopped is in the summary line below
        stopped = S.spawn_workers(directory, workers, forwarded=_global_options(session), vectorize=vectorized,
                                  compile_cache=not no_compile_cache, echo=click.echo, warn=lambda line: None, sets=explicit)
    headers, rows, best = S.leaderboard(directory)
    from jaxyard.core.experiments import compare as C

    click.echo(f"\nLeaderboard ({spec.monitor}, {'lower' if spec.direction == 'minimize' else 'higher'} is better), "
               f"{time.perf_counter() - started:.1f} s:")
    _print_table(
        headers, rows, [[C.format_cell(v, metric=h in (spec.monitor, spec.headline)) for h, v in zip(headers, row, strict=True)] for row in rows]
    )
    if best:
        click.echo(f"Best: trial {best['trial']} ({spec.monitor} {best['value']:.4f}); rerun it alone: "
                   f"{C.rerun_command(directory / str(best['run_dir']), session.registry)}")
    from jaxyard.core.errors import TrainingError

    retry = S.outcome(directory, stopped)  # the machine's failures (a full disk, a killed worker): exit 1, say how to go on
    if any(r[1] != "failed" for r in rows):
        try:
            click.echo(f"Plot saved to {C.plot_sweep(directory, directory / 'sweep.png')}")
        except OSError:
            if retry is None:
                raise  # else the line below names the cause (the full disk the plot could not be saved to either)
    if retry is not None:
        raise TrainingError(retry)
    if rows and all(r[1] == "failed" for r in rows):
        raise TrainingError(f"no trial of the sweep finished: every one failed (their errors are in {directory / S.RESULTS})")


def _dim_text(d) -> str:
    if not d.is_list:
        return f"{d.kind}({d.low:g},{d.high:g})"
    shown = d.values if len(d.values) <= 6 else [*d.values[:3], "...", *d.values[-2:]]
    return "{" + ",".join(shown) + "}" + (f" ({len(d.values)} values)" if len(d.values) > 6 else "")


def _counts_text(counts: dict) -> str:
    done = ", ".join(f"{counts[k]} {k}" for k in ("complete", "pruned", "failed"))
    programs = counts["compiles"]
    return f"{done}; {programs} training program{'s' * (programs != 1)} compiled"


@cli.command("new-plugin", short_help="Write a plugin package to start from.")
@click.argument("name")
@click.option("--kind", "kinds", multiple=True, metavar="KIND",
              help="A component named NAME of this kind: task, optimizer, scheduler, model, loader, checkpointer or logger (repeatable; "
                   "default, with no --KIND NAME either: optimizer).")
@click.option("--task", "tasks", multiple=True, metavar="NAME", help="A task named NAME (repeatable: one task per name).")
@click.option("--optimizer", "optimizers", multiple=True, metavar="NAME", help="An optimizer named NAME (repeatable).")
@click.option("--scheduler", "schedulers", multiple=True, metavar="NAME", help="A scheduler named NAME (repeatable).")
@click.option("--model", "models", multiple=True, metavar="NAME", help="A model named NAME (repeatable: --model a --model b).")
@click.option("--loader", "loaders", multiple=True, metavar="NAME", help="A loader named NAME (repeatable).")
@click.option("--checkpointer", "checkpointers", multiple=True, metavar="NAME", help="A checkpointer named NAME (repeatable).")
@click.option("--logger", "loggers", multiple=True, metavar="NAME", help="A logger named NAME (repeatable).")
@click.option("--dir", "directory", metavar="DIR", help="Where to write the package (default: ./jaxyard-NAME); must be new or empty.")
def new_plugin(name, kinds, directory, **named):
    """Write a plugin package NAME: a working component per --kind (named NAME) and per --task, --model,
    ... NAME (named so), its entry point, tests and README."""
    from jaxyard.core.kit.scaffold import next_steps, write_plugin

    components = {kind: names for kind, names in named.items() if names}
    path = write_plugin(directory or f"jaxyard-{name}", name, kinds or None, components)
    click.echo(f"Wrote {path}/: the package jaxyard-{name} (module jaxyard_{name.replace('-', '_')}).")
    click.echo(f"Next: {next_steps(path)}  (see its README.md)")


def main(argv=None):
    global _AS_PROGRAM
    _AS_PROGRAM = True
    cli.main(args=argv, prog_name="jaxyard")


if __name__ == "__main__":
    main()
