"""Contact sheet: head angles, the PNG's size, and what is drawn where."""
from __future__ import annotations

import numpy as np

from avatar3d.preprocess.contact_sheet import (
    HEADER,
    HEIGHT,
    INTERPOLATED,
    LOST,
    NUM_TILES,
    TILE,
    WIDTH,
    head_angles,
    make_contact_sheet,
)
from avatar3d.preprocess.parse import ParseConfig, run_parse
from synth_dataset import make_dataset


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def _canonical(up: np.ndarray, fwd: np.ndarray) -> np.ndarray:
    c = np.zeros((478, 3))
    c[10], c[152], c[1] = 10 * up, -10 * up, 5 * fwd
    return c


def test_head_angles_known_rotations_any_head_convention():
    # Two head-space conventions: mediapipe's (y up, z out of the face) and a y-down/z-in one.
    conventions = [
        (_canonical(np.array([0, 1.0, 0]), np.array([0, 0, 1.0])), np.diag([1.0, -1.0, -1.0])),
        (_canonical(np.array([0, -1.0, 0]), np.array([0, 0, -1.0])), np.eye(3)),
    ]
    for canonical, facing in conventions:  # facing: R of a head looking into the camera
        R = np.stack([facing, _rot("y", 20) @ facing, _rot("x", -10) @ facing, _rot("z", 15) @ facing,
                      _rot("y", -25) @ _rot("x", 12) @ _rot("z", 7) @ facing])
        ang = head_angles(R, canonical)
        expected = [[0, 0, 0], [20, 0, 0], [0, -10, 0], [0, 0, 15], [-25, 12, 7]]
        np.testing.assert_allclose(ang, expected, atol=1e-6)
        # yaw > 0 turns the face (head-space forward) towards the image's left (camera -x)
        fwd_cam = R[1] @ (canonical[1] / np.linalg.norm(canonical[1]))
        assert fwd_cam[0] < -0.3
    # without canonical landmarks: relative to the clip's median pose
    R = np.stack([np.eye(3), np.eye(3), _rot("y", 30)])
    np.testing.assert_allclose(head_angles(R, None)[2], [30, 0, 0], atol=1e-6)


def test_contact_sheet_png(tmp_path):
    import cv2

    n, size = 16, 128
    paths, manifest = make_dataset(tmp_path / "data", n=n, size=size, lost=(0,), interpolated=(15,))
    run_parse(paths, manifest, ParseConfig())
    cv2.imwrite(str(paths.background), np.full((size, size, 3), (10, 200, 30), np.uint8))  # BGR
    make_contact_sheet(paths, manifest)
    sheet = cv2.imread(str(paths.contact_sheet))[..., ::-1]  # RGB
    assert sheet.shape == (HEIGHT, WIDTH, 3)
    # tile 0 (frame 0, tracking lost): red border; last tile (frame 15, interpolated): orange
    np.testing.assert_array_equal(sheet[HEADER + TILE // 2, 2], LOST)
    np.testing.assert_array_equal(sheet[HEADER + TILE // 2, WIDTH - 3], INTERPOLATED)
    np.testing.assert_array_equal(sheet[HEADER + TILE + TILE // 2, 2], LOST)  # mask row too
    # a tracked tile (frame 2, tile 1): pose origin (white dot) at the projected head centre,
    # which the synthetic pose puts at the face centre
    with np.load(paths.tracks) as z:
        K, t = z["K"], z["t"]
    i = int(np.round(np.linspace(0, n - 1, NUM_TILES))[1])
    uv = (K @ t[i])[:2] / t[i, 2] * TILE / size
    x, y = int(TILE + uv[0]), int(HEADER + uv[1])
    assert (sheet[y, x] > 240).all()
    # mask row: the face is tinted green (FACE colour), the corner is untouched background
    with np.load(paths.tracks) as z:
        face_c = z["landmarks"][i, 1, :2] * TILE / size
    pix = sheet[int(HEADER + TILE + face_c[1] - 12), int(TILE + face_c[0])].astype(int)
    assert pix[1] > pix[0] and pix[1] > pix[2]
    # background plate (solid colour written above) fills its panel
    plate = sheet[HEADER + 2 * TILE + 100 : HEADER + 2 * TILE + 400, 50:400].reshape(-1, 3)
    assert (np.abs(plate.astype(int) - (30, 200, 10)).max(axis=1) <= 2).mean() > 0.99
