"""The Gaussian field's loss terms (each one scalar; the trainer weights and names them).

- photometric (:func:`photometric_terms`): L1 and D-SSIM of the head composited over the frame's
  own torso/background, on the dilated head region with extra weight inside the mouth, and the
  alpha term (head alpha 1 on the head mask, 0 off it);
- :func:`branch_loss`: teeth and tongue come from the mouth branch, lips and skin from the face;
- :func:`landmark_guidance`: the deformation field carries the canonical lip landmarks onto the
  frame's tracked ones;
- :func:`shut_cover_loss`: on frames whose mouth is shut, from head poses turned a few degrees,
  the face branch alone must hide the mouth branch around the lips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avatar3d.core.avatar import Conditioning
from avatar3d.core.camera import project_points
from avatar3d.core.vocab import MOUTH_LANDMARKS
from avatar3d.drive.metrics import crop_to_ssim, ssim_map
from avatar3d.gaussian.avatar import GaussianAvatar
from avatar3d.gaussian.config import FitParams
from avatar3d.gaussian.data import FitData


@dataclass(frozen=True)
class Target:
    """One frame's fit target on the device."""

    image: torch.Tensor  # [S, S, 3] float in [0, 1]
    background: torch.Tensor  # [S, S, 3]
    head: torch.Tensor  # [S, S] soft head mask
    mouth: torch.Tensor  # [S, S] soft mouth mask
    region: torch.Tensor  # [S, S] dilated head region (loss support)
    mouth_empty: bool = False  # no pixel of the mouth mask reaches 0.5: a shut mouth (read on the CPU)


def make_target(data: FitData, i: int, dilate_px: int, device) -> Target:
    """Frame i's target on ``device``, its head region dilated by ``dilate_px`` pixels."""
    frame = data.frame(i)
    head = frame.head.to(device).float() / 255
    k = 2 * dilate_px + 1
    region = F.max_pool2d(head[None, None], k, stride=1, padding=dilate_px)[0, 0] if dilate_px else head
    return Target(
        image=frame.image.to(device).float() / 255,
        background=frame.background.to(device).float() / 255,
        head=head,
        mouth=frame.mouth.to(device).float() / 255,
        region=(region > 0.01).float(),
        mouth_empty=int(frame.mouth.max()) < 128,
    )


def photometric_terms(
    pred: torch.Tensor, alpha: torch.Tensor, target: Target, params: FitParams
) -> dict[str, torch.Tensor]:
    """Unweighted ``l1``, ``dssim`` (over the head region, ``w_mouth`` extra inside the mouth) and
    ``alpha`` (squared error of the head alpha against the head mask over the region).
    pred [S, S, 3] composited, alpha [S, S, 1] -> scalars."""
    weight = target.region + params.w_mouth * target.mouth  # [S, S]
    l1 = ((pred - target.image).abs().mean(-1) * weight).sum() / weight.sum().clamp(min=1)
    wc = crop_to_ssim(weight)
    dssim = ((1 - ssim_map(pred, target.image)) * wc).sum() / wc.sum().clamp(min=1)
    a = ((alpha[..., 0] - target.head) ** 2 * target.region).sum() / target.region.sum().clamp(min=1)
    return {"l1": l1, "dssim": dssim, "alpha": a}


BRANCH_BAND = 2 / 512  # band around the mouth mask's edge left to either branch (the lips' inner
# rim), as a fraction of the window side: 2 px at 512², scaled with the window so that a small
# window's mouth mask still has pixels deep inside it.


def branch_loss(face_alpha: torch.Tensor, mouth_alpha: torch.Tensor, target: Target) -> torch.Tensor:
    """Face/mouth decomposition: the face branch's alpha share deep inside the mouth mask and the
    mouth branch's share in the head region away from it, mean squared over each region (scalar).
    A band of ``BRANCH_BAND`` x the window side around the (soft, resampled) mask's edge is left
    free: the mask is eroded by that many pixels rounded down (face side) and dilated by it rounded
    up (mouth side). face_alpha, mouth_alpha: [S, S, 1]."""
    band = BRANCH_BAND * target.mouth.shape[-1]
    erode, dilate = math.floor(band), math.ceil(band)
    m = target.mouth[None, None]
    near = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)[0, 0]
    deep = -F.max_pool2d(-m, 2 * erode + 1, stride=1, padding=erode)[0, 0]
    inside = (deep > 0.9).float()
    outside = target.region * (near < 0.01).float()
    face_in = (face_alpha[..., 0] ** 2 * inside).sum() / inside.sum().clamp(min=1)
    mouth_out = (mouth_alpha[..., 0] ** 2 * outside).sum() / outside.sum().clamp(min=1)
    return face_in + mouth_out


def turned(R: torch.Tensor, pitch_deg: float, yaw_deg: float) -> torch.Tensor:
    """The head rotation R [3, 3] turned about the head origin by a pitch (x) and a yaw (y). [3, 3]"""
    a, b = math.radians(pitch_deg), math.radians(yaw_deg)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    return R @ (rx @ ry).to(R)


def lip_box(
    avatar: GaussianAvatar, data: FitData, i: int, cond: Conditioning, R: torch.Tensor, device
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` window pixels: the box of the canonical lip landmarks moved by the face
    deformation field and projected with frame i's camera and head rotation ``R``, grown by a
    quarter of its width on each side and clipped to the window (empty when off it)."""
    with torch.no_grad():
        lips = data.canonical[list(MOUTH_LANDMARKS)].to(device)
        moved = lips + avatar.face_deform(lips, cond.motion, cond.audio).d_means[0]
        uv = project_points(moved, data.K, R, data.t[i])
    lo, hi = uv.min(0).values, uv.max(0).values
    grow = 0.25 * float(hi[0] - lo[0])
    S = data.window.size
    x0, y0 = (max(0, math.floor(float(v) - grow)) for v in lo)
    x1, y1 = (min(S, math.ceil(float(v) + grow)) for v in hi)
    return x0, y0, max(x0, x1), max(y0, y1)


def shut_cover_loss(
    avatar: GaussianAvatar, data: FitData, i: int, cond: Conditioning, g: dict[str, torch.Tensor], params: FitParams,
    generator: torch.Generator, device,
) -> torch.Tensor:
    """The mouth branch's alpha share, squared, averaged over frame i's :func:`lip_box`, rendered
    from frame i's head pose turned by a random pitch and yaw in +-``params.shut_jitter_deg``
    with the mouth Gaussians of ``g`` (frame i's :meth:`GaussianAvatar.deformed` attributes) detached:
    their share falls only by the face covering them. Only the box is rasterized. Scalar (see
    ``FitParams.w_shut_cover``)."""
    turn = (torch.rand(2, generator=generator) * 2 - 1) * params.shut_jitter_deg
    R = turned(data.R[i], float(turn[0]), float(turn[1]))
    x0, y0, x1, y1 = lip_box(avatar, data, i, cond, R, device)
    if x1 <= x0 or y1 <= y0:
        return data.K.new_zeros((), device=device)
    side = max(x1 - x0, y1 - y0)
    cam = data.camera(i, device, R).crop_resize(x0, y0, side, side)
    nf = avatar.num_face()
    frozen = {k: torch.cat([v[:nf], v[nf:].detach()]) for k, v in g.items()}
    frozen["colors"] = avatar.is_mouth(frozen["colors"])
    out = avatar.draw(frozen, cam)
    return (out.rgb[: y1 - y0, : x1 - x0, 0] ** 2).mean()


def landmark_guidance(avatar: GaussianAvatar, data: FitData, i: int, cond: Conditioning, device) -> torch.Tensor:
    """Distance between the canonical lip landmarks (``MOUTH_LANDMARKS``) moved by the face
    deformation field and frame i's tracked ones, projected with frame i's camera: mean
    Charbonnier distance as a fraction of the window side (scalar).

    Only the deformation field is supervised (the landmarks are points in its domain, not
    Gaussians), so densify/prune never disturbs it; Gaussians near a landmark move with it.
    """
    idx = list(MOUTH_LANDMARKS)
    canonical = data.canonical[idx].to(device)  # [L, 3]
    d = avatar.face_deform(canonical, cond.motion, cond.audio)
    uv = project_points(canonical + d.d_means[0], data.K, data.R[i], data.t[i])  # [L, 2] window pixels
    tracked = torch.from_numpy(data.landmarks[i][idx]).to(device)  # [L, 2]
    ok = torch.isfinite(tracked).all(-1)
    err = (uv[ok] - tracked[ok]) / data.window.size
    return torch.sqrt((err**2).sum(-1) + 1e-6).mean() if bool(ok.any()) else uv.sum() * 0
