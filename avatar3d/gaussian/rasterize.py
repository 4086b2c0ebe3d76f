"""Gaussian splatting: cameras and the rasterizer, with a dense PyTorch path and a gsplat path.

World space is the canonical head space of a dataset (centimetres, head-centred); a frame's camera
is its tracked head pose, so the camera extrinsics (world -> camera) are ``[R | t]`` and the
intrinsics are the dataset's shared ``K`` (OpenCV convention, pixel centres at +0.5).

``rasterize`` computes the same function on both backends (gsplat's "classic" mode):

- projection: EWA splatting, ``cov2d = J W cov3d W^T J^T + eps2d * I`` with gsplat's clamp of
  ``x/z`` to 1.3x the field of view; Gaussians behind the near plane or off-screen are culled;
- per pixel: ``alpha_i = min(0.999, o_i * exp(-0.5 d^T conic_i d))`` (0 where below 1/255),
  composited front to back in depth order, ``C = sum_i c_i alpha_i T_i``,
  ``T_i = prod_{j<i} (1 - alpha_j)``, stopping before transmittance falls to 1e-4.

The dense backend bins Gaussians into tiles (like gsplat) and evaluates, per tile, every
(pixel, Gaussian) pair of that tile as one dense tensor, so autograd gives exact gradients. It is
fine for up to ~20k Gaussians at up to ~256^2 on a CPU. The gsplat backend runs on CUDA only and
is imported lazily.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F


Backend = Literal["auto", "dense", "gsplat"]

EPS2D = 0.3
NEAR_PLANE = 0.01
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


@dataclass(frozen=True)
class RasterResult:
    """One rendered view. ``rgb`` is premultiplied by alpha (composite as ``rgb + (1 - alpha) * bg``)."""

    rgb: torch.Tensor  # [H, W, D] (D = the colour channels given, usually 3)
    alpha: torch.Tensor  # [H, W, 1]
    means2d: torch.Tensor  # [N, 2] (dense) or [1, N, 2] (gsplat): projected centres in the graph
    radii: torch.Tensor  # [N] int, 0 for culled Gaussians

    def grad2d(self) -> torch.Tensor | None:
        """Gradient of the loss w.r.t. the projected centres, [N, 2] (after ``means2d.retain_grad()``
        and backward), or None."""
        g = self.means2d.grad
        return None if g is None else g.reshape(-1, 2)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of (not necessarily unit) quaternions in w, x, y, z order. [N, 4] -> [N, 3, 3]"""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(quats.shape[:-1] + (3, 3))


@dataclass(frozen=True)
class Projection:
    """Gaussians projected into one camera."""

    means2d: torch.Tensor  # [N, 2] pixels
    conics: torch.Tensor  # [N, 3] inverse 2D covariance (a, b, c): a dx^2 + 2 b dx dy + c dy^2
    depths: torch.Tensor  # [N] camera-space z
    radii: torch.Tensor  # [N, 2] int32 pixels, half-width and half-height of the bounding box; 0 = culled


def project(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    K: torch.Tensor,  # [3, 3]
    viewmat: torch.Tensor,  # [4, 4]
    width: int,
    height: int,
    eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE,
    opacities: torch.Tensor | None = None,  # [N]
) -> Projection:
    """EWA projection of 3D Gaussians (gsplat 1.5.3's pinhole model, in PyTorch). Bounding boxes
    as gsplat's: per axis ``ceil(extend * sqrt(cov2d_ii))`` pixels with ``extend = min(3.33,
    sqrt(2 log(255 o)))`` (the box of the region where alpha can reach 1/255) when ``opacities``
    are given, 3.33 otherwise; Gaussians with opacity below 1/255 are culled."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ R.T + t  # [N, 3]
    M = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3]
    covars = M @ M.transpose(-1, -2)  # [N, 3, 3]
    covars_c = R @ covars @ R.T  # [N, 3, 3]

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tx, ty, tz = means_c.unbind(-1)
    z = torch.where(tz.abs() < 1e-6, torch.full_like(tz, 1e-6), tz)
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    txc = z * torch.minimum(torch.maximum(tx / z, -lim_x_neg), lim_x_pos)
    tyc = z * torch.minimum(torch.maximum(ty / z, -lim_y_neg), lim_y_pos)
    zeros = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zeros, -fx * txc / (z * z), zeros, fy / z, -fy * tyc / (z * z)], dim=-1
    ).reshape(-1, 2, 3)  # [N, 2, 3]
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [N, 2, 2]
    a = cov2d[:, 0, 0] + eps2d
    b = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    c = cov2d[:, 1, 1] + eps2d
    det = (a * c - b * b).clamp(min=1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)  # [N, 3]
    means2d = torch.stack([fx * tx / z + cx, fy * ty / z + cy], dim=-1)  # [N, 2]

    with torch.no_grad():
        extend = torch.full_like(a, 3.33)
        valid = (a * c - b * b > 0) & (tz > near_plane)
        if opacities is not None:
            o = opacities.detach().to(a.dtype)
            valid &= o >= ALPHA_MIN
            extend = torch.sqrt(2.0 * torch.log((o / ALPHA_MIN).clamp(min=1.0))).clamp(max=3.33)
        r = torch.stack([torch.ceil(extend * torch.sqrt(a)), torch.ceil(extend * torch.sqrt(c))], -1)  # [N, 2]
        inside = (
            (means2d[:, 0] + r[:, 0] > 0)
            & (means2d[:, 0] - r[:, 0] < width)
            & (means2d[:, 1] + r[:, 1] > 0)
            & (means2d[:, 1] - r[:, 1] < height)
        )
        radii = torch.where((valid & inside)[:, None], r, torch.zeros_like(r)).to(torch.int32)
    return Projection(means2d, conics, tz, radii)


@torch.no_grad()
def _bin_tiles(
    means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, tile: int, tiles_x: int, tiles_y: int
) -> torch.Tensor:
    """Per tile, the indices of the Gaussians whose box (``radii`` [N, 2]) touches it, front to
    back, padded with N. [T, Kmax]"""
    N = means2d.shape[0]
    device = means2d.device
    r = radii.to(means2d.dtype)
    tmin = torch.floor((means2d - r) / tile).long()
    tmax = torch.ceil((means2d + r) / tile).long()
    tmin[:, 0].clamp_(0, tiles_x)
    tmax[:, 0].clamp_(0, tiles_x)
    tmin[:, 1].clamp_(0, tiles_y)
    tmax[:, 1].clamp_(0, tiles_y)
    span = tmax - tmin  # [N, 2]
    counts = span.prod(-1) * (radii > 0).all(-1)
    total = int(counts.sum())
    num_tiles = tiles_x * tiles_y
    if total == 0:
        return torch.full((num_tiles, 1), N, dtype=torch.long, device=device)
    gid = torch.repeat_interleave(torch.arange(N, device=device), counts)  # [I]
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - starts[gid]
    w = span[gid, 0]
    tile_id = (tmin[gid, 1] + local // w) * tiles_x + (tmin[gid, 0] + local % w)  # [I]
    rank = torch.empty(N, dtype=torch.long, device=device)
    rank[torch.argsort(depths, stable=True)] = torch.arange(N, device=device)
    order = torch.argsort(tile_id * N + rank[gid])
    tile_sorted, gid_sorted = tile_id[order], gid[order]
    per_tile = torch.bincount(tile_sorted, minlength=num_tiles)
    offsets = torch.cumsum(per_tile, 0) - per_tile
    pos = torch.arange(total, device=device) - offsets[tile_sorted]
    table = torch.full((num_tiles, max(int(per_tile.max()), 1)), N, dtype=torch.long, device=device)
    table[tile_sorted, pos] = gid_sorted
    return table


def _composite_tiles(
    table: torch.Tensor,  # [Tc, K] Gaussian ids (N = padding)
    pix: torch.Tensor,  # [Tc, P, 2] pixel centres
    means2d: torch.Tensor,  # [N + 1, 2] (last row: padding)
    conics: torch.Tensor,  # [N + 1, 3]
    opacities: torch.Tensor,  # [N + 1]
    colors: torch.Tensor,  # [N + 1, D]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back compositing of every (pixel, Gaussian) pair of a set of tiles. -> [Tc, P, D], [Tc, P]"""
    m = means2d[table]  # [Tc, K, 2]
    q = conics[table]  # [Tc, K, 3]
    d = pix[:, :, None, :] - m[:, None, :, :]  # [Tc, P, K, 2]
    dx, dy = d[..., 0], d[..., 1]
    sigma = 0.5 * (q[:, None, :, 0] * dx * dx + q[:, None, :, 2] * dy * dy) + q[:, None, :, 1] * dx * dy
    alpha = (opacities[table][:, None, :] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)  # [Tc, P, K]
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    log1m = torch.log1p(-alpha)
    log_t = torch.cumsum(log1m, dim=-1)  # log transmittance after each Gaussian
    keep = log_t > math.log(T_MIN)  # gsplat stops before T would fall to T_MIN
    weights = alpha * torch.exp(log_t - log1m) * keep  # alpha_i * T_i
    rgb = torch.einsum("tpk,tkd->tpd", weights, colors[table])
    return rgb, weights.sum(-1)


def rasterize_dense(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    K: torch.Tensor,
    viewmat: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = 8,
    max_chunk_elements: int = 1 << 22,
) -> RasterResult:
    """The PyTorch rasterizer (see module docstring). ``tile_size=0`` uses one tile for the image."""
    proj = project(means, quats, scales, K, viewmat, width, height, opacities=opacities)
    tile = tile_size if tile_size > 0 else max(width, height)
    tiles_x, tiles_y = math.ceil(width / tile), math.ceil(height / tile)
    table = _bin_tiles(proj.means2d, proj.radii, proj.depths, tile, tiles_x, tiles_y)  # [T, Kmax]
    dev, dt = means.device, means.dtype
    pad = lambda x: torch.cat([x, torch.zeros_like(x[:1])], 0)  # noqa: E731 (row N = padding)
    m2d, con, op, col = pad(proj.means2d), pad(proj.conics), pad(opacities), pad(colors)

    ys, xs = torch.meshgrid(torch.arange(tile, device=dev), torch.arange(tile, device=dev), indexing="ij")
    local = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).to(dt) + 0.5  # [P, 2]
    ty, tx = torch.meshgrid(torch.arange(tiles_y, device=dev), torch.arange(tiles_x, device=dev), indexing="ij")
    origin = torch.stack([tx.reshape(-1), ty.reshape(-1)], -1).to(dt) * tile  # [T, 2]

    # Process tiles in chunks, busiest tiles together, so the padding of each chunk stays small.
    occupancy = (table < means.shape[0]).sum(1)
    order = torch.argsort(occupancy, descending=True, stable=True)
    P = tile * tile
    rgb_tiles = torch.zeros(tiles_x * tiles_y, P, colors.shape[1], device=dev, dtype=dt)
    alpha_tiles = torch.zeros(tiles_x * tiles_y, P, device=dev, dtype=dt)
    occ = occupancy[order].tolist()
    start = 0
    while start < len(order):
        kmax = max(occ[start], 1)
        # a chunk: the next tiles whose occupancy is close to kmax, within the element budget
        stop = start + 1
        limit = max(1, max_chunk_elements // (P * kmax))
        while stop < len(order) and stop - start < limit and occ[stop] >= 0.7 * kmax:
            stop += 1
        ids = order[start:stop]
        if occ[start] > 0:
            rgb_c, alpha_c = _composite_tiles(
                table[ids, :kmax], origin[ids][:, None, :] + local[None], m2d, con, op, col
            )
            rgb_tiles = rgb_tiles.index_copy(0, ids, rgb_c)
            alpha_tiles = alpha_tiles.index_copy(0, ids, alpha_c)
        start = stop

    def untile(x: torch.Tensor) -> torch.Tensor:  # [T, P, D] -> [H, W, D]
        D = x.shape[-1]
        x = x.reshape(tiles_y, tiles_x, tile, tile, D).permute(0, 2, 1, 3, 4)
        return x.reshape(tiles_y * tile, tiles_x * tile, D)[:height, :width]

    return RasterResult(untile(rgb_tiles), untile(alpha_tiles[..., None]), proj.means2d, proj.radii.max(-1).values)


def rasterize_gsplat(
    means, quats, scales, opacities, colors, K, viewmat, width: int, height: int
) -> RasterResult:
    """gsplat's CUDA rasterizer (classic mode, unpacked), same conventions as the dense path."""
    try:
        import gsplat
    except ImportError:
        from avatar3d.errors import UserError

        raise UserError("backend 'gsplat' needs the gsplat package (pip install gsplat) on a CUDA machine") from None
    rgb, alpha, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmat[None], K[None], width, height,
        near_plane=NEAR_PLANE, eps2d=EPS2D, packed=False, rasterize_mode="classic",
    )
    radii = meta["radii"][0]
    if radii.dim() == 2:  # newer gsplat: per-axis radii [N, 2]
        radii = radii.max(-1).values
    return RasterResult(rgb[0], alpha[0], meta["means2d"], radii)


GSPLAT_VERSION = "1.5.3"  # the gsplat the code was checked against (setup.py's gpu extra pins it)
log = logging.getLogger(__name__)


@functools.cache
def gsplat_unavailable_reason(device_index: int) -> str | None:
    """None when gsplat rasterizes on CUDA device ``device_index``, else a one-line reason. Decided
    once per process and device: the import, then one tiny rasterization (gsplat builds its
    kernels on its first call, which fails without nvcc or ninja)."""
    try:
        import gsplat
    except ImportError as exc:
        return f"gsplat is not installed ({exc}; pip install -e '.[gpu]')"
    try:
        dev = torch.device("cuda", device_index)
        one = torch.ones(1, device=dev)
        rasterize_gsplat(
            torch.tensor([[0.0, 0.0, 5.0]], device=dev), torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=dev),
            torch.full((1, 3), 0.1, device=dev), 0.5 * one, torch.ones(1, 3, device=dev),
            torch.tensor([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]], device=dev), torch.eye(4, device=dev), 8, 8,
        )
    except Exception as exc:  # noqa: BLE001 - any failure of the first call means: use the dense path
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"gsplat {getattr(gsplat, '__version__', '?')} could not rasterize: {first[:160]}"
    return None


@functools.cache
def _warn_dense(reason: str) -> None:
    log.warning("avatar3d: rendering on CUDA with the dense PyTorch rasterizer (slow): %s", reason)


def resolve_backend(backend: Backend, device: torch.device) -> str:
    """'auto' -> gsplat on CUDA when it works there (checked once, :func:`gsplat_unavailable_reason`;
    when it does not, a warning says why, once), else dense."""
    if backend != "auto":
        return backend
    device = torch.device(device)
    if device.type != "cuda":
        return "dense"
    reason = gsplat_unavailable_reason(device.index if device.index is not None else torch.cuda.current_device())
    if reason is None:
        return "gsplat"
    _warn_dense(reason)
    return "dense"


def rasterize_full(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4] w, x, y, z (normalised inside)
    scales: torch.Tensor,  # [N, 3] standard deviations (not log)
    opacities: torch.Tensor,  # [N] in [0, 1]
    colors: torch.Tensor,  # [N, D]
    K: torch.Tensor,  # [3, 3]
    viewmat: torch.Tensor,  # [4, 4]
    width: int,
    height: int,
    backend: Backend = "auto",
) -> RasterResult:
    """Render one view and keep what densification needs (projected means, radii)."""
    which = resolve_backend(backend, means.device)
    if which == "gsplat":
        return rasterize_gsplat(means, quats, scales, opacities, colors, K, viewmat, width, height)
    if which == "dense":
        return rasterize_dense(means, quats, scales, opacities, colors, K, viewmat, width, height)
    raise ValueError(f"unknown rasterizer backend {backend!r}")


def rasterize(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [N, D]
    K: torch.Tensor,  # [3, 3]
    viewmat: torch.Tensor,  # [4, 4]
    width: int,
    height: int,
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render Gaussians: ``(rgb [H, W, D] premultiplied, alpha [H, W, 1])``."""
    out = rasterize_full(means, quats, scales, opacities, colors, K, viewmat, width, height, backend)
    return out.rgb, out.alpha
