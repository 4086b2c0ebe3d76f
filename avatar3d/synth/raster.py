"""A small vectorised triangle rasterizer (PyTorch, any device) for the synthetic subject.

Z-buffered, back-face culled, perspective-correct texture and normal interpolation, an alpha test
on a texture channel, and a label per triangle. No anti-aliasing: every pixel belongs to exactly
one triangle or to the background, so the label map is the exact ground truth of the picture.

Conventions: camera space is OpenCV (x right, y down, z forward); a pixel (i, j) has its centre at
(j + 0.5, i + 0.5). Triangles are front-facing when their vertices run counter-clockwise as seen
from outside, i.e. ``(v1 - v0) x (v2 - v0)`` points away from the surface's inside.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_TRI_BITS = 21  # triangles per draw call < 2**21


@dataclass(frozen=True)
class Fragments:
    """The visible surface at each covered pixel (P = number of covered pixels)."""

    pixel: torch.Tensor  # [P] long, flat pixel index i * W + j
    tri: torch.Tensor  # [P] long, triangle index
    bary: torch.Tensor  # [P, 3] float32, perspective-correct barycentric weights


def rasterize(
    verts: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    height: int,
    width: int,
    uv: torch.Tensor | None = None,
    alpha: torch.Tensor | None = None,
    alpha_tested: torch.Tensor | None = None,
    near: float = 1.0,
) -> Fragments:
    """Visible triangle and barycentrics per pixel.

    verts        [V, 3] float32 camera-space positions (z > near for drawn triangles)
    faces        [F, 3] long vertex indices
    K            [3, 3] intrinsics (pixels)
    uv           [V, 2] texture pixel coordinates (x, y), needed with ``alpha``
    alpha        [Ht, Wt] bool texture coverage: fragments of ``alpha_tested`` triangles whose
                 (nearest) texel is False are discarded before the depth test
    alpha_tested [F] bool

    Work is proportional to the covered pixels: each triangle is split into rows and each row
    into its exact span of pixel centres (the half-plane bounds of the three edges).
    """
    device = verts.device
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    z = verts[:, 2]
    px = fx * verts[:, 0] / z + cx  # [V]
    py = fy * verts[:, 1] / z + cy
    f0, f1, f2 = faces[:, 0], faces[:, 1], faces[:, 2]
    v0, v1, v2 = verts[f0], verts[f1], verts[f2]
    normal = torch.cross(v1 - v0, v2 - v0, dim=1)
    keep = (normal * v0).sum(1) < 0  # facing the camera at the origin
    keep &= (z[f0] > near) & (z[f1] > near) & (z[f2] > near)
    x0, x1, x2 = px[f0], px[f1], px[f2]
    y0, y1, y2 = py[f0], py[f1], py[f2]
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)  # [F]
    keep &= area.abs() > 1e-9
    ymin = torch.ceil(torch.minimum(torch.minimum(y0, y1), y2) - 0.5).clamp(0, height).long()
    ymax = torch.floor(torch.maximum(torch.maximum(y0, y1), y2) - 0.5).clamp(-1, height - 1).long()
    xmin = torch.ceil(torch.minimum(torch.minimum(x0, x1), x2) - 0.5)
    xmax = torch.floor(torch.maximum(torch.maximum(x0, x1), x2) - 0.5)
    keep &= (xmax >= 0) & (xmin <= width - 1)
    nrows = torch.where(keep, (ymax - ymin + 1).clamp(min=0), torch.zeros_like(ymin))
    # --- (triangle, row) pairs (index_select throughout: much faster than x[idx] on CPU)
    ptri = torch.repeat_interleave(torch.arange(len(faces), device=device), nrows)  # [R]
    pstart = torch.cumsum(nrows, 0) - nrows
    prow = ymin.index_select(0, ptri) + (torch.arange(len(ptri), device=device) - pstart.index_select(0, ptri))
    yc = prow.float() + 0.5
    sx = torch.stack([x0, x1, x2], 1).index_select(0, ptri)  # [R, 3]
    sy = torch.stack([y0, y1, y2], 1).index_select(0, ptri)
    inv_area = (1.0 / area).index_select(0, ptri)[:, None]
    X0, X1, X2, Y0, Y1, Y2 = sx[:, 0], sx[:, 1], sx[:, 2], sy[:, 0], sy[:, 1], sy[:, 2]
    # barycentric b_k(x) = A_k * x + B_k on this row
    A = torch.stack([(Y1 - Y2), (Y2 - Y0), (Y0 - Y1)], 1) * inv_area  # [R, 3]
    B = torch.stack(
        [(X2 - X1) * (yc - Y1) + (Y2 - Y1) * X1, (X0 - X2) * (yc - Y2) + (Y0 - Y2) * X2, (X1 - X0) * (yc - Y0) + (Y1 - Y0) * X0],
        1,
    ) * inv_area
    bound = -B / torch.where(A == 0, torch.ones_like(A), A)
    inf = torch.full_like(bound, float("inf"))
    lo = torch.where(A > 0, bound, -inf).amax(1)
    hi = torch.where(A < 0, bound, inf).amin(1)
    never = ((A == 0) & (B < 0)).any(1)
    jl = torch.ceil(lo - 0.5).clamp(min=0, max=width).long()
    jr = torch.floor(hi - 0.5).clamp(min=-1, max=width - 1).long()
    span = torch.where(never, torch.zeros_like(jl), (jr - jl + 1).clamp(min=0))
    # perspective: w_k = b_k / z_k is linear in x too
    iz = (1.0 / z).index_select(0, faces.index_select(0, ptri).reshape(-1)).reshape(-1, 3)  # [R, 3]
    params = torch.cat([A * iz, B * iz], 1)  # [R, 6]
    # --- pixels
    pair = torch.repeat_interleave(torch.arange(len(ptri), device=device), span)  # [C]
    sstart = torch.cumsum(span, 0) - span
    col = (jl - sstart).index_select(0, pair) + torch.arange(len(pair), device=device)
    qx = col.float() + 0.5
    pp = params.index_select(0, pair)  # [C, 6]
    w = torch.addcmul(pp[:, 3:], pp[:, :3], qx[:, None]).clamp_(min=0)  # [C, 3]
    inv_depth = w.sum(1)
    tri = ptri.index_select(0, pair)
    pixel = prow.index_select(0, pair) * width + col
    # depth test: a positive float32's bit pattern orders like the float; pack depth and
    # triangle index into one int64 key so that one scatter-min resolves depth and ties.
    depth_bits = (1.0 / inv_depth).float().view(torch.int32).long()
    key = (depth_bits << _TRI_BITS) | tri
    if alpha is not None:
        tested = torch.nonzero(alpha_tested.index_select(0, tri)).squeeze(1)
        if len(tested):
            tt = tri.index_select(0, tested)
            bt = w.index_select(0, tested)
            bt = bt / bt.sum(1, keepdim=True)
            tuv = (bt[:, :, None] * uv.index_select(0, faces.index_select(0, tt).reshape(-1)).reshape(-1, 3, 2)).sum(1)
            ix = tuv[:, 0].long().clamp(0, alpha.shape[1] - 1)
            iy = tuv[:, 1].long().clamp(0, alpha.shape[0] - 1)
            transparent = ~alpha.reshape(-1).index_select(0, iy * alpha.shape[1] + ix)
            key.index_fill_(0, tested[transparent], torch.iinfo(torch.int64).max)
    never_drawn = torch.iinfo(torch.int64).max
    zbuf = torch.full((height * width,), never_drawn, dtype=torch.int64, device=device)
    zbuf.scatter_reduce_(0, pixel, key, reduce="amin")
    win = torch.nonzero((key != never_drawn) & (zbuf.index_select(0, pixel) == key)).squeeze(1)
    # exactly one winning fragment per covered pixel (keys are unique per pixel); list them in
    # pixel order through a dense pixel -> fragment map
    owner = torch.full((height * width,), -1, dtype=torch.int64, device=device)
    owner.index_copy_(0, pixel.index_select(0, win), win)
    pix = torch.nonzero(owner >= 0).squeeze(1)  # covered pixels
    win = owner.index_select(0, pix)
    w = w.index_select(0, win)
    return Fragments(pixel=pix, tri=tri.index_select(0, win), bary=w / w.sum(1, keepdim=True))


def interpolate(frags: Fragments, faces: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
    """Per-fragment attribute ``[P, D]`` from per-vertex ``attr`` ``[V, D]``."""
    fa = attr.index_select(0, faces.index_select(0, frags.tri).reshape(-1)).reshape(len(frags.tri), 3, -1)
    return (frags.bary[:, :, None] * fa).sum(1)


def sample_bilinear(texture: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``texture`` [Ht, Wt, C] at texel coordinates ``xy`` [P, 2] -> [P, C].

    Texel (i, j) has its centre at (j + 0.5, i + 0.5); borders clamp.
    """
    h, w = texture.shape[:2]
    flat = texture.reshape(h * w, -1)
    x = (xy[:, 0] - 0.5).clamp(0, w - 1)
    y = (xy[:, 1] - 0.5).clamp(0, h - 1)
    x0 = x.floor().clamp(max=w - 2)
    y0 = y.floor().clamp(max=h - 2)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    i00 = y0.long() * w + x0.long()
    top = flat.index_select(0, i00) * (1 - fx) + flat.index_select(0, i00 + 1) * fx
    bot = flat.index_select(0, i00 + w) * (1 - fx) + flat.index_select(0, i00 + w + 1) * fx
    return top * (1 - fy) + bot * fy


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` (outward for outward-wound faces)."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    fn = torch.cross(v1 - v0, v2 - v0, dim=1)
    n = torch.zeros_like(verts)
    for k in range(3):
        n.index_add_(0, faces[:, k], fn)
    return n / n.norm(dim=1, keepdim=True).clamp(min=1e-12)
