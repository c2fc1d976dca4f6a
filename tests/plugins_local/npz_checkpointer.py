"""A storage-only checkpointer in about 50 lines: one .npz and one .json per step, verified by jaxyard's
checksum record on load; no ranking or retention of its own (jaxyard's core provides both)."""
import json
import os
import shutil
import zipfile
from pathlib import Path

import attrs

import jaxyard


class NpzCheckpointer:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, step, arrays, meta):
        import numpy as np

        if (self.directory / str(step)).exists():
            raise jaxyard.CheckpointError("a checkpoint for this step already exists", directory=self.directory, step=step)
        tmp = self.directory / f".{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.savez(tmp / "arrays.npz", **arrays)
        dtypes = {k: np.asarray(v).dtype.name for k, v in arrays.items()}  # npz keeps bfloat16 only as raw bytes
        checksums = jaxyard.checksum_record(step, arrays, meta)  # each array's crc32, the meta's, the step's
        (tmp / "meta.json").write_text(json.dumps({"meta": meta, "dtypes": dtypes, "checksums": checksums}))
        os.replace(tmp, self.directory / str(step))

    def steps(self):
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def load(self, step):
        import ml_dtypes  # noqa: F401  (registers bfloat16 and friends with numpy)
        import numpy as np

        path = self.directory / str(step)
        try:
            saved = json.loads((path / "meta.json").read_text())
            meta, checksums = saved["meta"], saved["checksums"]
            with np.load(path / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k].view(np.dtype(saved["dtypes"][k])) for k in z.files}
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
            raise jaxyard.CheckpointError(str(err), directory=self.directory, step=step) from None
        # a CheckpointError naming the damage: a flipped byte, an edited meta, another step's files
        jaxyard.verify_checksums(checksums, step, arrays, meta, directory=self.directory)
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
