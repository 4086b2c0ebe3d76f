"""The layout of a multi-resolution hash grid: one place for resolutions, table sizes and offsets.

Both implementations (the CUDA kernels and the PyTorch twin) read every per-level number from a
:class:`GridSpec`, so they cannot disagree about the layout.

Conventions (Instant-NGP, Müller et al. 2022, with the choices below made explicit):

- Level ``l`` (0-based) has resolution ``res_l = floor(base * b**l + 1e-9)`` with
  ``b = exp((ln max - ln base) / (L - 1))`` (``b = 1`` when ``L == 1``). The ``1e-9`` only absorbs
  float rounding so that the last level is exactly ``max_resolution``.
- A level's grid has ``res_l + 1`` vertices per axis (vertex ``k`` sits at ``x = k / res_l``), so
  ``(res_l + 1)**D`` vertices in all.
- If ``(res_l + 1)**D <= 2**T`` the level is *dense*: its table holds exactly ``(res_l + 1)**D``
  rows (no rounding up) and vertex ``c`` uses row ``c_0 + c_1 (res+1) + c_2 (res+1)**2``.
- Otherwise the level is *hashed*: its table holds exactly ``2**T`` rows and vertex ``c`` uses row
  ``(c_0 * 1 ^ c_1 * 2654435761 ^ c_2 * 805459861) mod 2**T`` computed in uint32 arithmetic.
- Levels are concatenated in order: level ``l`` owns rows ``offsets[l] : offsets[l + 1]`` of the
  ``[total_params, F]`` embedding table.
"""
from __future__ import annotations

import dataclasses
import math
from functools import cached_property

HASH_PRIMES = (1, 2654435761, 805459861)  # per-axis primes of the spatial hash (Instant-NGP)
MAX_LEVELS = 32  # the CUDA kernels pass per-level numbers in a fixed-size kernel argument
SUPPORTED_FEATURES = (1, 2, 4, 8)  # features per level the CUDA kernels are instantiated for


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Shape of a multi-resolution hash grid (see the module docstring for the exact layout)."""

    dim: int
    """Input dimension D: 2 (a plane) or 3 (a volume)."""
    num_levels: int = 16
    """Number of resolution levels L (1..32)."""
    features_per_level: int = 2
    """Features F stored per grid vertex and level: 1, 2, 4 or 8."""
    log2_table_size: int = 19
    """T: hashed levels hold 2**T rows; dense levels hold at most that many (1..30)."""
    base_resolution: int = 16
    """Resolution of the coarsest level (cells per axis)."""
    max_resolution: int = 2048
    """Resolution of the finest level (cells per axis), >= base_resolution."""

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"GridSpec: {what}")

        for name in ("dim", "num_levels", "features_per_level", "log2_table_size",
                     "base_resolution", "max_resolution"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an int, got {value!r}")
        need(self.dim in (2, 3), f"dim must be 2 or 3, got {self.dim}")
        need(1 <= self.num_levels <= MAX_LEVELS, f"num_levels must be in 1..{MAX_LEVELS}, got {self.num_levels}")
        need(self.features_per_level in SUPPORTED_FEATURES,
             f"features_per_level must be one of {SUPPORTED_FEATURES}, got {self.features_per_level}")
        need(1 <= self.log2_table_size <= 30, f"log2_table_size must be in 1..30, got {self.log2_table_size}")
        need(1 <= self.base_resolution <= 2**24, f"base_resolution must be in 1..2**24, got {self.base_resolution}")
        need(self.base_resolution <= self.max_resolution <= 2**24,
             f"max_resolution must be in base_resolution..2**24, got {self.max_resolution}")
        need(self.num_levels > 1 or self.max_resolution == self.base_resolution,
             "with num_levels == 1, max_resolution must equal base_resolution")

    @property
    def out_dim(self) -> int:
        """Features per point: L * F."""
        return self.num_levels * self.features_per_level

    @cached_property
    def growth_factor(self) -> float:
        """b = exp((ln max - ln base) / (L - 1)); 1 for a single level."""
        if self.num_levels == 1:
            return 1.0
        return math.exp((math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.num_levels - 1))

    @cached_property
    def resolutions(self) -> tuple[int, ...]:
        """Cells per axis of each level: floor(base * b**l + 1e-9)."""
        b = self.growth_factor
        return tuple(int(math.floor(self.base_resolution * b**l + 1e-9)) for l in range(self.num_levels))

    @cached_property
    def hashed(self) -> tuple[bool, ...]:
        """Whether each level uses the spatial hash ((res+1)**D > 2**T) rather than dense indexing."""
        return tuple((r + 1) ** self.dim > 2**self.log2_table_size for r in self.resolutions)

    @cached_property
    def table_sizes(self) -> tuple[int, ...]:
        """Rows of each level's table: min(2**T, (res+1)**D), exact (no rounding up)."""
        return tuple(min(2**self.log2_table_size, (r + 1) ** self.dim) for r in self.resolutions)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Row offsets of the levels in the concatenated table; L + 1 entries, last = total_params."""
        out = [0]
        for size in self.table_sizes:
            out.append(out[-1] + size)
        return tuple(out)

    @property
    def total_params(self) -> int:
        """Rows of the concatenated embedding table (each row holds F features)."""
        return self.offsets[-1]
