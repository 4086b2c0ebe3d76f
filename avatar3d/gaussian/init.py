"""Initialisation of a Gaussian avatar from a dataset: face Gaussians on the tracked canonical
landmarks and carved from the head box (down to the drawn neck) by the drawn regions (a visual
hull), mouth Gaussians in a cavity behind the inner lips, the face field's motion statistics from
the training frames."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from avatar3d.core.camera import project_points
from avatar3d.core.headbox import head_box
from avatar3d.core.vocab import INNER_LIPS, MOUTH_INTERIOR_CHANNELS, SUBNASALE
from avatar3d.gaussian.avatar import AvatarSpec, GaussianAvatar
from avatar3d.gaussian.config import FitParams
from avatar3d.gaussian.data import FitData
from avatar3d.core.motion import MotionStats
from avatar3d.gaussian.gaussians import Gaussians


def _sample_colors(points: torch.Tensor, data: FitData, frames: np.ndarray) -> torch.Tensor:
    """Mean colour of the points' projections over some frames. [P, 3] -> [P, 3] in [0, 1]"""
    acc = torch.zeros(points.shape[0], 3)
    S = data.window.size
    for i in frames:
        uv = project_points(points, data.K, data.R[int(i)], data.t[int(i)]).round().long().clamp(0, S - 1)
        acc += data.frame(int(i)).image[uv[:, 1], uv[:, 0]].float() / 255
    return acc / len(frames)


def init_avatar(data: FitData, params: FitParams, generator: torch.Generator) -> GaussianAvatar:
    """A new avatar for ``data`` (see module docstring), drawn from ``generator``, rasterized
    with ``params.backend``."""
    box = head_box(data.canonical, data.R, data.t, data.train, data.neck_reach)
    axes, centre, box_lo, box_hi, w = box.axes, box.centre, box.lo, box.hi, box.face_width
    lm = data.canonical

    # Inside of the mouth: an ellipsoid behind the inner lip contour (mouth branch only).
    lips = (lm[list(INNER_LIPS)] - centre) @ axes.T
    mc = lips.mean(0) + torch.tensor([0.0, 0.0, -0.1 * w])
    lip_w = float(lips[:, 0].max() - lips[:, 0].min())
    radii = torch.tensor([0.55 * lip_w, 0.08 * w, 0.08 * w])

    ready = data.train[: data.drawable(0)]  # all of them unless the frames are still streaming in
    frames = ready[np.linspace(0, len(ready) - 1, min(16, len(ready))).astype(int)]
    S = data.window.size
    n_lm = min(params.num_face // 3, 4 * lm.shape[0])
    n_box = params.num_face - n_lm
    cand = box_lo + (box_hi - box_lo) * torch.rand(n_box * 8, 3, generator=generator)
    cand_world = cand @ axes + centre
    inside = torch.zeros(cand.shape[0])
    for i in frames:
        uv = project_points(cand_world, data.K, data.R[int(i)], data.t[int(i)]).round().long()
        ok = (uv >= 0).all(1) & (uv < S).all(1)
        uvc = uv.clamp(0, S - 1)
        head = data.frame(int(i)).head.float()[None, None] / 255
        head = F.max_pool2d(head, 5, stride=1, padding=2)[0, 0]  # a little slack
        inside += ok.float() * (head[uvc[:, 1], uvc[:, 0]] > 0.5).float()
    in_mouth = (((cand - mc) / (1.3 * radii)) ** 2).sum(1) < 1  # left to the mouth branch
    keep = ((inside >= 0.9 * len(frames)) & ~in_mouth).nonzero().squeeze(1)
    keep = keep[torch.randperm(len(keep), generator=generator)[:n_box]]
    box_pts = cand_world[keep]
    reps = max(1, n_lm // lm.shape[0])
    jitter = 0.02 * w * torch.randn(reps, *lm.shape, generator=generator)
    lm_pts = (lm[None] + jitter).reshape(-1, 3)
    pts = torch.cat([lm, lm_pts, box_pts])[: params.num_face]
    nn_dist = torch.cdist(pts, pts).topk(4, largest=False).values[:, 1:].mean(1)
    scale = nn_dist.clamp(min=0.002 * w, max=0.03 * w)
    face = Gaussians.init(pts, _sample_colors(pts, data, frames), scale, params.init_opacity)

    u = torch.randn(params.num_mouth, 3, generator=generator)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(params.num_mouth, 1, generator=generator) ** (1 / 3)
    m_local = mc + u * radii
    m_pts = m_local @ axes + centre
    m_cols = torch.tensor([0.3, 0.12, 0.12]).expand(params.num_mouth, 3)
    mouth = Gaussians.init(
        m_pts, m_cols, 0.02 * w, 0.5,
        extra={"motion_basis": torch.zeros(params.num_mouth, 3 * len(MOUTH_INTERIOR_CHANNELS))},
    )
    corners = box.world_corners()
    audio_dim = 0 if data.audio is None else int(data.audio.shape[1])
    spec = AvatarSpec(
        deform=params.deform,
        box_min=tuple(float(v) for v in corners.min(0).values),
        box_max=tuple(float(v) for v in corners.max(0).values),
        audio_features=params.audio_features,
        audio_window=params.audio_window if params.audio_features else 0,
        audio_dim=audio_dim,
    )
    stats = MotionStats.of_codes(data.motion[torch.from_numpy(data.train)])
    lower_face_y = float(data.canonical[SUBNASALE, 1])  # the base of the nose: where the lower face begins
    avatar = GaussianAvatar(spec, face, mouth, stats, lower_face_y, params.backend)
    avatar.face_deform.reset_parameters(generator)
    return avatar
