"""A fitted Gaussian avatar baked into linear functions of the motion code, to draw without networks.

The face field moves every face Gaussian's mean, quaternion and log-scale as a function of the
motion code (hash grid + region-attention MLPs, :class:`avatar3d.gaussian.deform.FaceDeformer`).
The bake fits, for each face Gaussian, an affine function of the code clamped to the field's
training range ``x = clamp(code, lo, hi)`` [52]:

    offsets [10] (3 mean, 4 quaternion, 3 log-scale) = W[52] . x + W[bias]

by least squares over codes drawn from the training clip's distribution (:func:`bake_codes`),
then drops the terms that barely move a Gaussian (:func:`prune`: a channel's term whose largest
effect over the clamp range is under a threshold). The mouth branch's motion is linear in the code
already (:class:`avatar3d.gaussian.deform.MouthDeformer`) and is kept exactly.

:class:`LinearFaceDeformer` is the baked field: it takes the place of the avatar's ``face_deform``
(same call, same :class:`~avatar3d.gaussian.deform.Deformation`), so a baked avatar draws with the
same code and rasterizer as the fitted one (:func:`bake_avatar`), which is how the bake's cost is
measured (``bench/bake.py``). Avatars that listen to audio features besides the code cannot be
baked (the audio is not a code).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from avatar3d.errors import UserError
from avatar3d.gaussian.deform import Deformation

OFFSETS = (("means", 3), ("quats", 4), ("log_scales", 3))  # the face deformation's outputs, in order


@dataclass(frozen=True)
class BakeConfig:
    """How a bake is fitted and pruned."""

    samples: int = 1536
    """Motion codes the linear model is fitted on (training codes, mixes, one-channel excursions)."""
    prune_means_cm: float = 0.008
    """Drop a channel's term for a Gaussian's mean when it moves it less than this (cm) over the clamp range."""
    prune_quats: float = 0.008
    """... its quaternion (unnormalised components) less than this."""
    prune_log_scales: float = 0.008
    """... its log-scales less than this."""
    seed: int = 0


def bake_codes(train_codes: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n: int,
               generator: torch.Generator) -> torch.Tensor:
    """``n`` motion codes [n, 52] from the training frames' codes ``train_codes`` [T, 52]: a third
    the codes themselves (drawn with replacement), a third mixes of two of them, a third a
    training code with one channel pushed to an end of the clamp range ``lo``..``hi`` [52]."""
    T = train_codes.shape[0]
    a = train_codes[torch.randint(T, (n,), generator=generator)]
    b = train_codes[torch.randint(T, (n,), generator=generator)]
    t = torch.rand(n, 1, generator=generator)
    codes = a.clone()
    third = n // 3
    codes[third : 2 * third] = (t * a + (1 - t) * b)[third : 2 * third]
    k = torch.randint(train_codes.shape[1], (n - 2 * third,), generator=generator)
    end = torch.where(torch.rand(n - 2 * third, generator=generator) < 0.5, lo[k], hi[k])
    codes[2 * third :, :][torch.arange(n - 2 * third), k] = end
    return torch.minimum(torch.maximum(codes, lo), hi)


def clamp_range(deformer) -> tuple[torch.Tensor, torch.Tensor]:
    """The clamp range ``lo``, ``hi`` [52] of a face deformer, with unclamped channels (runs fitted
    before the clamp existed) bounded by 0..1, the blendshapes' own range."""
    lo = torch.where(torch.isfinite(deformer.motion_lo), deformer.motion_lo, torch.zeros_like(deformer.motion_lo))
    hi = torch.where(torch.isfinite(deformer.motion_hi), deformer.motion_hi, torch.ones_like(deformer.motion_hi))
    return lo.float(), hi.float()


@torch.no_grad()
def fit_linear(deformer, means: torch.Tensor, codes: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Least-squares weights [53, N, 10] (52 channels, then the bias) of the offsets ``deformer``
    gives the Gaussians at ``means`` [N, 3] over ``codes`` [K, 52] (already clamped), accumulated
    batch by batch (memory bounded by ``batch`` x N x 10)."""
    lo, hi = clamp_range(deformer)
    N = means.shape[0]
    xtx = torch.zeros(53, 53, dtype=torch.float64)
    xty = torch.zeros(53, N * 10, dtype=torch.float64)
    for s in range(0, codes.shape[0], batch):
        c = codes[s : s + batch].to(means.device)
        d = deformer(means, c, None)
        y = torch.cat([d.d_means, d.d_quats, d.d_log_scales], -1).reshape(c.shape[0], -1).double().cpu()
        x = torch.cat([torch.minimum(torch.maximum(c.cpu(), lo), hi), torch.ones(c.shape[0], 1)], 1).double()
        xtx += x.T @ x
        xty += x.T @ y
    ridge = 1e-6 * torch.eye(53, dtype=torch.float64) * xtx.diagonal().mean()
    w = torch.linalg.solve(xtx + ridge, xty)
    return w.float().reshape(53, N, 10)


def prune(weights: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, config: BakeConfig) -> tuple[torch.Tensor, dict]:
    """Zero the channel terms of ``weights`` [53, N, 10] whose largest effect over the clamp range
    (|w| x (hi - lo), over an offset's components) is under ``config``'s thresholds; the bias is
    kept. Returns the pruned weights and the share of channel terms kept per offset."""
    w = weights.clone()
    span = (hi - lo).clamp(min=0)[:, None]  # [52, 1]
    limits = {"means": config.prune_means_cm, "quats": config.prune_quats, "log_scales": config.prune_log_scales}
    kept, start = {}, 0
    for name, dim in OFFSETS:
        part = w[:52, :, start : start + dim]  # [52, N, dim]
        effect = part.abs().amax(-1) * span  # [52, N]
        keep = effect >= limits[name]
        part *= keep[..., None]
        kept[name] = float(keep.float().mean())
        start += dim
    return w, kept


class LinearFaceDeformer(nn.Module):
    """The baked face field: offsets = weights . [clamp(code, lo, hi), 1] (see module docstring)."""

    def __init__(self, weights: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights)  # [53, N, 10]
        self.register_buffer("lo", lo)  # [52]
        self.register_buffer("hi", hi)

    def forward(self, means: torch.Tensor, motion: torch.Tensor, audio: torch.Tensor | None) -> Deformation:
        """means [N, 3] (unused: the weights are per Gaussian), motion [B, 52] -> Deformation."""
        if means.shape[0] != self.weights.shape[1]:
            raise ValueError(f"baked for {self.weights.shape[1]} Gaussians, given {means.shape[0]}")
        x = torch.minimum(torch.maximum(motion, self.lo), self.hi)
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)  # [B, 53]
        out = torch.einsum("bk,knd->bnd", x, self.weights)  # [B, N, 10]
        return Deformation(out[..., :3], out[..., 3:7], out[..., 7:10])


def bake_avatar(avatar, train_codes: torch.Tensor, config: BakeConfig = BakeConfig()) -> tuple[object, dict]:
    """A copy of the Gaussian ``avatar`` whose face field is baked (:class:`LinearFaceDeformer`)
    from codes like ``train_codes`` [T, 52], and a summary (samples, share of terms kept)."""
    if avatar.audio_features:
        raise UserError(f"this avatar listens to audio features {avatar.audio_features!r} besides the motion "
                        "code; only motion-only avatars can be baked (fit without --params.audio-features)")
    deformer = avatar.face_deform
    lo, hi = clamp_range(deformer)
    gen = torch.Generator().manual_seed(config.seed)
    codes = bake_codes(train_codes.float().cpu(), lo, hi, config.samples, gen)
    weights = fit_linear(deformer, avatar.face.means.detach(), codes)
    weights, kept = prune(weights, lo, hi, config)
    baked = copy.deepcopy(avatar)
    baked.face_deform = LinearFaceDeformer(weights, lo, hi).to(avatar.face.means.device)
    return baked, {"samples": config.samples, "kept": kept, "num_face": int(weights.shape[1])}
