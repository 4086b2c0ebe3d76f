"""The NeRF field: density and colour of a point of the head box under a motion code.

A tri-plane of 2D hash grids (:class:`avatar3d.cuda_ext.TriPlaneHashGrid`: the CUDA kernels on a
GPU, their PyTorch twin elsewhere) encodes the point (unit-cube coordinates of the head box).
Region attention reads the code where it matters: from the point's features, a weight in (0, 1)
per channel of the standardised, clamped code, so the mouth's points can listen to the mouth
channels and the eyes' to the blinks; the weighted code passes a linear layer to the
conditioning. Density MLP: [point features, conditioning] -> density (softplus, per cm) and
features for the colour MLP: [those, conditioning] -> RGB (sigmoid). In the ER-NeRF line (its
paper's tri-plane and region attention); written here from the description.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar3d.gaussian.deform import MotionStats
from avatar3d.nerf.config import NerfConfig

NUM_CHANNELS = 52


class NerfField(nn.Module):
    def __init__(self, config: NerfConfig, stats: MotionStats):
        super().__init__()
        from avatar3d.cuda_ext import TriPlaneHashGrid

        c = config
        self.grid = TriPlaneHashGrid(c.num_levels, c.features_per_level, c.log2_table_size, c.base_resolution,
                                     c.max_resolution)
        feat = self.grid.out_dim
        self.attention = nn.Linear(feat, NUM_CHANNELS)
        self.condition = nn.Linear(NUM_CHANNELS, c.cond_dim)
        self.density_mlp = nn.Sequential(nn.Linear(feat + c.cond_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, 1 + c.geo_dim))
        self.color_mlp = nn.Sequential(nn.Linear(c.geo_dim + c.cond_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, 3))
        for name in ("mean", "scale", "lo", "hi"):
            self.register_buffer(f"motion_{name}", getattr(stats, name).float().clone())

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Grid embeddings uniform in +-1e-4, linear layers Kaiming-uniform, all from ``generator``;
        the density starts low (bias -2)."""
        for p in self.grid.parameters():
            p.data.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * 1e-4)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features**0.5
                m.weight.data.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound * 3**0.5)
                m.bias.data.zero_()
        self.density_mlp[-1].bias.data[0] = -2.0

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(hash-grid embeddings, MLP weights): they learn at different rates."""
        grid = list(self.grid.parameters())
        ids = {id(p) for p in grid}
        return grid, [p for p in self.parameters() if id(p) not in ids]

    def code(self, motion: torch.Tensor) -> torch.Tensor:
        """Motion codes [B, 52] -> standardised, clamped to the training range [B, 52]."""
        x = torch.minimum(torch.maximum(motion, self.motion_lo), self.motion_hi)
        return (x - self.motion_mean) / self.motion_scale

    def forward(self, u: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ``u`` [M, 3] in the unit cube under standardised codes ``code`` [1 or M, 52]
        (:meth:`code`) -> density [M] (per cm) and RGB [M, 3]."""
        feat = self.grid(u)
        cond = self.condition(torch.sigmoid(self.attention(feat)) * code)
        h = self.density_mlp(torch.cat([feat, cond], -1))
        sigma = F.softplus(h[:, 0])
        rgb = torch.sigmoid(self.color_mlp(torch.cat([h[:, 1:], cond], -1)))
        return sigma, rgb

    def density(self, u: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Density only (the colour MLP skipped). [M]"""
        feat = self.grid(u)
        cond = self.condition(torch.sigmoid(self.attention(feat)) * code)
        return F.softplus(self.density_mlp(torch.cat([feat, cond], -1))[:, 0])
