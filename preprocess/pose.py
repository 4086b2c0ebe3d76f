"""Pose stage: shared intrinsics, per-frame head pose and a canonical face, fitted over the clip.

Model (OpenCV camera, see ``avatar3d.core.dataset``): a landmark ``j`` of frame ``i`` projects to
``pi(K (R_i X_j + t_i))`` with one focal length shared by all frames (principal point at the image
centre), head-to-camera rotation ``R_i``, translation ``t_i`` (cm) and canonical head-space points
``X`` (cm). Only rigid landmarks (forehead, nose bridge and tip, eye corners, cheekbones, temples)
enter the fit; lips, jaw, eyelids and brows move with speech and expression.

1. Init: similarity-Procrustes of every frame's mediapipe 3D landmarks (pixels, z on the same
   scale) onto a mean shape; each frame back-projected through a pinhole of the prior focal at
   the depth its scale implies (mediapipe's shape is weak-perspective), Procrustes-averaged again,
   rotated into a face-aligned frame (x: right cheek to left cheek, y: forehead to chin, z into
   the screen) and scaled to centimetres by a typical outer eye-corner distance: the initial
   canonical face. Per-frame Procrustes rotations and scales give R and t.
2. Bundle adjustment (torch, L-BFGS, float32, one thread) over focal, per-frame axis-angle +
   translation and the rigid canonical points (scale pinned by the eye-corner distance): robust
   reprojection error + weak priors on focal (log-normal around the FOV prior) and shape; first
   without, then with temporal smoothness (second difference of the projected rigid points), as
   L-BFGS crawls on the frame-to-frame chain when smoothness is there from the start.

Focal length is only weakly observable from a face ~1 m away (its perspective is subtle): the
fit moves it where the data insists, otherwise the FOV prior holds. Image-space geometry (face
size on screen, rotations, reprojection) does not depend on getting it exactly right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from avatar3d import fsutil
from avatar3d.core.dataset import DatasetPaths, Manifest
from avatar3d.preprocess.track import fill_gaps
from avatar3d.core.vocab import (
    CHIN,
    FOREHEAD,
    LEFT_CHEEK,
    LEFT_EYE_OUTER,
    RIGHT_CHEEK,
    RIGHT_EYE_OUTER,
    RIGID_LANDMARKS,
)

VERSION = 1

# Landmarks that define the face-aligned canonical frame and its scale.


@dataclass(frozen=True)
class PoseConfig:
    """Camera and head-pose fitting options."""

    fov_degrees: float = 21.0
    """Prior horizontal field of view of the crop (talking-head datasets: ~20-25 degrees)."""
    focal_prior_weight: float = 1.0
    """Weight of the log-normal prior pulling the focal length to the FOV prior."""
    smooth_weight: float = 1.0
    """Weight of temporal smoothness (second difference of projected rigid landmarks, px^2)."""
    shape_prior_weight: float = 0.001
    """Weight keeping the fitted rigid canonical points near the Procrustes mean shape (cm^2): only
    fixes the gauge; the mean shape carries mediapipe's weak-perspective bias, so keep it small."""
    eye_width_cm: float = 9.0
    """Outer eye-corner distance that sets the face's metric scale (adult average ~9 cm)."""
    head_centre_depth_cm: float = 6.0
    """Head-space origin: this far behind the centroid of the face landmarks."""
    iterations: int = 400
    """L-BFGS iterations of the bundle adjustment."""
    device: str = "cpu"
    """Torch device for the bundle adjustment."""


@dataclass(frozen=True)
class PoseFit:
    """Result of the joint fit."""

    K: np.ndarray  # [3, 3] float32 intrinsics (pixels)
    R: np.ndarray  # [N, 3, 3] float32 head-to-camera rotation
    t: np.ndarray  # [N, 3] float32 head-to-camera translation (cm)
    canonical: np.ndarray  # [478, 3] float32 head-space landmarks (cm)
    stats: dict


def similarity_procrustes(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame similarity ``dst_i ~ s_i R_i src + T_i``.

    ``src`` [M, 3]; ``dst`` [N, M, 3]. Returns ``s`` [N], ``R`` [N, 3, 3] (proper rotations),
    ``T`` [N, 3].
    """
    mu_s = src.mean(0)  # [3]
    mu_d = dst.mean(1)  # [N, 3]
    a = src - mu_s  # [M, 3]
    b = dst - mu_d[:, None]  # [N, M, 3]
    h = a.T @ b  # [N, 3, 3]
    u, sig, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))  # [N]
    fix = np.ones((len(d), 3))
    fix[:, 2] = d
    rot = (vt.transpose(0, 2, 1) * fix[:, None, :]) @ u.transpose(0, 2, 1)  # V diag(fix) U^T
    s = (sig * fix).sum(1) / (a**2).sum()
    trans = mu_d - s[:, None] * (rot @ mu_s)
    return s, rot, trans


def rotvec_to_matrix(rv):
    """Rodrigues: ``[..., 3]`` axis-angle (torch) -> ``[..., 3, 3]``."""
    import torch

    theta = torch.sqrt((rv * rv).sum(-1, keepdim=True) + 1e-24)  # [..., 1]
    k = rv / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    kmat = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*rv.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rv.dtype, device=rv.device).expand_as(kmat)
    s = torch.sin(theta)[..., None]
    c = torch.cos(theta)[..., None]
    return eye + s * kmat + (1 - c) * (kmat @ kmat)


def matrix_to_rotvec(rot: np.ndarray) -> np.ndarray:
    """``[N, 3, 3]`` rotations -> ``[N, 3]`` axis-angle (numpy)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rot).as_rotvec()


def project(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``points`` [M, 3] head space -> ``[N, M, 2]`` pixels for poses ``R`` [N, 3, 3], ``t`` [N, 3]."""
    cam = points @ R.transpose(0, 2, 1) + t[:, None]  # [N, M, 3]
    uvw = cam @ K.T
    return uvw[..., :2] / uvw[..., 2:3]


def _mean_shape(points: np.ndarray) -> np.ndarray:
    """Generalised Procrustes mean (two rounds, aligned on the rigid landmarks): [U, 478, 3] -> [478, 3]."""
    rigid = list(RIGID_LANDMARKS)
    ref = points[0]
    for _ in range(2):
        s, rot, trans = similarity_procrustes(ref[rigid], points[:, rigid])
        # bring every frame onto the reference: (x - T) R / s
        aligned = ((points - trans[:, None]) @ rot) / s[:, None, None]
        ref = aligned.mean(0)
    return ref


def _face_frame(ref: np.ndarray, config: PoseConfig) -> np.ndarray:
    """``ref`` [478, 3] in any similarity frame -> the face-aligned head frame in cm."""
    x_axis = ref[LEFT_CHEEK] - ref[RIGHT_CHEEK]
    y_axis = ref[CHIN] - ref[FOREHEAD]
    x_axis = x_axis / np.linalg.norm(x_axis)
    y_axis = y_axis - (y_axis @ x_axis) * x_axis
    y_axis /= np.linalg.norm(y_axis)
    z_axis = np.cross(x_axis, y_axis)
    basis = np.stack([x_axis, y_axis, z_axis])  # rows: head axes in reference coordinates
    scale = config.eye_width_cm / np.linalg.norm(ref[LEFT_EYE_OUTER] - ref[RIGHT_EYE_OUTER])
    canon = (ref - ref.mean(0)) @ basis.T * scale
    canon[:, 2] -= config.head_centre_depth_cm  # origin behind the face: the head centre
    return canon


def canonical_from_landmarks(
    landmarks: np.ndarray, weights: np.ndarray, config: PoseConfig, focal: float, size: int
) -> np.ndarray:
    """Mean face shape over the clip in a face-aligned head frame, in cm: ``[478, 3]``.

    ``landmarks`` [N, 478, 3] (pixels, z on the x scale); ``weights`` [N] (0 = unusable frame).
    mediapipe's landmarks are a weak-perspective shape (near parts look bigger), so each frame is
    first back-projected through a pinhole camera of focal ``focal`` at the depth its scale implies.
    """
    rigid = list(RIGID_LANDMARKS)
    use = np.flatnonzero(weights > 0)
    obs = landmarks[use].astype(np.float64)  # [U, 478, 3]
    canon = _face_frame(_mean_shape(obs), config)  # weak-perspective estimate
    s, _, _ = similarity_procrustes(canon[rigid], obs[:, rigid])  # [U] px per cm
    depth = focal / s  # [U] cm, of the rigid centroid
    rel = obs[..., 2] - obs[:, rigid, 2].mean(1, keepdims=True)  # [U, 478] px
    z = depth[:, None] + rel / s[:, None]  # [U, 478] cm
    c = size / 2.0
    cam = np.stack([(obs[..., 0] - c) * z / focal, (obs[..., 1] - c) * z / focal, z], -1)
    return _face_frame(_mean_shape(cam), config)


def _jitter(R: np.ndarray, t: np.ndarray, valid: np.ndarray) -> dict:
    """Mean norm of the frame-to-frame second difference of rotation (deg) and translation (cm)."""
    rv = matrix_to_rotvec(R.astype(np.float64))
    ok = valid[2:] & valid[1:-1] & valid[:-2]
    if not ok.any():
        return {"rotation_deg": float("nan"), "translation_cm": float("nan")}
    d2r = rv[2:] - 2 * rv[1:-1] + rv[:-2]
    d2t = t[2:] - 2 * t[1:-1] + t[:-2]
    return {
        "rotation_deg": round(float(np.degrees(np.linalg.norm(d2r[ok], axis=1)).mean()), 5),
        "translation_cm": round(float(np.linalg.norm(d2t[ok], axis=1).mean()), 5),
    }


def reprojection_errors(
    landmarks: np.ndarray, valid: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, canonical: np.ndarray
) -> np.ndarray:
    """Pixel distances between tracked and projected rigid landmarks on valid frames: ``[V * M]``."""
    rigid = list(RIGID_LANDMARKS)
    proj = project(canonical[rigid].astype(np.float64), K.astype(np.float64), R[valid], t[valid])
    return np.linalg.norm(proj - landmarks[valid][:, rigid, :2], axis=-1).reshape(-1)


def fit_pose(landmarks: np.ndarray, weights: np.ndarray, size: int, config: PoseConfig) -> PoseFit:
    """Fit K, R, t and the canonical face to ``landmarks`` [N, 478, 3] (pixels of a size x size crop).

    ``weights`` [N]: per-frame confidence (1 tracked, <1 interpolated, 0 unusable: those frames
    follow from the smoothness term alone).
    """
    import torch

    n = len(landmarks)
    weights = np.asarray(weights, np.float64)
    rigid = list(RIGID_LANDMARKS)
    c = size / 2.0
    f0 = c / math.tan(math.radians(config.fov_degrees) / 2)
    canon0 = canonical_from_landmarks(landmarks, weights, config, f0, size)  # [478, 3] cm

    # Per-frame init from weak perspective: scale s (px / cm) -> depth f / s.
    obs3 = landmarks[:, rigid].astype(np.float64)  # [N, M, 3]
    use = weights > 0
    s, rot, trans = similarity_procrustes(canon0[rigid], obs3)
    tz = f0 / s
    origin_px = trans[:, :2]  # where the head-space origin lands (weak perspective)
    t0 = np.concatenate([(origin_px - c) * tz[:, None] / f0, tz[:, None]], 1)  # [N, 3]
    rv0 = matrix_to_rotvec(rot)
    # unusable frames start from their neighbours' poses (the smoothness term then decides)
    t0 = fill_gaps(t0, use).astype(np.float64)
    rv0 = fill_gaps(rv0, use).astype(np.float64)
    init_R = rot

    dev = torch.device(config.device)
    dt = torch.float32  # float64 gives the same fit here, 1.6x slower
    obs = torch.as_tensor(landmarks[:, rigid, :2], dtype=dt, device=dev)  # [N, M, 2]
    w = torch.as_tensor(weights, dtype=dt, device=dev)  # [N]
    x0 = torch.as_tensor(canon0[rigid], dtype=dt, device=dev)  # [M, 3]
    log_f = torch.tensor(math.log(f0), dtype=dt, device=dev, requires_grad=True)
    rv = torch.as_tensor(rv0, dtype=dt, device=dev).clone().requires_grad_(True)  # [N, 3]
    # translation in units of 10 cm keeps the variables on comparable scales for L-BFGS
    tt = torch.as_tensor(t0 / 10.0, dtype=dt, device=dev).clone().requires_grad_(True)  # [N, 3]
    xr = x0.clone().requires_grad_(True)  # [M, 3]
    m = len(rigid)
    wsum = w.sum() * m
    delta = 2.0  # px, pseudo-Huber scale

    eye_r, eye_l = rigid.index(RIGHT_EYE_OUTER), rigid.index(LEFT_EYE_OUTER)

    def metric(xr_):
        """The canonical points scaled to the eye-corner width: removes the scale gauge."""
        return xr_ * (config.eye_width_cm / torch.linalg.norm(xr_[eye_l] - xr_[eye_r]))

    def project_t(log_f_, rv_, tt_, xr_):
        cam = metric(xr_) @ rotvec_to_matrix(rv_).transpose(1, 2) + 10.0 * tt_[:, None]  # [N, M, 3]
        z = cam[..., 2:3].clamp_min(1e-3)
        return torch.exp(log_f_) * cam[..., :2] / z + c  # [N, M, 2]

    def loss_fn(smooth_weight: float):
        uv = project_t(log_f, rv, tt, xr)
        r2 = ((uv - obs) ** 2).sum(-1)  # [N, M]
        reproj = (w[:, None] * delta**2 * (torch.sqrt(1 + r2 / delta**2) - 1)).sum() / wsum
        loss = reproj
        if n >= 3 and smooth_weight > 0:
            d2 = uv[2:] - 2 * uv[1:-1] + uv[:-2]
            loss = loss + smooth_weight * (d2**2).sum(-1).mean()
        loss = loss + config.focal_prior_weight * (log_f - math.log(f0)) ** 2
        loss = loss + config.shape_prior_weight * ((xr - x0) ** 2).sum(-1).mean()
        return loss

    def solve(smooth_weight: float, iterations: int) -> None:
        opt = torch.optim.LBFGS(
            [log_f, rv, tt, xr], lr=1.0, max_iter=iterations, history_size=20,
            tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            loss = loss_fn(smooth_weight)
            loss.backward()
            return loss

        opt.step(closure)

    # The problem is small (a few thousand variables): one thread is fastest, and avoids
    # oversubscribing cores that decode/track threads or other processes are using.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Without the smoothness term every frame is its own small problem and L-BFGS converges
        # fast; the smoothness term then only moves high frequencies, which also converge fast
        # (with it from the start, the chain of coupled frames makes L-BFGS crawl).
        solve(0.0, config.iterations)
        if config.smooth_weight > 0:
            solve(config.smooth_weight, config.iterations // 2)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        final_loss = float(loss_fn(config.smooth_weight))
    f = float(torch.exp(log_f.detach()))
    K = np.array([[f, 0, c], [0, f, c], [0, 0, 1]], np.float64)
    R = rotvec_to_matrix(rv.detach()).cpu().numpy()
    t = 10.0 * tt.detach().cpu().numpy()
    # The rigid points may drift as a whole (only the weak shape prior holds that gauge): move
    # them, and the poses with them, back onto the initial face-aligned frame, where the other
    # (non-rigid) canonical points live.
    fitted = metric(xr.detach()).cpu().numpy()  # [M, 3]
    _, q, _ = similarity_procrustes(fitted, canon0[rigid][None])  # canon0 ~ q fitted + b
    q = q[0]  # [3, 3]
    b = canon0[rigid].mean(0) - q @ fitted.mean(0)  # [3]
    canonical = canon0.copy()
    canonical[rigid] = fitted @ q.T + b
    R = R @ q.T  # R X + t = (R q^T)(q X + b) + (t - R q^T b)
    t = t - np.einsum("nij,j->ni", R, b)

    valid = weights >= 1.0
    if not valid.any():
        valid = use
    err = reprojection_errors(landmarks, valid, K, R, t, canonical)
    stats = {
        "focal_px": round(f, 2),
        "fov_degrees": round(math.degrees(2 * math.atan(c / f)), 3),
        "reprojection_px_median": round(float(np.median(err)), 4),
        "reprojection_px_p95": round(float(np.percentile(err, 95)), 4),
        "reprojection_px_max": round(float(err.max()), 4),
        "jitter": _jitter(R, t, valid),
        "jitter_init": _jitter(init_R, t0, valid),  # per-frame Procrustes, before the fit
        "head_distance_cm_median": round(float(np.median(t[:, 2])), 2),
        "loss": round(final_loss, 6),
        "rigid_landmarks": len(rigid),
    }
    return PoseFit(
        K=K.astype(np.float32), R=R.astype(np.float32), t=t.astype(np.float32),
        canonical=canonical.astype(np.float32), stats=stats,
    )


def run_pose(paths: DatasetPaths, manifest: Manifest, config: PoseConfig) -> dict:
    """Fit the camera and head poses to tracks.npz and add K, R, t, canonical to it."""
    from tqdm import tqdm

    with np.load(paths.tracks) as z:
        tracks = {k: z[k] for k in z.files}
    weights = np.where(tracks["valid"], 1.0, np.where(tracks["interpolated"], 0.3, 0.0))
    with tqdm(total=1, desc="pose", unit="fit") as bar:
        fit = fit_pose(tracks["landmarks"], weights, manifest.size, config)
        bar.update(1)
    tracks.update(K=fit.K, R=fit.R, t=fit.t, canonical=fit.canonical)
    with fsutil.atomic_file(paths.tracks) as f:
        np.savez_compressed(f, **tracks)
    return fit.stats
