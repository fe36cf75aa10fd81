"""A benchmark's own folder (stack home, logs, database) is removed after a run that ended well unless kept; a failed
run's stays for its logs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _common import bench_folder, tidy


def test_a_run_that_ended_well_removes_its_folders_but_the_kept_one(capsys: pytest.CaptureFixture[str]) -> None:
    plain = bench_folder("driftloop-test-plain-", keep=False)
    kept = bench_folder("driftloop-test-kept-", keep=True)
    (plain / "home").mkdir()
    (plain / "home" / "driftloop.db").write_bytes(b"rows")
    try:
        assert tidy(0) == 0
        assert not plain.exists() and kept.is_dir()
        said = capsys.readouterr().err
        assert f"removed {plain}" in said and f"kept {kept}" in said
    finally:
        kept.rmdir()


@pytest.mark.parametrize("code", [1, 2])
def test_a_failed_run_keeps_its_folder_and_says_where(code: int, capsys: pytest.CaptureFixture[str]) -> None:
    folder = bench_folder("driftloop-test-failed-", keep=False)
    try:
        assert tidy(code) == code
        assert folder.is_dir()
        assert f"kept {folder}" in capsys.readouterr().err
    finally:
        folder.rmdir()


def test_a_run_returning_none_ended_well() -> None:
    folder = bench_folder("driftloop-test-none-", keep=False)
    assert tidy(None) is None
    assert not folder.exists()
