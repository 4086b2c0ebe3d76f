"""Deformation fields that move the canonical Gaussians with the per-frame conditioning.

- Face branch (:class:`FaceDeformer`): a tri-plane hash grid (plus a low-frequency positional
  encoding, which gives the field spatial structure from the first step) encodes each Gaussian's
  normalised canonical position; a spatial attention vector computed from that encoding gates the
  conditioning features (region attention: each part of the face listens to the channels of the
  motion/audio code that move it); a small MLP maps [encoding, gated conditioning] to offsets of
  position, rotation (quaternion residual) and log-scale. The last layer starts at zero, so the
  untrained field is the identity.
- Mouth branch (:class:`MouthDeformer`): the inside of the mouth (teeth, tongue, cavity) moves
  rigidly with the jaw. Each mouth Gaussian carries a small linear motion basis (a per-Gaussian
  attribute ``motion_basis`` [N, K*3] in its parameter dict, so densify/prune carry it); its
  offset is ``sum_k code_k * basis_k`` with ``code`` = jaw/mouth blendshapes (jawOpen first).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from avatar3d.core.audio_window import AudioWindowEncoder
from avatar3d.core.motion import MotionStats
from avatar3d.core.vocab import BLENDSHAPE_NAMES, MOUTH_INTERIOR_CHANNELS, SPEECH_INDEX, blendshape_index


LOWER_FACE_SOFT_CM = 0.5  # width of the blend between lower and upper face (see FaceDeformer.upper_face)
POS_FREQS = 3  # low-frequency sin/cos of the position beside the hash grid (smooth, immediate)


def positional_encoding(x: torch.Tensor) -> torch.Tensor:
    """x and sin/cos of x at frequencies pi * 2**k. [N, 3] -> [N, 3 + 6 * POS_FREQS]"""
    freqs = torch.pi * 2.0 ** torch.arange(POS_FREQS, device=x.device, dtype=x.dtype)  # [F]
    ang = (x[:, :, None] * freqs).reshape(x.shape[0], -1)  # [N, 3F]
    return torch.cat([x, torch.sin(ang), torch.cos(ang)], dim=-1)


@dataclass(frozen=True)
class DeformConfig:
    """Size of the face deformation field."""

    num_levels: int = 16
    """Hash-grid levels per plane."""
    features_per_level: int = 2
    """Features per level."""
    log2_table_size: int = 17
    """log2 of the hash table size per level."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    max_resolution: int = 1024
    """Finest grid resolution (over the head box)."""
    hidden: int = 64
    """Width of the MLP."""
    cond_dim: int = 32
    """Width of the conditioning features that the region attention gates."""
    audio_hidden: int = 32
    """Width of the per-frame audio feature encoder (used when audio features are given)."""


@dataclass(frozen=True)
class Deformation:
    """Per-Gaussian offsets for a batch of frames."""

    d_means: torch.Tensor  # [B, N, 3] cm
    d_quats: torch.Tensor  # [B, N, 4] residual added to the canonical quaternion
    d_log_scales: torch.Tensor  # [B, N, 3]


class FaceDeformer(nn.Module):
    """Hash-grid + region-attention MLP deformation of the face Gaussians (see module docstring)."""

    def __init__(
        self,
        config: DeformConfig,
        audio_shape: tuple[int, int] | None,  # (W, A): window length and feature size, or None
        box_min: torch.Tensor,  # [3] head box in canonical space (cm)
        box_max: torch.Tensor,  # [3]
        motion_stats: MotionStats,  # how the 52-channel motion code is read (from the training frames)
        lower_face_y: float,  # canonical y (cm, growing towards the chin) below which only speech channels act
    ):
        super().__init__()
        from avatar3d.cuda_ext import TriPlaneHashGrid

        self.config = config
        self.grid = TriPlaneHashGrid(
            num_levels=config.num_levels,
            features_per_level=config.features_per_level,
            log2_table_size=config.log2_table_size,
            base_resolution=config.base_resolution,
            max_resolution=config.max_resolution,
        )
        self.register_buffer("box_min", box_min.float().clone())
        self.register_buffer("box_max", box_max.float().clone())
        C = config.cond_dim
        motion_dim = len(BLENDSHAPE_NAMES)
        if any(x.shape != (motion_dim,) for x in (motion_stats.mean, motion_stats.scale, motion_stats.lo, motion_stats.hi)):
            raise ValueError(f"motion statistics must be [{motion_dim}] each (the blendshapes of BLENDSHAPE_NAMES)")
        # per-channel standardisation of the motion code (from the training frames): blendshapes
        # differ in range by 100x, and a mouth channel like jawOpen (0-0.3) would otherwise be
        # drowned by the large, mostly irrelevant eye channels
        self.register_buffer("motion_mean", motion_stats.mean.float().clone())
        self.register_buffer("motion_scale", motion_stats.scale.float().clone())
        # the range of codes the field is fitted on (raw blendshape units; +-inf: not clamped)
        self.register_buffer("motion_lo", motion_stats.lo.float().clone())
        self.register_buffer("motion_hi", motion_stats.hi.float().clone())
        self.motion_net = nn.Sequential(nn.Linear(motion_dim, C), nn.LeakyReLU(0.1), nn.Linear(C, C))
        # The channels the audio prior drives (jaw, lips, cheeks) and the rest (eyes, brows, nose)
        # are encoded apart, and the rest reach only the face above ``lower_face_y`` (canonical
        # y grows towards the chin; fit puts it at the base of the nose): at render time the two
        # come from different frames (prior vs pose trajectory), so the lips must not read their
        # shape from the eye/brow channels.
        speech = torch.zeros(motion_dim, dtype=torch.bool)
        speech[list(SPEECH_INDEX)] = True
        self.register_buffer("speech_channels", speech)
        self.register_buffer("lower_face_y", torch.tensor(float(lower_face_y)))
        self.other_net = nn.Sequential(nn.Linear(motion_dim, C), nn.LeakyReLU(0.1), nn.Linear(C, C))
        self.audio = None if audio_shape is None else AudioWindowEncoder(audio_shape[1], config.audio_hidden, C)
        enc_dim = self.grid.out_dim + 3 + 6 * POS_FREQS
        self.attention = nn.Linear(enc_dim, C)
        self.mlp = nn.Sequential(
            nn.Linear(enc_dim + C, config.hidden),
            nn.LeakyReLU(0.1),
            nn.Linear(config.hidden, config.hidden),
            nn.LeakyReLU(0.1),
            nn.Linear(config.hidden, 10),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The hash grid's embeddings and every other weight (the MLPs), which train at
        different learning rates."""
        grid = [p for p in self.grid.parameters()]
        ids = {id(p) for p in grid}
        return grid, [p for p in self.parameters() if id(p) not in ids]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise every weight from ``generator`` (modules draw from the global RNG otherwise)."""
        from avatar3d.cuda_ext.hashgrid import INIT_RANGE

        for p in self.grid.parameters():
            nn.init.uniform_(p, -INIT_RANGE, INIT_RANGE, generator=generator)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(m.weight.shape[1])
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def upper_face(self, means: torch.Tensor) -> torch.Tensor:
        """How much each canonical position [N, 3] belongs to the upper face, in [0, 1]. [N]"""
        return torch.sigmoid((self.lower_face_y - means[:, 1]) / LOWER_FACE_SOFT_CM)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Canonical positions to [0, 1] in the head box. [N, 3] -> [N, 3]"""
        return ((x - self.box_min) / (self.box_max - self.box_min)).clamp(0.0, 1.0)

    def condition(self, motion: torch.Tensor, audio: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning features of the speech channels (plus audio) and of the other channels.
        motion [B, M], audio [B, W, A] or None -> ([B, C], [B, C])"""
        motion = torch.minimum(torch.maximum(motion, self.motion_lo), self.motion_hi)
        z = (motion - self.motion_mean) / self.motion_scale
        speech = self.speech_channels.to(z.dtype)
        c = self.motion_net(z * speech)
        other = self.other_net(z * (1 - speech))
        if self.audio is not None:
            if audio is None:
                raise ValueError("this avatar was fitted with audio features: conditioning.audio is required")
            c = c + self.audio(audio)
        return c, other

    def forward(self, means: torch.Tensor, motion: torch.Tensor, audio: torch.Tensor | None) -> Deformation:
        """means [N, 3] canonical (not differentiated through), motion [B, M], audio [B, W, A]."""
        x = self.normalise(means.detach())  # [N, 3]
        enc = torch.cat([self.grid(x), positional_encoding(x)], dim=-1)  # [N, E]
        attn = torch.sigmoid(self.attention(enc))  # [N, C] region attention
        speech, other = self.condition(motion, audio)  # [B, C] each
        upper = self.upper_face(means.detach())  # [N]
        B, N = speech.shape[0], enc.shape[0]
        gated = attn[None] * (speech[:, None, :] + upper[None, :, None] * other[:, None, :])  # [B, N, C]
        out = self.mlp(torch.cat([enc[None].expand(B, N, -1), gated], dim=-1))  # [B, N, 10]
        return Deformation(out[..., :3], out[..., 3:7], out[..., 7:10])


class MouthDeformer(nn.Module):
    """Linear jaw-driven motion of the inside-of-the-mouth Gaussians (see module docstring)."""

    def __init__(self):
        super().__init__()
        self.register_buffer(
            "code_index", torch.tensor([blendshape_index(n) for n in MOUTH_INTERIOR_CHANNELS], dtype=torch.long)
        )

    @property
    def code_dim(self) -> int:
        return len(MOUTH_INTERIOR_CHANNELS)

    def forward(self, basis: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """basis [N, K*3], motion [B, 52] blendshapes -> position offsets [B, N, 3]."""
        code = motion[:, self.code_index]  # [B, K]
        N = basis.shape[0]
        return torch.einsum("bk,nkd->bnd", code, basis.reshape(N, -1, 3))
