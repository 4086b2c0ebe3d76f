"""The pinhole camera every field draws with, and the projection of head-space points through it.

Convention (see :mod:`avatar3d.core.dataset`): OpenCV camera (x right, y down, z forward), head
pose ``x_cam = R @ x_head + t`` in centimetres, intrinsics ``K`` in pixels of the image drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _f32(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, np.float32) if not torch.is_tensor(x) else x, dtype=torch.float32)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking at head space: ``x_cam = R @ x_head + t``."""

    K: torch.Tensor  # [3, 3] intrinsics in pixels of a width x height image
    viewmat: torch.Tensor  # [4, 4] world (head space) -> camera
    width: int
    height: int

    @staticmethod
    def from_pose(K, R, t, width: int, height: int, device: torch.device | str = "cpu") -> "Camera":
        """Camera from intrinsics ``K`` [3, 3] and head pose ``R`` [3, 3], ``t`` [3] (arrays or tensors)."""
        K, R, t = _f32(K), _f32(R), _f32(t)
        viewmat = torch.eye(4, dtype=torch.float32)
        viewmat[:3, :3] = R
        viewmat[:3, 3] = t.reshape(3)
        return Camera(K.to(device), viewmat.to(device), int(width), int(height))

    def crop_resize(self, x0: float, y0: float, side: float, size: int) -> "Camera":
        """The camera of the square window ``[x0, x0+side) x [y0, y0+side)`` resampled to ``size``^2."""
        s = size / side
        K = self.K.clone()
        K[0, 0] = K[0, 0] * s
        K[1, 1] = K[1, 1] * s
        K[0, 2] = (K[0, 2] - x0) * s
        K[1, 2] = (K[1, 2] - y0) * s
        return Camera(K, self.viewmat, int(size), int(size))

    @property
    def R(self) -> torch.Tensor:
        """Head-to-camera rotation. [3, 3]"""
        return self.viewmat[:3, :3]

    @property
    def t(self) -> torch.Tensor:
        """Head-to-camera translation (cm). [3]"""
        return self.viewmat[:3, 3]

    @property
    def center(self) -> torch.Tensor:
        """Camera centre in world (head) space: ``-R^T t``. [3]"""
        return -(self.R.T @ self.t)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """Pixel positions of head-space points (on the points' device). [P, 3] -> [P, 2]"""
        return project_points(points, self.K, self.R, self.t)


def project_points(points: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of head-space points ``[P, 3]`` with ``K`` [3, 3], ``R`` [3, 3], ``t``
    [3] (moved to the points' device): pixel positions ``[P, 2]`` (depth clamped at 1e-6)."""
    dev = points.device
    pc = points @ R.to(dev).T + t.to(dev)
    uv = pc @ K.to(dev).T
    return uv[:, :2] / uv[:, 2:].clamp(min=1e-6)
