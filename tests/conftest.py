"""Shared test fixtures.

Real clips live outside the repo (default ``../shared/data`` beside the checkout, override with
AVATAR3D_TEST_DATA); tests that need them skip with a clear reason when they are absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("AVATAR3D_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "obama_adnerf_crop_edtalk_20s_450.mp4").is_file():
        pytest.skip(f"real clips not found in {path} (set AVATAR3D_TEST_DATA)")
    return path
