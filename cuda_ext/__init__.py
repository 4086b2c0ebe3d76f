"""CUDA kernels with a pure-PyTorch twin of each (importing never compiles).

Hash-grid encoding: :func:`hash_grid_encode`, :class:`HashGrid`, :class:`TriPlaneHashGrid`,
:class:`GridSpec` (see :mod:`.hashgrid` and :mod:`._grid_spec` for the exact conventions).
"""
from ._grid_spec import GridSpec
from .hashgrid import HashGrid, TriPlaneHashGrid, hash_grid_encode

__all__ = ["GridSpec", "HashGrid", "TriPlaneHashGrid", "hash_grid_encode"]
