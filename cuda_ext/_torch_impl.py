"""Pure-PyTorch twin of the hash-grid encoding: the same function as the CUDA kernels.

Used on CPU, as the fallback when the CUDA build is unavailable, and as the reference the CUDA
kernels are tested against. Vectorised over points and the 2**D cell corners (built per axis, then combined); the only Python
loop is over levels. Gradients come from autograd (w.r.t. the embeddings, and w.r.t. ``x`` when
``x`` is not detached), so double backward works here (not in the CUDA path).

Numerics mirror the kernels: ``pos = x * res`` (one rounded multiply), cell ``i = min(floor(pos),
res - 1)``, fraction ``t = pos - i`` in [0, 1]; the corner weight is the product over axes
0..D-1 of ``t_d`` or ``1 - t_d``; half embeddings are widened to float32 before the weighted sum.
"""
from __future__ import annotations

import torch

from ._grid_spec import HASH_PRIMES, GridSpec


def combine_axes(per_axis: torch.Tensor, op) -> torch.Tensor:
    """Combine per-axis values of the two cell sides into per-corner values.

    Corner k has offset bit d of k on axis d. For axis values v_d = (lower, upper) the result for
    corner k is op(...op(op(v_0[b_0], v_1[b_1]), v_2[b_2])...), so products are formed in axis
    order 0..D-1 exactly like the CUDA kernel.

    Args:
        per_axis: [N, D, 2] values for the lower (0) and upper (1) side on each axis.
    Returns:
        [N, 2**D], column k = corner k.
    """
    n, dim, _ = per_axis.shape
    acc = per_axis[:, 0, :]  # [N, 2]
    for d in range(1, dim):
        acc = op(acc[:, None, :], per_axis[:, d, :, None]).reshape(n, 2 ** (d + 1))  # [N, 2**(d+1)]
    return acc


def level_rows(cell: torch.Tensor, resolution: int, hashed: bool, table_size: int) -> torch.Tensor:
    """Row index inside one level's table of the 2**D corners of each point's cell.

    Args:
        cell: [N, D] int64 lower cell corner, in 0..resolution-1.
    Returns:
        [N, 2**D] int64 rows in 0..table_size-1.
    """
    dim = cell.shape[-1]
    sides = torch.stack([cell, cell + 1], dim=-1)  # [N, D, 2] vertex coordinate per axis and side
    if hashed:
        # Low 32 bits of the int64 products equal the uint32 products, and table_size = 2**T
        # with T <= 30, so masking after the XOR gives the kernel's uint32 hash mod 2**T.
        primes = torch.tensor(HASH_PRIMES[:dim], dtype=torch.int64, device=cell.device)
        return combine_axes(sides * primes[:, None], torch.bitwise_xor) & (table_size - 1)
    strides = torch.tensor([(resolution + 1) ** d for d in range(dim)], dtype=torch.int64, device=cell.device)
    return combine_axes(sides * strides[:, None], torch.add)


def hash_grid_encode_torch(x: torch.Tensor, embeddings: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Multi-resolution hash-grid encoding in plain PyTorch (no input checks; see the public function).

    Args:
        x: [N, D] positions in [0, 1]; float32 or float64.
        embeddings: [total_params, F] float16, float32 or float64.
        spec: the grid layout.
    Returns:
        [N, L*F]: float64 if x or embeddings is float64, else float32. Level l fills columns
        l*F:(l+1)*F.
    """
    out_dtype = torch.float64 if torch.float64 in (x.dtype, embeddings.dtype) else torch.float32
    x = x.to(out_dtype)
    # One split (not a slice per level): its backward fills the table-sized gradient once.
    tables = torch.split(embeddings, spec.table_sizes)  # level l: [size_l, F]
    outs = []
    for level, res in enumerate(spec.resolutions):
        pos = x * res  # [N, D]
        cell = torch.floor(pos).clamp_(0, res - 1).detach()  # [N, D]
        t = pos - cell  # [N, D] in [0, 1]; carries d/dx = res
        factors = torch.stack([1.0 - t, t], dim=-1)  # [N, D, 2]
        w = combine_axes(factors, torch.mul)  # [N, C], C = 2**D corner weights
        rows = level_rows(cell.to(torch.int64), res, spec.hashed[level], spec.table_sizes[level])  # [N, C]
        table = tables[level].to(out_dtype)  # [size, F]; fp16 -> fp32 before the sum
        feats = table[rows]  # [N, C, F]
        outs.append((w[..., None] * feats).sum(dim=1))  # [N, F]
    return torch.cat(outs, dim=1)
