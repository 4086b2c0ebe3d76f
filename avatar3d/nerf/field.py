"""The NeRF field: density and colour of a point of the head box under a motion code.

A tri-plane of 2D hash grids (:class:`avatar3d.cuda_ext.TriPlaneHashGrid`: the CUDA kernels on a
GPU, their PyTorch twin elsewhere) encodes the point (unit-cube coordinates of the head box).
The frame's conditioning is the standardised, clamped code [52] and, for runs that listen to
audio, the encoded audio window [audio_dim] (:class:`avatar3d.core.audio_window.AudioWindowEncoder`).
Region attention reads it where it matters: from the point's features, a weight in (0, 1) per
conditioning channel, so the mouth's points can listen to the mouth channels and the audio and
the eyes' to the blinks; the weighted conditioning passes a linear layer. Density MLP: [point
features, conditioning] -> density (softplus, per cm) and features for the colour MLP: [those,
conditioning] -> RGB (sigmoid) and, with ``uncertainty``, the point's share of the ray's
expected photometric error (softplus). In the ER-NeRF line (its paper's tri-plane, region
attention and uncertainty); written here from the description.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from avatar3d.core.audio_window import AudioWindowEncoder
from avatar3d.core.motion import MotionStats
from avatar3d.nerf.config import NerfConfig

NUM_CHANNELS = 52


class NerfField(nn.Module):
    """The field (module docstring); ``audio_dim`` > 0: the size of the audio features it listens to."""

    def __init__(self, config: NerfConfig, stats: MotionStats, audio_dim: int = 0):
        super().__init__()
        from avatar3d.cuda_ext import TriPlaneHashGrid

        c = config
        self.grid = TriPlaneHashGrid(c.num_levels, c.features_per_level, c.log2_table_size, c.base_resolution,
                                     c.max_resolution)
        feat = self.grid.out_dim
        self.audio = AudioWindowEncoder(audio_dim, c.audio_hidden, c.audio_dim) if audio_dim else None
        channels = NUM_CHANNELS + (c.audio_dim if audio_dim else 0)
        self.attention = nn.Linear(feat, channels)
        self.condition = nn.Linear(channels, c.cond_dim)
        self.density_mlp = nn.Sequential(nn.Linear(feat + c.cond_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, 1 + c.geo_dim))
        self.color_mlp = nn.Sequential(nn.Linear(c.geo_dim + c.cond_dim, c.hidden), nn.ReLU(),
                                       nn.Linear(c.hidden, 3 + int(c.uncertainty)))
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

    def code(self, motion: torch.Tensor, audio: torch.Tensor | None = None) -> torch.Tensor:
        """A frame's conditioning: motion codes [B, 52] standardised and clamped to the training
        range, then the encoded audio windows ``audio`` [B, W, A] when the field listens to audio.
        [B, 52 (+ audio_dim)]"""
        x = torch.minimum(torch.maximum(motion, self.motion_lo), self.motion_hi)
        x = (x - self.motion_mean) / self.motion_scale
        if self.audio is None:
            return x
        if audio is None:
            raise ValueError("this NeRF was fitted with audio features: conditioning.audio is required")
        return torch.cat([x, self.audio(audio)], -1)

    def forward(self, u: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Points ``u`` [M, 3] in the unit cube under conditioning ``code`` [1 or M, C] (:meth:`code`)
        -> density [M] (per cm), RGB [M, 3] and the points' expected error [M] (None without
        ``uncertainty``)."""
        feat = self.grid(u)
        cond = self.condition(torch.sigmoid(self.attention(feat)) * code)
        h = self.density_mlp(torch.cat([feat, cond], -1))
        sigma = F.softplus(h[:, 0])
        out = self.color_mlp(torch.cat([h[:, 1:], cond], -1))
        return sigma, torch.sigmoid(out[:, :3]), F.softplus(out[:, 3]) if out.shape[1] > 3 else None

    def density(self, u: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Density only (the colour MLP skipped). [M]"""
        feat = self.grid(u)
        cond = self.condition(torch.sigmoid(self.attention(feat)) * code)
        return F.softplus(self.density_mlp(torch.cat([feat, cond], -1))[:, 0])
