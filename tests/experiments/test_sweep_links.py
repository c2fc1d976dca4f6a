"""A sweep directory is data: `sweep --resume` of one whose files or folders link elsewhere is
refused in one line before anything is written (neither there nor in the sweep directory)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_sweep_failures import new_sweep

from jaxyard.core.experiments import sweep as S

from helpers import assert_one_line_error, snapshot

pytest.importorskip("optuna")




@pytest.fixture(scope="module")
def registry():
    from jaxyard.core.registry.loading import build_registry

    return build_registry()


def plant(out: Path, elsewhere: Path, name: str) -> None:
    """``out/name`` moved (or made) ``elsewhere`` and linked back."""
    target = elsewhere / name.replace("/", "-")
    if (out / name).exists():
        shutil.move(out / name, target)
    elif name.startswith("trials/"):
        target.mkdir()
    else:
        target.write_bytes(b"")
    (out / name).symlink_to(target, target_is_directory=target.is_dir())


@pytest.mark.parametrize("name", [S.RESULTS, S.TRIALS, "trials/0000", S.STUDY_FILE, f"{S.STUDY_FILE}.torn", ".sweep.lock", "sweep.png"])
def test_resume_refuses_a_sweep_directory_whose_files_link_elsewhere(run_cli, tmp_path, registry, name):
    out, elsewhere = new_sweep(registry, tmp_path / "sweep"), tmp_path / "elsewhere"
    elsewhere.mkdir()
    with open(out / S.STUDY_FILE, "ab") as f:  # its last write cut off: a .torn file is written when it is mended
        f.write(b'{"op_code": 5, "worker_id"')
    plant(out, elsewhere, name)
    before = snapshot(tmp_path)
    result = run_cli(["sweep", "--resume", out])
    assert_one_line_error(result, f"{out / name} leads to", "outside the sweep directory", "remove the link")
    assert snapshot(tmp_path) == before
