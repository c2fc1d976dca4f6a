"""Checkpointers that save (an empty file per step) but whose ``load`` raises, or returns None: their own bugs."""

from pathlib import Path

import attrs

import jaxyard


class LoadRaises:
    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, step, arrays, meta):
        (self.directory / str(step)).touch()

    def steps(self):
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def load(self, step):
        raise ValueError(f"cannot decode step {step}")

    def delete(self, step):
        (self.directory / str(step)).unlink(missing_ok=True)

    def wait(self):
        pass

    def close(self):
        pass


class LoadReturnsNone(LoadRaises):
    def load(self, step):
        return None  # forgot to return a jaxyard.Restored


@attrs.frozen
class NoParams:
    pass


@jaxyard.hookimpl
def jaxyard_register_checkpointers(register):
    register("load-raises", lambda p, *, directory: LoadRaises(directory), params=NoParams, description="saves; load raises")
    register("load-none", lambda p, *, directory: LoadReturnsNone(directory), params=NoParams, description="saves; load returns None")
