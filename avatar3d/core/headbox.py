"""The box around a subject's head in canonical head space that a field lives in.

Both fields start from it: the Gaussian field carves its first Gaussians from it, the NeRF field
marches its rays through it. It is an oriented box in the head's own frame (right, up, forward
towards the cameras), from the tracked canonical face, reaching down below the drawn neck.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from avatar3d.core.vocab import FOREHEAD, SUBNASALE


@dataclass(frozen=True)
class HeadBox:
    """``local = (world - centre) @ axes.T``; the box is ``lo <= local <= hi`` (cm)."""

    axes: torch.Tensor  # [3, 3] rows: right, up, forward (towards the cameras)
    centre: torch.Tensor  # [3] the canonical face's centre
    lo: torch.Tensor  # [3]
    hi: torch.Tensor  # [3]
    face_width: float  # the canonical face's width (cm)

    def world_corners(self) -> torch.Tensor:
        """The box's 8 corners in world space. [8, 3]"""
        c = torch.stack(torch.meshgrid(*[torch.stack([self.lo[k], self.hi[k]]) for k in range(3)], indexing="ij"), -1)
        return c.reshape(-1, 3) @ self.axes + self.centre


def head_frame(canonical: torch.Tensor, R: torch.Tensor, t: torch.Tensor, train: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """An orthonormal head frame (right, up, forward towards the camera) [3, 3] rows, and the face
    centre [3], from the canonical landmarks [478, 3] and the training frames' poses R [N, 3, 3], t [N, 3]."""
    centre = canonical.mean(0)
    cams = -(R.transpose(1, 2) @ t[..., None])[..., 0]  # [N, 3] camera centres
    fwd = F.normalize(cams[train].mean(0) - centre, dim=0)
    up = (R[train].transpose(1, 2) @ torch.tensor([0.0, -1.0, 0.0]))[..., :].mean(0)
    up = F.normalize(up - (up @ fwd) * fwd, dim=0)
    right = torch.linalg.cross(up, fwd)
    return torch.stack([right, up, fwd]), centre


def head_box(canonical: torch.Tensor, R: torch.Tensor, t: torch.Tensor, train: np.ndarray, neck_reach: float) -> HeadBox:
    """The box around the head (see module docstring): the face's width and a third of it each
    side, 0.6 of it above the landmarks (hair), 1.1 behind the face's front, and down to 0.15
    below the chin or below the drawn neck (``neck_reach``, :func:`avatar3d.core.scene.neck_region`)."""
    axes, centre = head_frame(canonical, R, t, train)
    local = (canonical - centre) @ axes.T  # [478, 3] in (right, up, forward)
    lo, hi = local.min(0).values, local.max(0).values
    w = float(hi[0] - lo[0])
    nose_to_forehead = float(local[FOREHEAD, 1] - local[SUBNASALE, 1])
    neck = float(local[SUBNASALE, 1]) - (neck_reach + 0.1) * nose_to_forehead  # below the drawn neck
    bottom = min(float(lo[1]) - 0.15 * w, neck)
    box_lo = torch.stack([lo[0] - 0.3 * w, torch.tensor(bottom), hi[2] - 1.1 * w])
    box_hi = torch.stack([hi[0] + 0.3 * w, hi[1] + 0.6 * w, hi[2] + 0.05 * w])
    return HeadBox(axes, centre, box_lo, box_hi, w)
