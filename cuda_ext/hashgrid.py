"""Multi-resolution hash-grid encoding (Instant-NGP) with a CUDA kernel and a PyTorch twin.

Three layers (DESIGN.md): :func:`hash_grid_encode` checks shapes, dtypes and ranges and picks an
implementation -> :class:`_HashGridFunction` pairs the forward and backward CUDA kernels ->
:mod:`._backend` builds them lazily. :mod:`._torch_impl` computes the same function in PyTorch.
The grid layout (resolutions, dense/hashed levels, table sizes) is documented in
:mod:`._grid_spec`.

Interpolation convention: on a level of resolution ``res``, ``pos = x * res``; the cell is
``i = min(floor(pos), res - 1)`` and the fraction ``t = pos - i``; the 2**D corners ``i + b``
(b in {0, 1}**D) are weighted by ``prod_d (b_d ? t_d : 1 - t_d)``. So a point on an inner cell
boundary (``pos`` an integer k < res) belongs to cell k with ``t = 0``, ``x = 0`` to cell 0 with
``t = 0`` and ``x = 1`` to cell ``res - 1`` with ``t = 1``. The encoding is continuous everywhere;
at a boundary the input gradient is the one-sided derivative from that cell.
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import _backend
from ._grid_spec import GridSpec
from ._torch_impl import hash_grid_encode_torch

IMPLEMENTATIONS = ("auto", "cuda", "torch")
INIT_RANGE = 1e-4  # embeddings start uniform in (-1e-4, 1e-4), as in Instant-NGP
_CUDA_EMBEDDING_DTYPES = (torch.float32, torch.float16)


@functools.cache
def _warn_fallback(reason: str) -> None:
    """Warn once per process and reason that "auto" fell back to the PyTorch twin."""
    warnings.warn(f"hash_grid_encode: using the PyTorch implementation on CUDA because {reason}",
                  RuntimeWarning, stacklevel=4)


def _layout(spec: GridSpec) -> tuple[list[int], list[int], list[int]]:
    return list(spec.resolutions), list(spec.offsets), [int(h) for h in spec.hashed]


def _cuda_dtype_problem(x: torch.Tensor, embeddings: torch.Tensor) -> str | None:
    if x.dtype != torch.float32:
        return f"the CUDA kernels take float32 x, got {x.dtype}"
    if embeddings.dtype not in _CUDA_EMBEDDING_DTYPES:
        return f"the CUDA kernels take float32 or float16 embeddings, got {embeddings.dtype}"
    return None


class _HashGridFunction(torch.autograd.Function):
    """Autograd pairing of the CUDA forward and backward kernels (first-order gradients only)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, embeddings: torch.Tensor, spec: GridSpec,
                input_gradients: bool) -> torch.Tensor:
        # x: [N, D] float32 contiguous CUDA; embeddings: [total_params, F] float32/float16
        out = _backend.cuda_ops().forward(x, embeddings, *_layout(spec))  # [N, L*F] float32
        ctx.save_for_backward(x, embeddings)
        ctx.spec = spec
        ctx.input_gradients = input_gradients
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, v_out: torch.Tensor):
        x, embeddings = ctx.saved_tensors
        need_x = bool(ctx.needs_input_grad[0] and ctx.input_gradients)
        need_embeddings = bool(ctx.needs_input_grad[1])
        if not (need_x or need_embeddings):
            return None, None, None, None
        v_embeddings, v_x = _backend.cuda_ops().backward(
            v_out.to(torch.float32).contiguous(), x, embeddings, *_layout(ctx.spec),
            need_embeddings, need_x)
        return (v_x if need_x else None), (v_embeddings if need_embeddings else None), None, None


def _check(x: torch.Tensor, embeddings: torch.Tensor, spec: GridSpec, implementation: str) -> None:
    if not isinstance(spec, GridSpec):
        raise TypeError(f"spec must be a GridSpec, got {type(spec).__name__}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if not isinstance(x, torch.Tensor) or not isinstance(embeddings, torch.Tensor):
        raise TypeError("x and embeddings must be torch tensors")
    if x.ndim != 2 or x.shape[1] != spec.dim:
        raise ValueError(f"x must be [N, {spec.dim}] for a {spec.dim}D grid, got {list(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    want = [spec.total_params, spec.features_per_level]
    if list(embeddings.shape) != want:
        raise ValueError(f"embeddings must be {want} for this GridSpec, got {list(embeddings.shape)}")
    if embeddings.dtype not in (torch.float16, torch.float32, torch.float64):
        raise ValueError(f"embeddings must be float16, float32 or float64, got {embeddings.dtype}")
    if x.device != embeddings.device:
        raise ValueError(f"x is on {x.device} but embeddings are on {embeddings.device}")
    # One reduction (a device sync on CUDA); NaN fails too because the comparison is negated.
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("x must lie in [0, 1] (and not be NaN); normalise positions by the scene bounds first")


def hash_grid_encode(x: torch.Tensor, embeddings: torch.Tensor, spec: GridSpec,
                     implementation: str = "auto", input_gradients: bool = False) -> torch.Tensor:
    """Encode points with a multi-resolution hash grid.

    Args:
        x: [N, D] positions in [0, 1], D = spec.dim (2 or 3); float32 (float64 only on the torch
            path, e.g. for gradcheck).
        embeddings: [spec.total_params, F] all levels' tables concatenated (level l owns rows
            spec.offsets[l]:spec.offsets[l+1]); float32 or float16 (float64 on the torch path).
        spec: the grid layout (levels, features, table size, resolutions).
        implementation: "cuda" (the kernels; raises UserError when they cannot be built or run),
            "torch" (the PyTorch twin) or "auto" (cuda when x is on a CUDA device and the kernels
            build, else torch, with a one-time warning saying why when x is on CUDA).
        input_gradients: also differentiate w.r.t. x (e.g. for smoothness losses). When False, x
            is treated as a constant. The CUDA path gives first-order gradients only; the torch
            path supports double backward.
    Returns:
        [N, L*F] features, level l in columns l*F:(l+1)*F; float32 (float64 when x or the
        embeddings are float64). Half embeddings are accumulated in float32.
    """
    _check(x, embeddings, spec, implementation)
    use_cuda = False
    if implementation == "cuda":
        if not x.is_cuda:
            raise ValueError(f"implementation='cuda' needs x on a CUDA device, got {x.device}")
        problem = _cuda_dtype_problem(x, embeddings)
        if problem:
            raise ValueError(f"implementation='cuda': {problem}")
        _backend.cuda_ops()  # raises UserError with the reason when unavailable
        use_cuda = True
    elif implementation == "auto" and x.is_cuda:
        reason = _cuda_dtype_problem(x, embeddings) or _backend.cuda_unavailable_reason()
        if reason:
            _warn_fallback(reason)
        use_cuda = reason is None
    if not input_gradients:
        x = x.detach()
    if use_cuda:
        return _HashGridFunction.apply(x.contiguous(), embeddings.contiguous(), spec, input_gradients)
    return hash_grid_encode_torch(x, embeddings, spec)


class HashGrid(nn.Module):
    """A D-dimensional multi-resolution hash grid with learnable embeddings.

    Embeddings: one [total_params, F] parameter, initialised uniform(-1e-4, 1e-4). The forward
    differentiates w.r.t. x exactly when x requires grad.
    """

    def __init__(self, dim: int, num_levels: int = 16, features_per_level: int = 2,
                 log2_table_size: int = 19, base_resolution: int = 16, max_resolution: int = 2048,
                 implementation: str = "auto", dtype: torch.dtype = torch.float32):
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if dtype not in (torch.float16, torch.float32, torch.float64):
            raise ValueError(f"dtype must be float16, float32 or float64, got {dtype}")
        self.spec = GridSpec(dim=dim, num_levels=num_levels, features_per_level=features_per_level,
                             log2_table_size=log2_table_size, base_resolution=base_resolution,
                             max_resolution=max_resolution)
        self.implementation = implementation
        self.out_dim: int = self.spec.out_dim
        self.embeddings = nn.Parameter(torch.empty(self.spec.total_params, features_per_level, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.embeddings.uniform_(-INIT_RANGE, INIT_RANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, dim] in [0, 1] -> [N, out_dim] float32 (float64 for float64 x)."""
        return hash_grid_encode(x, self.embeddings, self.spec, self.implementation,
                                input_gradients=x.requires_grad)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"dim={s.dim}, levels={s.num_levels}, features={s.features_per_level}, "
                f"log2_table_size={s.log2_table_size}, resolution={s.base_resolution}..{s.max_resolution}, "
                f"params={s.total_params * s.features_per_level}, implementation={self.implementation!r}")


class TriPlaneHashGrid(nn.Module):
    """Three 2D hash grids on the xy, yz and xz planes of a 3D point; outputs concatenated.

    forward(x [N, 3]) = cat([grid_xy(x[:, (0, 1)]), grid_yz(x[:, (1, 2)]), grid_xz(x[:, (0, 2)])], 1)
    """

    PLANE_AXES = ((0, 1), (1, 2), (0, 2))

    def __init__(self, num_levels: int = 16, features_per_level: int = 2, log2_table_size: int = 19,
                 base_resolution: int = 16, max_resolution: int = 2048, implementation: str = "auto",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.planes = nn.ModuleList(
            HashGrid(2, num_levels, features_per_level, log2_table_size, base_resolution,
                     max_resolution, implementation, dtype)
            for _ in self.PLANE_AXES)
        self.out_dim: int = 3 * num_levels * features_per_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3] in [0, 1] -> [N, out_dim] float32 (float64 for float64 x)."""
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"TriPlaneHashGrid takes x of shape [N, 3], got {list(x.shape)}")
        return torch.cat([grid(x[:, list(axes)]) for grid, axes in zip(self.planes, self.PLANE_AXES)], dim=1)
