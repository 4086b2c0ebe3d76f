"""What the avatar draws (head and neck), the base it is drawn over, and the seam/ghost/hole ruler,
on a hand-made frame whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.core.dataset import Label
from avatar3d.core.scene import FaceFrame, Window, compose_base, drawn_region, fit_neck_reach, neck_region
from avatar3d.core.vocab import CHIN, FACE_OVAL, FOREHEAD, MOUTH_CORNERS, NUM_LANDMARKS, SUBNASALE
from avatar3d.drive.seams import SeamMeter, fit_resolution_reference, measure_frame, write_sheets

H = 160


def face_landmarks(cx: float = 80, chin_y: float = 100, tilt_deg: float = 0.0) -> np.ndarray:
    """[478, 2] landmarks of an upright oval face (forehead y 20, subnasale y 70, mouth corners
    y 80), rotated by ``tilt_deg`` about the subnasale; the chin at ``chin_y`` (the jaw's opening)."""
    lm = np.full((NUM_LANDMARKS, 2), np.nan)
    t = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    lm[list(FACE_OVAL)] = np.stack([cx + 35 * np.sin(t), 60 - 40 * np.cos(t)], 1)
    lm[FOREHEAD], lm[SUBNASALE], lm[CHIN] = (cx, 20), (cx, 70), (cx, chin_y)
    lm[list(MOUTH_CORNERS)] = [(cx - 15, 80), (cx + 15, 80), (cx - 12, 80), (cx + 12, 80)]
    lm = np.nan_to_num(lm, nan=cx)  # the rest: anywhere finite
    a = np.radians(tilt_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (lm - lm[SUBNASALE]) @ rot.T + lm[SUBNASALE]


def labels_of(chin_y: int = 100) -> np.ndarray:
    """[H, H] labels: a face disc down to ``chin_y``, torso below it (a neck, then shoulders)."""
    lab = np.zeros((H, H), np.uint8)
    yy, xx = np.mgrid[:H, :H]
    lab[(xx >= 60) & (xx < 100) & (yy >= 90)] = Label.TORSO  # neck
    lab[yy >= 130] = Label.TORSO  # shoulders
    lab[((xx - 80) / 35) ** 2 + ((yy - 60) / (chin_y - 60)) ** 2 <= 1] = Label.FACE
    return lab


def test_neck_region_is_torso_under_the_face_fixed_to_the_head():
    lab, lm = labels_of(), face_landmarks()
    neck = neck_region(lab, lm, reach=1.0)  # down to 50 px below the subnasale: y <= 120
    ys, xs = np.nonzero(neck)
    assert (lab[neck] == Label.TORSO).all()
    assert ys.min() >= 90 and ys.max() == 119 and xs.min() >= 60 and xs.max() < 100
    assert (neck[95:120, 60:100] == (lab[95:120, 60:100] == Label.TORSO)).all()  # all of the neck down to the line
    assert not neck[130:].any()  # the shoulders below the line are not drawn
    # the opening jaw (chin landmark lower) does not move it; a tilted head tilts it
    assert (neck_region(lab, face_landmarks(chin_y=110), 1.0) == neck).all()
    tilted = neck_region(lab, face_landmarks(tilt_deg=20), 1.0)
    assert tilted.any() and not (tilted == neck).all()
    # no neck without usable landmarks or reach
    assert not neck_region(lab, np.full((NUM_LANDMARKS, 2), np.nan), 1.0).any()
    assert not neck_region(lab, lm, 0.0).any()
    assert (drawn_region(lab, lm, 1.0) == ((lab == Label.FACE) | neck)).all()
    assert (drawn_region(lab, lm, 0.0) == (lab == Label.FACE)).all()


def test_fit_neck_reach_is_below_the_lowest_chin():
    lms = np.stack([face_landmarks(chin_y=c) for c in (95, 100, 110)])  # chin 25..40 px under the nose
    reach = fit_neck_reach(lms, np.arange(3), margin=0.2)
    assert reach == pytest.approx(np.percentile([0.5, 0.6, 0.8], 99) + 0.2)
    assert fit_neck_reach(lms, np.arange(3), margin=0.0) == 0.0
    assert fit_neck_reach(np.full_like(lms, np.nan), np.arange(3), margin=0.2) == 0.0


def test_compose_base_removes_the_head_and_carries_the_neck_up():
    lab, lm = labels_of(), face_landmarks()
    frame = np.zeros((H, H, 3), np.uint8)
    frame[lab == Label.FACE] = (200, 150, 120)
    frame[lab == Label.TORSO] = (90, 60, 50)
    frame[120:, 60:100] = (10, 200, 10)  # what lies just under the drawn neck: carried up
    plate = np.full((H, H, 3), 33, np.uint8)
    base = compose_base(frame, lab, lm, plate, neck_reach=1.0)
    neck = neck_region(lab, lm, 1.0)
    assert (base[lab == Label.FACE] == 33).all()  # the head: plate
    assert (base[neck] == (10, 200, 10)).all()  # the neck: the colour just under it, per column
    rest = ~neck & (lab != Label.FACE)
    assert (base[rest] == frame[rest]).all()  # everything else: the frame itself
    # head-only: the face is plate and nothing of the frame's face is left
    head_only = compose_base(frame, lab, lm, plate, neck_reach=0.0)
    assert not (head_only == (200, 150, 120)).all(-1).any()


def _scene_of(lab):
    frame = np.zeros((H, H, 3), np.uint8)
    frame[lab == Label.FACE] = (200, 150, 120)
    frame[lab == Label.TORSO] = (90, 60, 50)
    frame[lab == Label.BACKGROUND] = (30, 60, 200)
    return frame


def test_ruler_on_a_perfect_composite_a_second_chin_and_a_hole():
    lab, lm = labels_of(), face_landmarks()
    real = _scene_of(lab)
    alpha = (lab == Label.FACE).astype(np.float32)
    window = Window(0, 0, H, H)  # fitted at full resolution: the reference is the real frame
    ref = fit_resolution_reference(real, alpha, window)
    assert (ref == real).all()
    perfect = measure_frame(real, real, ref, alpha, lab, lm)
    assert perfect.seam_energy == pytest.approx(perfect.seam_energy_real) and perfect.seam_energy > 0
    assert perfect.ghost_px == 0 and perfect.hole_share == 0.0 and perfect.head_sq_error == 0

    # the render's chin ends 10 px higher, over plate, with a light line along it: a seam and a ghost
    short = labels_of(chin_y=90)
    alpha2 = (short == Label.FACE).astype(np.float32)
    comp = real.copy()
    comp[(lab == Label.FACE) & (short != Label.FACE)] = (30, 60, 200)  # the plate shows under the chin
    yy, xx = np.mgrid[:H, :H]
    line = (short != Label.FACE) & (np.abs(((xx - 80) / 35) ** 2 + ((yy - 60) / 32) ** 2 - 1) < 0.08) & (yy > 75)
    comp[line] = 255
    m = measure_frame(comp, real, fit_resolution_reference(real, alpha2, window), alpha2, lab, lm)
    assert m.seam_energy > 1.2 * m.seam_energy_real
    uncovered = int(((lab == Label.FACE) & (short != Label.FACE)).sum())
    assert 0 < m.ghost_px <= uncovered
    assert m.head_sq_error > 0 and m.head_px == int((lab == Label.FACE).sum())

    # a hole through the cheek: the upper face's share below alpha 0.5
    holed = alpha.copy()
    holed[40:55, 60:75] = 0.2
    h = measure_frame(real, real, fit_resolution_reference(real, holed, window), holed, lab, lm)
    assert 0.05 < h.hole_share < 0.5
    assert measure_frame(real, real, ref, alpha, lab, None).hole_share is None  # no landmarks: not measured


def test_fit_resolution_reference_blurs_only_under_the_render():
    lab = labels_of()
    real = _scene_of(lab)
    alpha = (lab == Label.FACE).astype(np.float32)
    ref = fit_resolution_reference(real, alpha, Window(0, 0, H, 40))
    assert (ref[alpha == 0] == real[alpha == 0]).all()
    assert not (ref[alpha == 1] == real[alpha == 1]).all()  # the face edge blurred at 40 px


def test_meter_result_and_sheet(tmp_path):
    import cv2

    lab, lm = labels_of(), face_landmarks()
    real = _scene_of(lab)
    alpha = (lab == Label.FACE).astype(np.float32)
    meter = SeamMeter(frame_size=H)
    for k in range(5):
        a = alpha.copy()
        a[:, : 60 + k] = 0  # a growing uncovered strip of the face
        meter.add(real, real, fit_resolution_reference(real, a, Window(0, 0, H, H)), a, lab, lm, name=f"#{k}")
    r = meter.result()
    assert r["frames"] == 5 and r["ghost_head_area_px_max"] >= r["ghost_head_area_px_mean"] > 0
    assert r["hole_frames"] <= 5 and r["seam_ratio"] is not None
    assert [k.caption.split()[0] for k in meter.worst_ghost] == ["#4", "#3", "#2"]
    path = tmp_path / "seams.png"
    write_sheets(path, [meter.sheet("test"), SeamMeter(H).sheet("empty")])
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 2 * 256
    assert SeamMeter(H).result() == {"frames": 0}


def test_face_frame_of_unusable_landmarks_is_none():
    assert FaceFrame.of(None) is None
    assert FaceFrame.of(np.zeros((NUM_LANDMARKS, 2))) is None  # degenerate: all points at one place
    f = FaceFrame.of(face_landmarks())
    assert f.scale == pytest.approx(50) and f.mouth_height == pytest.approx(-10)
    assert f.chin_depth(face_landmarks(chin_y=100)) == pytest.approx(0.6)


def test_out_of_range_codes_and_poses_are_counted():
    from scipy.spatial.transform import Rotation

    from avatar3d.drive.seams import codes_out_of_range, poses_out_of_range

    train = np.random.default_rng(0).uniform(0.1, 0.5, (50, 52))
    codes = train[:4].copy()
    codes[1, 3] = 0.9  # far above the range
    codes[2, 7] = 0.52  # within the tolerance
    assert codes_out_of_range(codes, train) == 1
    yaw = np.linspace(-10, 10, 21)
    train_R = Rotation.from_euler("y", yaw[:, None], degrees=True).as_matrix()
    R = Rotation.from_euler("y", [[0], [10.5], [25], [-30]], degrees=True).as_matrix()
    assert poses_out_of_range(R, train_R) == 2


def test_enclosed_holes_need_no_labels():
    from avatar3d.drive.seams import enclosed_hole_share

    alpha = np.zeros((64, 64), np.float32)
    alpha[10:50, 10:50] = 1.0
    assert enclosed_hole_share(alpha) == 0.0
    alpha[20:30, 20:30] = 0.1  # a tear through the middle
    assert enclosed_hole_share(alpha) == pytest.approx(100 / 1600)
    alpha[40:50, 10:20] = 0.0  # a missing corner is not enclosed: the ghost measure's business
    assert enclosed_hole_share(alpha) == pytest.approx(100 / 1500)
