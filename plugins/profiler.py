"""``run.profile`` (``run --profile``): a ``jax.profiler`` trace of one epoch after compiling,
written to the run directory's ``profile/`` (open it with TensorBoard's profile plugin, or the
``.xplane.pb`` in Perfetto / XProf)."""

from __future__ import annotations

from jaxyard import hookimpl

PROFILE = "profile"
_active: set[int] = set()  # ids of the runs being traced (one trace per process at a time)


def _stop(run) -> None:
    if id(run) in _active:
        import jax

        _active.discard(id(run))
        jax.profiler.stop_trace()
        run.echo(f"  Profile of epoch {run.history[-1]['epoch']} written to {run.directory / PROFILE}")


@hookimpl
def jaxyard_on_epoch_end(run, record):
    """Start tracing after the first epoch of this process (compiled by then); stop after the next."""
    if not run.config.run.profile or not run.is_main_process:  # one trace per job (process 0's)
        return
    if id(run) in _active:
        _stop(run)
    elif record["epoch"] == run.start_epoch + 1 and record["epoch"] < run.epochs:
        import jax

        from jaxyard.core.registry.params import inside

        jax.profiler.start_trace(str(inside(run.directory, PROFILE)))  # not a link leading out of the run
        _active.add(id(run))


@hookimpl
def jaxyard_on_run_end(run):
    _stop(run)


@hookimpl
def jaxyard_on_run_failed(run):
    _stop(run)
