"""Lazily built CUDA module for the hash-grid kernels: the one build definition and its loader.

Importing this module never compiles. The first call that needs the CUDA implementation builds
``csrc/`` with ``torch.utils.cpp_extension.load`` (cached on disk by torch under
``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``; a rebuild happens only when the
sources or flags change) and registers ``torch.ops.avatar3d_hashgrid.{forward,backward}``.

:data:`BUILD` is the single build definition (name, sources, flags). The JIT loader uses
``BUILD.load_kwargs()``; a setup.py ``CUDAExtension`` can use ``BUILD.setup_kwargs()``.
Target GPUs: torch reads ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"9.0"`` or ``"8.6;9.0+PTX"``); when it is
unset torch compiles for the GPUs it sees. ``AVATAR3D_CUDA_FAST_MATH=1`` adds ``--use_fast_math``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any

import torch

from avatar3d.errors import UserError

CSRC = Path(__file__).resolve().parent / "csrc"
FAST_MATH_ENV = "AVATAR3D_CUDA_FAST_MATH"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BuildDefinition:
    """Sources and flags of one CUDA extension, in the form both build paths take."""

    name: str
    """Extension name; also the TORCH_LIBRARY namespace the binding registers (torch.ops.<name>)."""
    sources: tuple[str, ...]
    """Source files, relative to csrc/."""
    cxx_flags: tuple[str, ...]
    """Extra host compiler flags (torch adds -std=c++XX and -fPIC itself)."""
    nvcc_flags: tuple[str, ...]
    """Extra nvcc flags (torch adds -std=c++XX and the -gencode flags from TORCH_CUDA_ARCH_LIST)."""

    def source_paths(self) -> list[str]:
        return [str(CSRC / s) for s in self.sources]

    def nvcc_flags_now(self) -> list[str]:
        """nvcc flags with the environment's optional extras (fast math) applied."""
        flags = list(self.nvcc_flags)
        if os.environ.get(FAST_MATH_ENV, "") == "1":
            flags.append("--use_fast_math")
        return flags

    def load_kwargs(self) -> dict[str, Any]:
        """Arguments for ``torch.utils.cpp_extension.load`` (JIT)."""
        return dict(
            name=self.name,
            sources=self.source_paths(),
            extra_cflags=list(self.cxx_flags),
            extra_cuda_cflags=self.nvcc_flags_now(),
            extra_include_paths=[str(CSRC)],
            is_python_module=False,
        )

    def setup_kwargs(self) -> dict[str, Any]:
        """Arguments for ``torch.utils.cpp_extension.CUDAExtension`` (ahead-of-time, in setup.py)."""
        return dict(
            name=f"avatar3d.cuda_ext._{self.name}",
            sources=self.source_paths(),
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": list(self.cxx_flags), "nvcc": self.nvcc_flags_now()},
        )


BUILD = BuildDefinition(
    name="avatar3d_hashgrid",
    sources=("hashgrid_binding.cpp", "hashgrid_kernels.cu"),
    cxx_flags=("-O3",),
    nvcc_flags=("-O3", "-lineinfo"),
)


def ensure_ninja_on_path() -> bool:
    """torch's JIT builds run ``ninja`` from PATH; the one pip installs with the project (a
    requirement) lives in the environment's bin folder, which ``make`` and IDEs do not put on
    PATH. Prepend that folder when ninja is not found otherwise. True when ninja is available."""
    from torch.utils import cpp_extension

    if cpp_extension.is_ninja_available():
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return cpp_extension.is_ninja_available()


@functools.cache
def _build() -> tuple[Any, str | None]:
    """Build and load the extension once per process: (torch.ops namespace, None) or (None, why not)."""
    if torch.version.cuda is None:
        return None, f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return None, "torch.cuda.is_available() is False"
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return None, "the CUDA toolkit (nvcc) was not found; set CUDA_HOME"
    if not ensure_ninja_on_path():
        return None, "ninja was not found (pip install ninja, or put it on PATH)"
    log.info("building the %s CUDA extension (first use; torch caches the build)", BUILD.name)
    try:
        cpp_extension.load(**BUILD.load_kwargs())
    except Exception as e:  # a failed build must leave the torch path usable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"building the {BUILD.name} CUDA extension failed: {first}"
    return getattr(torch.ops, BUILD.name), None


def cuda_unavailable_reason() -> str | None:
    """None when the CUDA kernels can run (building them on first use), else a one-line reason."""
    return _build()[1]


def cuda_ops() -> Any:
    """The loaded ``torch.ops.avatar3d_hashgrid`` namespace; raises UserError saying why when unavailable."""
    ops, reason = _build()
    if ops is None:
        raise UserError(f"the CUDA hash-grid encoding is unavailable: {reason}")
    return ops
