"""A fitted Gaussian avatar baked into functions of the motion code a browser can evaluate, to draw without the field.

The face field moves every face Gaussian's mean, quaternion and log-scale as a function of the
motion code (hash grid + region-attention MLPs, :class:`avatar3d.gaussian.deform.FaceDeformer`).
The bake fits, for each face Gaussian, an affine function of the code clamped to the field's
training range ``x = clamp(code, lo, hi)`` [52], plus a few shared directions of what that misses:

    offsets [N, 10] (3 mean, 4 quaternion, 3 log-scale) = W[52] . x + W[bias] + sum_j r_j(x) basis_j

The affine part is fitted by least squares over codes drawn from the training clip's distribution
(:func:`bake_codes`), and its terms that barely move a Gaussian are dropped (:func:`prune`: a
channel's term whose largest effect over the clamp range is under a threshold). The field is not
linear in the code everywhere (pressed lips, a collar under a turning chin): the rest, the
*residual*, is read off the same codes and kept along its ``rank`` principal directions
``basis`` [rank, N, 10], each weighted per frame by a small network of the code
(:class:`ResidualNet`, 52 -> hidden -> hidden -> rank, SiLU), fitted to the residual's
projections (:func:`fit_residual`). The mouth branch's motion is linear in the code already
(:class:`avatar3d.gaussian.deform.MouthDeformer`) and is kept exactly.

:class:`BakedFaceDeformer` is the baked field: it takes the place of the avatar's ``face_deform``
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

    samples: int = 3072
    """Motion codes the bake is fitted on (training codes, mixes, one-channel excursions; 1536
    left Obama small's head PSNR 0.17 dB under the full avatar's, 3072 0.08: BENCHMARKS.md)."""
    prune_means_cm: float = 0.008
    """Drop a channel's term for a Gaussian's mean when it moves it less than this (cm) over the clamp range."""
    prune_quats: float = 0.008
    """... its quaternion (unnormalised components) less than this."""
    prune_log_scales: float = 0.008
    """... its log-scales less than this."""
    residual_rank: int = 8
    """Shared directions of what the affine terms miss, weighted per frame by a small network of the code (0: affine only)."""
    residual_hidden: int = 64
    """Width of that network's two hidden layers."""
    residual_steps: int = 3000
    """Adam steps fitting that network."""
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


def _clamped_with_bias(codes: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """[clamp(codes, lo, hi), 1] [K, 53]"""
    return torch.cat([torch.minimum(torch.maximum(codes, lo), hi), torch.ones(codes.shape[0], 1)], 1)


@torch.no_grad()
def _offset_batches(deformer, means: torch.Tensor, codes: torch.Tensor, batch: int = 32):
    """The face offsets ``deformer`` gives the Gaussians at ``means`` [N, 3] for ``codes`` [K, 52],
    ``batch`` codes at a time: yields (codes [b, 52] on the CPU, offsets [b, N * 10] float64)."""
    for s in range(0, codes.shape[0], batch):
        c = codes[s : s + batch]
        d = deformer(means, c.to(means.device), None)
        yield c.cpu(), torch.cat([d.d_means, d.d_quats, d.d_log_scales], -1).reshape(c.shape[0], -1).double().cpu()


@torch.no_grad()
def fit_linear(deformer, means: torch.Tensor, codes: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Least-squares weights [53, N, 10] (52 channels, then the bias) of the offsets ``deformer``
    gives the Gaussians at ``means`` [N, 3] over ``codes`` [K, 52] (already clamped), accumulated
    batch by batch (memory bounded by ``batch`` x N x 10)."""
    lo, hi = clamp_range(deformer)
    N = means.shape[0]
    xtx = torch.zeros(53, 53, dtype=torch.float64)
    xty = torch.zeros(53, N * 10, dtype=torch.float64)
    for c, y in _offset_batches(deformer, means, codes, batch):
        x = _clamped_with_bias(c, lo, hi).double()
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


RESIDUAL_DIRECTION_CODES = 512  # codes whose residuals give its principal directions (memory: 512 x N x 10 floats)


class ResidualNet(nn.Module):
    """The weights of the residual's directions for a code: clamped code [B, 52] -> [B, rank]
    (Linear 52 -> hidden, SiLU, Linear hidden -> hidden, SiLU, Linear hidden -> rank; the
    standardisation of its inputs and outputs folded into the first and last layers)."""

    def __init__(self, rank: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(52, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                    nn.Linear(hidden, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @torch.no_grad()
    def fold(self, in_mean: torch.Tensor, in_scale: torch.Tensor, out_scale: torch.Tensor) -> None:
        """Make the net trained on (x - in_mean) / in_scale with targets / out_scale take x and give the targets."""
        first, last = self.layers[0], self.layers[-1]
        first.weight /= in_scale
        first.bias -= first.weight @ in_mean
        last.weight *= out_scale[:, None]
        last.bias *= out_scale


def fit_residual(deformer, means: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor, config: BakeConfig,
                 generator: torch.Generator) -> tuple[ResidualNet, torch.Tensor, float]:
    """What the affine ``weights`` [53, N, 10] miss of ``deformer``'s offsets over ``codes`` [K, 52]
    (clamped), along ``config.residual_rank`` directions: the net that weights them, the directions
    [rank, N, 10], and the net's relative error on the codes' weights. The directions are the top
    principal ones of the residual over the first ``RESIDUAL_DIRECTION_CODES`` codes; each code's
    projections on them train the net (Adam, mean squared error, standardised); the directions are
    then refitted by least squares to what the net gives, so its errors are the basis's to absorb."""
    lo, hi = clamp_range(deformer)
    k, N = config.residual_rank, means.shape[0]
    w = weights.reshape(53, -1).double()
    some = codes[:RESIDUAL_DIRECTION_CODES]
    r = torch.cat([(y - _clamped_with_bias(c, lo, hi).double() @ w).float()
                   for c, y in _offset_batches(deformer, means, some)])  # [512, N * 10]
    evals, evecs = torch.linalg.eigh((r @ r.T).double())  # the residual's principal directions, through its Gram matrix
    top = evecs[:, -k:].flip(1) / evals[-k:].flip(0).clamp(min=1e-30).sqrt()
    directions = (r.T @ top.float()).T.double()  # [k, N * 10], orthonormal
    del r
    proj = torch.cat([(y - _clamped_with_bias(c, lo, hi).double() @ w) @ directions.T
                      for c, y in _offset_batches(deformer, means, codes)]).float()  # [K, k]
    x = torch.minimum(torch.maximum(codes.cpu(), lo), hi)
    in_mean, in_scale = x.mean(0), x.std(0).clamp(min=0.02)
    out_scale = proj.std(0).clamp(min=1e-8)
    z, target = (x - in_mean) / in_scale, proj / out_scale
    net = ResidualNet(k, config.residual_hidden)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features**0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound)
                m.bias.copy_((torch.rand(m.bias.shape, generator=generator) * 2 - 1) * bound)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(config.residual_steps):
        if step == 2 * config.residual_steps // 3:
            opt.param_groups[0]["lr"] = 1e-3
        i = torch.randint(len(z), (256,), generator=generator)
        loss = (net(z[i]) - target[i]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.fold(in_mean, in_scale, out_scale)
    with torch.no_grad():
        g = net(x).double()  # [K, k]
        error = float((g - proj.double()).pow(2).sum() / proj.double().pow(2).sum().clamp(min=1e-30))
        gtr = torch.zeros(k, N * 10, dtype=torch.float64)
        done = 0
        for c, y in _offset_batches(deformer, means, codes):
            gtr += g[done : done + len(c)].T @ (y - _clamped_with_bias(c, lo, hi).double() @ w)
            done += len(c)
        gtg = g.T @ g
        basis = torch.linalg.solve(gtg + 1e-6 * torch.eye(k, dtype=torch.float64) * gtg.diagonal().mean(), gtr)
    return net.eval(), basis.float().reshape(k, N, 10), error


class BakedFaceDeformer(nn.Module):
    """The baked face field: offsets = weights . [clamp(code, lo, hi), 1] + residual(clamped code) . basis
    (see module docstring; ``residual`` None and ``basis`` [0, N, 10] for an affine bake)."""

    def __init__(self, weights: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 residual: ResidualNet | None = None, basis: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weights", weights)  # [53, N, 10]
        self.register_buffer("lo", lo)  # [52]
        self.register_buffer("hi", hi)
        self.residual = residual
        self.register_buffer("basis", basis if basis is not None else torch.zeros(0, weights.shape[1], 10))  # [k, N, 10]

    def forward(self, means: torch.Tensor, motion: torch.Tensor, audio: torch.Tensor | None) -> Deformation:
        """means [N, 3] (unused: the weights are per Gaussian), motion [B, 52] -> Deformation."""
        if means.shape[0] != self.weights.shape[1]:
            raise ValueError(f"baked for {self.weights.shape[1]} Gaussians, given {means.shape[0]}")
        x = torch.minimum(torch.maximum(motion, self.lo), self.hi)
        out = torch.einsum("bk,knd->bnd", torch.cat([x, torch.ones_like(x[:, :1])], 1), self.weights)  # [B, N, 10]
        if self.residual is not None:
            out = out + torch.einsum("bk,knd->bnd", self.residual(x), self.basis)
        return Deformation(out[..., :3], out[..., 3:7], out[..., 7:10])


def bake_avatar(avatar, train_codes: torch.Tensor, config: BakeConfig = BakeConfig()) -> tuple[object, dict]:
    """A copy of the Gaussian ``avatar`` whose face field is baked (:class:`BakedFaceDeformer`)
    from codes like ``train_codes`` [T, 52], and a summary (samples, share of terms kept, the
    residual's rank and its net's relative error)."""
    if avatar.audio_features:
        raise UserError(f"this avatar listens to audio features {avatar.audio_features!r} besides the motion "
                        "code; only motion-only avatars can be baked (fit without --params.audio-features)")
    deformer = avatar.face_deform
    lo, hi = clamp_range(deformer)
    gen = torch.Generator().manual_seed(config.seed)
    codes = bake_codes(train_codes.float().cpu(), lo, hi, config.samples, gen)
    means = avatar.face.means.detach()
    weights = fit_linear(deformer, means, codes)
    weights, kept = prune(weights, lo, hi, config)
    residual, basis, error = None, None, 0.0
    if config.residual_rank > 0:
        residual, basis, error = fit_residual(deformer, means, codes, weights, config, gen)
    baked = copy.deepcopy(avatar)
    baked.face_deform = BakedFaceDeformer(weights, lo, hi, residual, basis).to(means.device)
    return baked, {"samples": config.samples, "kept": kept, "num_face": int(weights.shape[1]),
                   "residual": {"rank": config.residual_rank, "net_error": round(error, 5)}}
