"""Background stage: masked temporal median, hole fill, and the plate behind a moving person."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.core import video
from avatar3d.core.dataset import FORMAT_VERSION, DatasetPaths, Label, Manifest, default_split
from avatar3d.errors import UserError
from avatar3d.fsutil import write_json
from avatar3d.core.masks import write_masks
from avatar3d.preprocess.background import (
    BackgroundConfig,
    fill_unseen,
    masked_median,
    run_background,
    sample_indices,
)
from synth_dataset import background_image


def test_masked_median_matches_brute_force():
    rng = np.random.default_rng(1)
    samples = rng.integers(0, 256, size=(9, 6, 7, 3), dtype=np.uint8)
    ok = rng.random((9, 6, 7)) < 0.6
    ok[:, 0, 0] = False  # a pixel never seen
    med, count = masked_median(samples, ok, rows_per_chunk=4)
    np.testing.assert_array_equal(count, ok.sum(0))
    for y in range(6):
        for x in range(7):
            vals = samples[ok[:, y, x], y, x]  # [k, 3]
            if len(vals) == 0:
                assert (med[y, x] == 0).all()
                continue
            lower = np.sort(vals, axis=0)[(len(vals) - 1) // 2]
            np.testing.assert_array_equal(med[y, x], lower)


def test_fill_unseen_keeps_seen_pixels_and_continues_the_border():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = (200, 50, 50)
    img[:, 30:] = (50, 50, 200)
    seen = np.ones((40, 60), bool)
    seen[10:30, 20:40] = False  # a hole across the colour edge
    out = fill_unseen(img, seen, smooth_px=3)
    np.testing.assert_array_equal(out[seen], img[seen])
    # left part of the hole takes the left colour, right part the right colour
    assert np.abs(out[20, 22].astype(int) - (200, 50, 50)).max() < 40
    assert np.abs(out[20, 37].astype(int) - (50, 50, 200)).max() < 40
    # a constant image is filled with the constant
    flat = np.full((32, 32, 3), 77, np.uint8)
    hole = np.ones((32, 32), bool)
    hole[5:25, 5:25] = False
    np.testing.assert_array_equal(fill_unseen(flat, hole), flat)


def test_sample_indices_spread_and_bounded():
    idx = sample_indices(1780, 96)
    assert len(idx) == 96 and idx[0] == 0 and idx[-1] == 1779
    np.testing.assert_array_equal(sample_indices(5, 96), np.arange(5))


def _moving_person_dataset(root, n=30, size=96):
    """A static scene; a red disk (the person) moves left to right; a block at the bottom middle
    is covered in every frame (never seen)."""
    import cv2

    paths = DatasetPaths(root)
    root.mkdir(parents=True)
    scene = background_image(size)
    frames, masks = [], []
    for i in range(n):
        frame = scene.copy()
        label = np.zeros((size, size), np.uint8)
        cx = int(15 + (size - 30) * i / (n - 1))
        cv2.circle(frame, (cx, 30), 12, (255, 0, 0), -1)
        cv2.circle(label, (cx, 30), 12, int(Label.FACE), -1)
        frame[70:, 38:58] = (255, 0, 0)
        label[70:, 38:58] = Label.TORSO
        frames.append(frame)
        masks.append(label)
    video.write_video(paths.frames, frames, crf=10)
    write_masks(paths.masks, masks)
    manifest = Manifest(
        format_version=FORMAT_VERSION, source_name="synthetic.mp4", source_sha256="0" * 64,
        source_fps=25.0, source_duration=n / 25, fps=25, size=size, num_frames=n, crop=(0, 0, size),
        split=default_split(n),
    )
    write_json(paths.manifest, manifest.to_json())
    return paths, manifest, scene


def test_plate_recovers_static_scene_behind_moving_person(tmp_path):
    import cv2

    paths, manifest, scene = _moving_person_dataset(tmp_path / "data")
    stats = run_background(paths, manifest, BackgroundConfig(max_samples=12, margin_px=3))
    plate = cv2.imread(str(paths.background))[..., ::-1]
    assert plate.shape == scene.shape
    err = np.abs(plate.astype(int) - scene.astype(int)).max(axis=2)  # [H, W]
    # the disk's path is seen in other frames: recovered from them (H.264 noise only)
    seen = np.ones(scene.shape[:2], bool)
    seen[67:, 35:61] = False  # the always-covered block grown by the margin
    assert np.median(err[seen]) <= 2 and np.percentile(err[seen], 99) <= 8
    assert err[18:43, 10:86].mean() < 4  # where the disk moved
    # the never-seen block: filled from its border, no red person left, no black hole
    hole = plate[72:, 41:55].astype(int)
    assert np.abs(hole - scene[72:, 41:55].astype(int)).mean() < 25
    assert (hole.min(axis=2) > 20).all()  # no black hole
    assert (np.abs(hole - (255, 0, 0)).sum(axis=2) > 150).all()  # no person colour
    expected_unseen = (96 - 67) * (61 - 35) / 96**2
    assert abs(stats["unseen_fraction"] - expected_unseen) < 0.01


def test_background_rejects_mismatched_masks(tmp_path):
    paths, manifest, _ = _moving_person_dataset(tmp_path / "data", n=8, size=32)
    write_masks(paths.masks, np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(UserError, match="fewer frames"):
        run_background(paths, manifest, BackgroundConfig())
    assert not paths.background.exists()
