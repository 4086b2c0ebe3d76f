"""Pose stage: the joint fit recovers a known camera, head motion and face from noisy landmarks."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from avatar3d.preprocess.pose import PoseConfig, fit_pose, project, similarity_procrustes
from avatar3d.core.vocab import RIGID_LANDMARKS

SIZE = 512


def synthetic_face(rng: np.random.Generator) -> np.ndarray:
    """A face-like [478, 3] point set in cm (x right, y down, z away from the camera), with the
    landmarks that define the head frame where a real face has them and eye corners 9 cm apart."""
    u = rng.uniform(-1, 1, (478, 2))
    x, y = 7.0 * u[:, 0], 10.0 * u[:, 1]
    z = -6.0 * np.sqrt(np.clip(1 - u[:, 0] ** 2 - 0.5 * u[:, 1] ** 2, 0.05, 1))  # front of an ellipsoid
    pts = np.stack([x, y, z], 1)
    named = {
        234: (-7.0, -1.0, -1.0), 454: (7.0, -1.0, -1.0),  # cheeks at the outline
        10: (0.0, -9.0, -4.0), 152: (0.0, 10.0, -4.0),  # forehead, chin
        33: (-4.5, -3.0, -3.5), 263: (4.5, -3.0, -3.5),  # outer eye corners
        4: (0.0, 1.0, -8.5),  # nose tip
    }
    for k, v in named.items():
        pts[k] = v
    return pts


def synthetic_clip(n: int, focal: float, noise_px: float, seed: int = 0):
    """Landmarks as mediapipe gives them (x, y pixels; z relative depth on the x scale) for a
    head moving smoothly in front of a pinhole camera; plus the ground truth."""
    rng = np.random.default_rng(seed)
    face = synthetic_face(rng)
    i = np.arange(n)
    angles = np.stack([8 * np.sin(2 * np.pi * i / 90), 20 * np.sin(2 * np.pi * i / 130), 5 * np.cos(2 * np.pi * i / 70)], 1)
    R = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()  # [N, 3, 3]
    t = np.stack([3 * np.sin(2 * np.pi * i / 110), 2 * np.cos(2 * np.pi * i / 80), 90 + 6 * np.sin(2 * np.pi * i / 150)], 1)
    K = np.array([[focal, 0, SIZE / 2], [0, focal, SIZE / 2], [0, 0, 1]])
    uv = project(face, K, R, t)  # [N, 478, 2]
    cam = np.einsum("nij,mj->nmi", R, face) + t[:, None]
    zpx = (cam[..., 2] - cam[..., 2].mean(1, keepdims=True)) * focal / t[:, 2:3]
    lm = np.concatenate([uv, zpx[..., None]], -1) + rng.normal(0, noise_px, (n, 478, 3))
    return lm.astype(np.float32), face, K, R, t


def test_similarity_procrustes_recovers_transform():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(40, 3))
    rot = Rotation.random(5, random_state=2).as_matrix()
    s = np.array([0.5, 1.0, 2.0, 3.0, 10.0])
    trans = rng.normal(size=(5, 3))
    dst = s[:, None, None] * np.einsum("nij,mj->nmi", rot, src) + trans[:, None]
    s2, r2, t2 = similarity_procrustes(src, dst)
    np.testing.assert_allclose(s2, s, rtol=1e-9)
    np.testing.assert_allclose(r2, rot, atol=1e-9)
    np.testing.assert_allclose(t2, trans, atol=1e-9)


PRIOR_FOCAL = SIZE / 2 / np.tan(np.radians(PoseConfig().fov_degrees) / 2)  # 1381 px


@pytest.fixture(scope="module")
def clip_and_fit():
    # The focal of a face video is only weakly observable (perspective on a 15 cm face seen from
    # ~1 m): with the camera known (prior = truth, held firmly) head motion, depth and shape must be
    # recovered accurately. Free-focal fits are checked in the tests further down.
    lm, face, K, R, t = synthetic_clip(200, focal=PRIOR_FOCAL, noise_px=0.5)
    fit = fit_pose(lm, np.ones(len(lm)), SIZE, PoseConfig(focal_prior_weight=1e3))
    return lm, face, K, R, t, fit


def test_fit_reprojects_within_noise(clip_and_fit):
    *_, fit = clip_and_fit
    assert fit.stats["reprojection_px_median"] < 0.8  # 0.5 px noise per axis -> ~0.59 px median
    assert fit.stats["reprojection_px_p95"] < 1.6


def test_fit_recovers_camera_and_translation(clip_and_fit):
    lm, face, K, R, t, fit = clip_and_fit
    assert abs(fit.K[0, 0] - PRIOR_FOCAL) < 0.005 * PRIOR_FOCAL
    np.testing.assert_allclose(fit.K[:2, 2], [SIZE / 2, SIZE / 2])
    # where the head sits in camera space (centroid of the rigid points), in cm
    rigid = list(RIGID_LANDMARKS)
    cam_true = (np.einsum("nij,mj->nmi", R, face[rigid]) + t[:, None]).mean(1)
    cam_fit = (np.einsum("nij,mj->nmi", fit.R, fit.canonical[rigid]) + fit.t[:, None]).mean(1)
    err = np.linalg.norm(cam_fit - cam_true, axis=1)
    assert np.median(err) < 0.05 * 90  # within 5% of the 90 cm distance
    assert np.median(np.abs(cam_fit[:, :2] - cam_true[:, :2])) < 0.3  # lateral, cm


def test_free_focal_stays_near_a_true_prior():
    lm, face, K, R, t = synthetic_clip(150, focal=PRIOR_FOCAL, noise_px=0.5, seed=8)
    fit = fit_pose(lm, np.ones(len(lm)), SIZE, PoseConfig())
    assert abs(fit.K[0, 0] - PRIOR_FOCAL) < 0.12 * PRIOR_FOCAL
    assert fit.stats["reprojection_px_median"] < 0.8


def test_focal_far_from_prior_keeps_image_geometry():
    # true focal 1000 px, prior 1381: the prior wins where the data is silent, but image-space
    # geometry (face size on screen = focal / depth, relative head rotation) must stay right
    lm, face, K, R, t = synthetic_clip(150, focal=1000.0, noise_px=0.5, seed=7)
    fit = fit_pose(lm, np.ones(len(lm)), SIZE, PoseConfig())
    assert fit.stats["reprojection_px_median"] < 0.8
    rigid = list(RIGID_LANDMARKS)
    z_true = (np.einsum("nij,mj->nmi", R, face[rigid]) + t[:, None])[..., 2].mean(1)
    z_fit = (np.einsum("nij,mj->nmi", fit.R, fit.canonical[rigid]) + fit.t[:, None])[..., 2].mean(1)
    ratio = (fit.K[0, 0] / z_fit) / (1000.0 / z_true)  # pixels per cm at the face
    assert np.all(np.abs(ratio - 1) < 0.03)
    rel_true = np.einsum("nij,kj->nik", R, R[0])
    rel_fit = np.einsum("nij,kj->nik", fit.R, fit.R[0])
    err = Rotation.from_matrix(np.einsum("nij,nkj->nik", rel_fit, rel_true)).magnitude()
    assert np.degrees(np.median(err)) < 1.0


def test_fit_recovers_head_motion(clip_and_fit):
    lm, face, K, R, t, fit = clip_and_fit
    # head space is fixed only up to a rigid transform: compare gauge-free quantities
    rel_true = np.einsum("nij,kj->nik", R, R[0])  # R_i R_0^T
    rel_fit = np.einsum("nij,kj->nik", fit.R, fit.R[0])
    err = Rotation.from_matrix(np.einsum("nij,nkj->nik", rel_fit, rel_true)).magnitude()
    assert np.degrees(np.median(err)) < 0.5 and np.degrees(err.max()) < 1.5
    rigid = list(RIGID_LANDMARKS)
    cam_true = np.einsum("nij,mj->nmi", R, face[rigid]) + t[:, None]
    cam_fit = np.einsum("nij,mj->nmi", fit.R, fit.canonical[rigid]) + fit.t[:, None]
    depth_err = np.abs(cam_fit[..., 2].mean(1) - cam_true[..., 2].mean(1)) / cam_true[..., 2].mean(1)
    assert np.median(depth_err) < 0.05  # metric depth follows from focal + face size
    # depth changes over the clip are recovered much better than absolute depth
    d_true = cam_true[..., 2].mean(1) - cam_true[..., 2].mean()
    d_fit = cam_fit[..., 2].mean(1) - cam_fit[..., 2].mean()
    assert np.corrcoef(d_true, d_fit)[0, 1] > 0.98


def test_fit_canonical_matches_face_shape(clip_and_fit):
    lm, face, K, R, t, fit = clip_and_fit
    rigid = list(RIGID_LANDMARKS)
    s, rot, trans = similarity_procrustes(face[rigid], fit.canonical[rigid][None].astype(np.float64))
    aligned = s[0] * face[rigid] @ rot[0].T + trans[0]
    assert np.abs(s[0] - 1) < 0.08  # metric scale from the eye-corner prior
    assert np.median(np.linalg.norm(aligned - fit.canonical[rigid], axis=1)) < 0.3  # cm
    assert fit.canonical.shape == (478, 3)
    # the other (non-rigid) canonical points share the rigid points' head frame: on this fully
    # rigid synthetic face they reproject too
    others = np.setdiff1d(np.arange(478), rigid)
    err = np.linalg.norm(project(fit.canonical[others].astype(np.float64), fit.K.astype(np.float64),
                                 fit.R.astype(np.float64), fit.t.astype(np.float64)) - lm[:, others, :2], axis=-1)
    assert np.median(err) < 1.0
    # head frame: nose tip in front (toward the camera, -z), chin below forehead (+y)
    assert fit.canonical[4, 2] < fit.canonical[10, 2] - 2
    assert fit.canonical[152, 1] > fit.canonical[10, 1] + 10


def test_untracked_frames_follow_from_neighbours():
    lm, face, K, R, t = synthetic_clip(120, focal=PRIOR_FOCAL, noise_px=0.3, seed=3)
    weights = np.ones(len(lm))
    weights[50:60] = 0.0
    lm[50:60] = np.random.default_rng(4).uniform(0, SIZE, lm[50:60].shape)  # garbage where lost
    fit = fit_pose(lm, weights, SIZE, PoseConfig())
    rel_true = np.einsum("nij,kj->nik", R, R[0])
    rel_fit = np.einsum("nij,kj->nik", fit.R, fit.R[0])
    err = np.degrees(Rotation.from_matrix(np.einsum("nij,nkj->nik", rel_fit, rel_true)).magnitude())
    assert err[50:60].max() < 3.0  # bridged smoothly, not pulled to the garbage
    assert fit.stats["reprojection_px_median"] < 0.6  # measured on tracked frames only


def test_smoothing_reduces_jitter():
    lm, *_ = synthetic_clip(150, focal=PRIOR_FOCAL, noise_px=1.0, seed=5)
    smooth = fit_pose(lm, np.ones(len(lm)), SIZE, PoseConfig())
    rough = fit_pose(lm, np.ones(len(lm)), SIZE, PoseConfig(smooth_weight=0.0))
    assert smooth.stats["jitter"]["rotation_deg"] < 0.7 * rough.stats["jitter"]["rotation_deg"]
    assert smooth.stats["jitter"]["translation_cm"] < 0.7 * rough.stats["jitter"]["translation_cm"]
