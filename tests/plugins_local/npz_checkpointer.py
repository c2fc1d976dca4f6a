"""A storage-only checkpointer in about 40 lines: one .npz and one .json per step, no ranking or
retention of its own (jaxyard's core provides both)."""
import json
import os
import shutil
from pathlib import Path

import attrs

import jaxyard


class NpzCheckpointer:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, step, arrays, meta):
        import numpy as np

        tmp = self.directory / f".{step}.tmp"
        tmp.mkdir()
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, self.directory / str(step))

    def steps(self):
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def load(self, step):
        import numpy as np

        path = self.directory / str(step)
        try:
            with np.load(path / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as err:
            raise jaxyard.CheckpointError(str(err), directory=self.directory, step=step) from None
        return jaxyard.Restored(step, arrays, meta)

    def delete(self, step):
        shutil.rmtree(self.directory / str(step), ignore_errors=True)

    def wait(self):
        pass

    def close(self):
        pass


@attrs.frozen
class NoParams:
    pass


@jaxyard.hookimpl
def jaxyard_register_checkpointers(register):
    register("npz", lambda p, *, directory: NpzCheckpointer(directory), params=NoParams, description="npz files, storage only")
