"""Checkpoints as .npz files: storage only (jaxyard decides which step is latest or best, which
to keep, and passes over damaged ones: jaxyard.CheckpointPolicy)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

import jaxyard

_DAMAGE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16 and friends: ml_dtypes (a jax dependency) registers them
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


class NpzCheckpointer:
    """One directory per step, named after it: ``arrays.npz`` (each array's bytes) and
    ``manifest.json`` (each array's dtype and shape, the meta, and jaxyard's checksum record). A step is written to a
    temporary directory and renamed into place, so ``steps()`` never lists a half-written one;
    ``load`` verifies the checksums, so a damaged step is an error jaxyard can pass over."""

    def __init__(self, directory: Path, *, compress: bool = False):
        self.directory = Path(directory)
        self.compress = compress

    def _error(self, step: int, cause: str) -> jaxyard.CheckpointError:
        return jaxyard.CheckpointError(cause, directory=self.directory, step=step)

    def save(self, step: int, arrays: dict, meta: dict) -> None:
        step = int(step)
        final = self.directory / str(step)
        if final.exists():
            try:
                self.load(step)
            except jaxyard.CheckpointError:
                shutil.rmtree(final, ignore_errors=True)  # a damaged leftover: replaced below
            else:
                raise self._error(step, "a checkpoint of this step already exists")
        tmp = self.directory / f".tmp-{step}-{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            blobs, manifest = {}, {}
            for i, (key, array) in enumerate(arrays.items()):
                array = np.asarray(array)  # not ascontiguousarray: it turns a scalar's shape () into (1,)
                blobs[f"a{i}"] = np.frombuffer(array.tobytes(), np.uint8)  # the bytes in C order, whatever the layout
                manifest[key] = {"blob": f"a{i}", "dtype": array.dtype.name, "shape": list(array.shape)}
            (np.savez_compressed if self.compress else np.savez)(tmp / "arrays.npz", **blobs)
            checksums = jaxyard.checksum_record(step, arrays, meta)  # each array's crc32, the meta's, the step
            text = json.dumps({"step": step, "arrays": manifest, "meta": meta, "checksums": checksums})
            (tmp / "manifest.json").write_text(text, encoding="utf-8")
            os.replace(tmp, final)
        except (OSError, TypeError, ValueError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._error(step, f"could not save: {type(err).__name__}: {err}") from None

    def steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def load(self, step: int) -> jaxyard.Restored:
        step = int(step)
        path = self.directory / str(step)
        if not path.is_dir():
            raise self._error(step, f"no such checkpoint (steps: {self.steps()})")
        try:
            doc = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            meta, checksums = doc["meta"], doc["checksums"]
            arrays = {}
            with np.load(path / "arrays.npz", allow_pickle=False) as blobs:
                for key, entry in doc["arrays"].items():
                    raw = blobs[entry["blob"]].tobytes()
                    arrays[key] = np.frombuffer(raw, _dtype(entry["dtype"])).reshape(entry["shape"]).copy()
        except _DAMAGE as err:
            raise self._error(step, f"damaged: {type(err).__name__}: {err}") from None
        # one CheckpointError naming the damage: an array's bytes, an edited meta, another step's files
        jaxyard.verify_checksums(checksums, step, arrays, meta, directory=self.directory)
        return jaxyard.Restored(step, arrays, meta)

    def delete(self, step: int) -> None:
        try:
            shutil.rmtree(self.directory / str(int(step)))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise self._error(int(step), f"could not delete: {err}") from None

    def wait(self) -> None:
        pass  # saves are synchronous

    def close(self) -> None:
        pass
