"""Ray marching in pure PyTorch: camera rays, the head box, samples, compositing, the occupancy grid.

Space is the head frame of :class:`avatar3d.core.headbox.HeadBox` normalised to the unit cube
(``u = (local - lo) / (hi - lo)``); distances along a ray are in world cm (rays are unit vectors
in world space, and the head frame is a rotation of it, so they are the same in the head frame).
A ray's samples lie in its segment inside the box, evenly spaced (``stratified``: one uniform
draw inside each of the even bins); sample i stands for the interval ``delta_i`` from it to the
next one (the last one's to the box's far side). Compositing is the emission-absorption sum:
``alpha_i = 1 - exp(-sigma_i delta_i)``, ``w_i = alpha_i prod_{j<i} (1 - alpha_j)``,
``rgb = sum w_i c_i`` (premultiplied), ``alpha = sum w_i``.

The occupancy grid (:class:`OccupancyGrid`) marks the cells of the unit cube whose density may
exceed a threshold: a sample in an unmarked cell is taken as empty without evaluating the field.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def camera_rays(K: torch.Tensor, viewmat: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixel centres: ``pixels`` [P, 2] (x, y; centres at +0.5) of a
    camera (intrinsics K [3, 3], world -> camera ``viewmat`` [4, 4]) -> origins [P, 3], unit directions [P, 3]."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    x = (pixels[:, 0] - K[0, 2]) / K[0, 0]
    y = (pixels[:, 1] - K[1, 2]) / K[1, 1]
    d_cam = torch.stack([x, y, torch.ones_like(x)], -1)
    dirs = F.normalize(d_cam @ R, dim=-1)  # R^T d for each row
    origin = -(R.T @ t)
    return origin.expand_as(dirs), dirs


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where rays [P, 3] (in the box's frame) enter and leave the box ``lo``..``hi`` [3]: t_near,
    t_far [P] (t_far <= t_near where a ray misses it; t_near >= 0)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    a, b = (lo - origins) * inv, (hi - origins) * inv
    near = torch.minimum(a, b).amax(-1).clamp(min=0.0)
    far = torch.maximum(a, b).amin(-1)
    return near, far


def sample_along(near: torch.Tensor, far: torch.Tensor, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples per ray between ``near`` and ``far`` [P] (see module docstring): distances
    t [P, n] and the intervals they stand for, deltas [P, n] (0 for rays that miss the box)."""
    span = (far - near).clamp(min=0.0)
    step = span / n
    offset = (torch.rand(near.shape[0], n, generator=generator).to(near) if generator is not None
              else torch.full((near.shape[0], n), 0.5, dtype=near.dtype, device=near.device))
    t = near[:, None] + (torch.arange(n, device=near.device, dtype=near.dtype)[None] + offset) * step[:, None]
    deltas = torch.cat([t[:, 1:] - t[:, :-1], (far[:, None] - t[:, -1:]).clamp(min=0.0)], -1)
    return t, deltas


def composite_segment(sigma: torch.Tensor, rgb: torch.Tensor, deltas: torch.Tensor,
                      depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Emission-absorption compositing of a run of consecutive samples: sigma [P, n] (per cm),
    rgb [P, n, 3], deltas [P, n] cm, after optical depth ``depth`` [P] (transmittance exp(-depth))
    -> the premultiplied colour they add [P, 3] and the optical depth after them [P]."""
    tau = sigma * deltas
    before = depth[:, None] + torch.cumsum(tau, 1) - tau
    w = (1.0 - torch.exp(-tau)) * torch.exp(-before)  # alpha_i T_i
    return (w[..., None] * rgb).sum(1), depth + tau.sum(1)


def composite(sigma: torch.Tensor, rgb: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Emission-absorption compositing of whole rays (see module docstring): sigma [P, n], rgb
    [P, n, 3], deltas [P, n] -> premultiplied colour [P, 3] and alpha [P]."""
    rgb, depth = composite_segment(sigma, rgb, deltas, torch.zeros_like(sigma[:, 0]))
    return rgb, 1.0 - torch.exp(-depth)


class OccupancyGrid:
    """Which cells of the unit cube [0, 1]^3 (``resolution``^3) may hold density (see module
    docstring). All cells are occupied until the first :meth:`update`."""

    def __init__(self, resolution: int, device="cpu"):
        self.resolution = resolution
        self.cells = torch.ones(resolution, resolution, resolution, dtype=torch.bool, device=device)

    def update(self, density, threshold: float, subdivisions: int = 2, batch: int = 1 << 16) -> float:
        """Mark the cells where ``density(u [M, 3]) -> [M]`` exceeds ``threshold`` at any point of
        a lattice ``subdivisions`` times finer than the cells (the centres of each cell's
        sub-cells), grown by one cell each way (a 3x3x3 max-pool). Whatever holds a ball of
        density of radius sqrt(3) / (2 subdivisions) cells (0.43 at 2, about the spacing of a
        ray's samples when the grid matches them) is then marked wherever it carries density:
        some lattice point lies in that ball within 0.87 cells of any of its points. Returns the
        share of cells occupied."""
        G, k = self.resolution, subdivisions
        idx = torch.stack(torch.meshgrid(*[torch.arange(G)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
        sub = torch.stack(torch.meshgrid(*[torch.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
        peak = torch.zeros(G**3)
        with torch.no_grad():
            for offset in (sub + 0.5) / k:
                u = (idx + offset) / G
                for s in range(0, len(u), batch):
                    peak[s:s + batch] = torch.maximum(peak[s:s + batch], density(u[s:s + batch].to(self.cells.device)).float().cpu())
        hot = (peak > threshold).reshape(1, 1, G, G, G).float()
        self.cells = (F.max_pool3d(hot, 3, stride=1, padding=1)[0, 0] > 0).to(self.cells.device)
        return float(self.cells.float().mean())

    def occupied(self, u: torch.Tensor) -> torch.Tensor:
        """Whether points ``u`` [..., 3] of the unit cube lie in occupied cells (False outside the cube). [...]"""
        G = self.resolution
        inside = ((u >= 0) & (u <= 1)).all(-1)
        cell = (u.clamp(0, 1 - 1e-6) * G).long()
        return inside & self.cells[cell[..., 0], cell[..., 1], cell[..., 2]]

    def state_dict(self) -> dict:
        return {"cells": self.cells.cpu()}

    def load_state_dict(self, state: dict) -> None:
        cells = state["cells"]
        if cells.shape != self.cells.shape:
            raise ValueError(f"occupancy grid of {list(cells.shape)} cells, expected {list(self.cells.shape)}")
        self.cells = cells.to(self.cells.device).bool()


def pixel_grid(width: int, height: int, device="cpu") -> torch.Tensor:
    """Every pixel centre of a width x height image, row by row. [H W, 2]"""
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float() + 0.5


MAX_DEPTH = -math.log(1e-4)  # inference stops a ray once its transmittance falls below 1e-4
