"""Compile checks of the CUDA extension sources (no GPU needed; skipped without the compilers).

- hashgrid_kernels.cu with plain nvcc for sm_90, with the flags of the one build definition:
  every (op, D, F, dtype) instantiation is compiled and none spills registers.
- hashgrid_binding.cpp syntax-checked with g++ against the installed torch's headers. A CPU-only
  torch wheel lacks one generated header (c10/cuda/impl/cuda_cmake_macros.h); a stand-in with the
  content CUDA builds generate is supplied in that case.
- hashgrid_core.h (the per-(point, level) math the kernels run) compiled for the host with g++
  and compared with the PyTorch twin: forward, embedding and input gradients.
"""
from __future__ import annotations

import os
import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from avatar3d.cuda_ext import GridSpec, hash_grid_encode
from avatar3d.cuda_ext import _backend


def find_nvcc() -> str | None:
    cands = [shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cands.append(str(Path(home) / "bin" / "nvcc"))
    return next((c for c in cands if c and Path(c).is_file()), None)


def cuda_include(nvcc: str) -> Path | None:
    real = Path(nvcc).resolve().parent.parent / "include"
    for inc in (real, Path("/usr/local/cuda/include")):
        if (inc / "cuda_runtime_api.h").is_file():
            return inc
    return None


@pytest.mark.parametrize("std", ["c++17", "c++20"])
def test_kernels_compile_with_nvcc_for_sm90(std, tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda): cannot compile-check the CUDA kernels")
    obj = tmp_path / "hashgrid_kernels.o"
    cmd = [nvcc, "-c", f"-std={std}", "-arch=sm_90", *_backend.BUILD.nvcc_flags_now(), "-Xptxas", "-v",
           "-I", str(_backend.CSRC), str(_backend.CSRC / "hashgrid_kernels.cu"), "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert obj.stat().st_size > 0
    log = res.stdout + res.stderr
    entries = re.findall(r"Compiling entry function '(\S+)' for 'sm_90'", log)
    # 2 ops x D in {2, 3} x F in {1, 2, 4, 8} x {float, half}
    assert sum("forward_kernel" in e for e in entries) == 16, entries
    assert sum("backward_kernel" in e for e in entries) == 16, entries
    spills = [int(s) for s in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    assert len(spills) == 64 and not any(spills), "register spills in the hash-grid kernels"
    symbols = obj.read_bytes()
    assert b"launch_forward" in symbols and b"launch_backward" in symbols


def test_binding_syntax_checks_against_torch_headers(tmp_path):
    gxx = shutil.which("g++")
    nvcc = find_nvcc()
    inc = cuda_include(nvcc) if nvcc else None
    if gxx is None or inc is None:
        pytest.skip("g++ or the CUDA runtime headers not found: cannot syntax-check the torch binding")
    from torch.utils.cpp_extension import include_paths

    torch_inc = [Path(p) for p in include_paths()]
    shim = tmp_path / "shim"
    if not any((p / "c10/cuda/impl/cuda_cmake_macros.h").is_file() for p in torch_inc):
        (shim / "c10/cuda/impl").mkdir(parents=True)
        (shim / "c10/cuda/impl/cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [gxx, "-std=c++20", "-fsyntax-only", *_backend.BUILD.cxx_flags,
           *[f"-I{p}" for p in torch_inc], f"-I{shim}", f"-I{inc}", f"-I{_backend.CSRC}",
           str(_backend.CSRC / "hashgrid_binding.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]


HOST_HARNESS = r"""
#include <cstdint>
#include "hashgrid_core.h"
using namespace avatar3d::hashgrid::core;

template <int D, int F>
void run(const float* x, const float* emb, const float* grad_out, int64_t n, int L,
         const int64_t* res, const int64_t* offsets, const int64_t* hashed,
         float* out, float* grad_emb, float* grad_x) {
  for (int64_t i = 0; i < n; ++i) {
    for (int l = 0; l < L; ++l) {
      const uint32_t mask = hashed[l] ? uint32_t(offsets[l + 1] - offsets[l] - 1) : 0u;
      const float* table = emb + offsets[l] * F;
      forward_point_level<D, F, float>(x + i * D, table, uint32_t(res[l]), hashed[l] != 0, mask,
                                       out + (i * L + l) * F);
      float* level_grad = grad_emb + offsets[l] * F;
      float v_x[D];
      backward_point_level<D, F, float>(
          x + i * D, table, uint32_t(res[l]), hashed[l] != 0, mask, grad_out + (i * L + l) * F,
          true, [&](uint32_t row, int f, float v) { level_grad[int64_t(row) * F + f] += v; },
          true, v_x);
      for (int d = 0; d < D; ++d) grad_x[i * D + d] += v_x[d];
    }
  }
}

template <int D>
int by_features(int F, const float* x, const float* emb, const float* g, int64_t n, int L,
                const int64_t* r, const int64_t* o, const int64_t* h, float* out, float* ge, float* gx) {
  switch (F) {
    case 1: run<D, 1>(x, emb, g, n, L, r, o, h, out, ge, gx); return 0;
    case 2: run<D, 2>(x, emb, g, n, L, r, o, h, out, ge, gx); return 0;
    case 4: run<D, 4>(x, emb, g, n, L, r, o, h, out, ge, gx); return 0;
    case 8: run<D, 8>(x, emb, g, n, L, r, o, h, out, ge, gx); return 0;
  }
  return -1;
}

extern "C" int hashgrid_host(int D, int F, const float* x, const float* emb, const float* g,
                             int64_t n, int L, const int64_t* r, const int64_t* o, const int64_t* h,
                             float* out, float* ge, float* gx) {
  if (D == 2) return by_features<2>(F, x, emb, g, n, L, r, o, h, out, ge, gx);
  if (D == 3) return by_features<3>(F, x, emb, g, n, L, r, o, h, out, ge, gx);
  return -1;
}
"""


@pytest.fixture(scope="module")
def host_core(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: cannot build the host copy of the kernel math")
    d = tmp_path_factory.mktemp("hashgrid_host")
    (d / "harness.cpp").write_text(HOST_HARNESS)
    lib = d / "libhashgrid_host.so"
    cmd = [gxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-I", str(_backend.CSRC), str(d / "harness.cpp"), "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    fn = ctypes.CDLL(str(lib)).hashgrid_host
    fn.restype = ctypes.c_int
    return fn


@pytest.mark.parametrize("dim,features,log2_t,base,top,levels", [
    (2, 2, 6, 4, 16, 3), (3, 2, 8, 4, 16, 3), (2, 1, 10, 3, 200, 5), (3, 4, 9, 2, 40, 4), (3, 8, 7, 1, 9, 4),
    (2, 8, 12, 16, 2048, 16)])
def test_host_build_of_kernel_math_matches_twin(host_core, dim, features, log2_t, base, top, levels):
    spec = GridSpec(dim=dim, num_levels=levels, features_per_level=features, log2_table_size=log2_t,
                    base_resolution=base, max_resolution=top)
    gen = torch.Generator().manual_seed(dim * 1000 + features * 100 + levels)
    res_top = spec.resolutions[-1]
    x = torch.cat([torch.rand(300, dim, generator=gen),
                   torch.randint(0, res_top + 1, (60, dim), generator=gen).float() / res_top,
                   torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * dim)]).contiguous()  # [N, D]
    n = len(x)
    emb = (torch.rand(spec.total_params, features, generator=gen) * 2 - 1).contiguous()
    v_out = (torch.rand(n, spec.out_dim, generator=gen) * 2 - 1).contiguous()
    r = torch.tensor(spec.resolutions, dtype=torch.int64)
    o = torch.tensor(spec.offsets, dtype=torch.int64)
    h = torch.tensor(spec.hashed, dtype=torch.int64)
    out = torch.zeros(n, spec.out_dim)
    v_emb = torch.zeros_like(emb)
    v_x = torch.zeros_like(x)
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    rc = host_core(dim, features, ptr(x), ptr(emb), ptr(v_out), ctypes.c_int64(n), levels,
                   ptr(r), ptr(o), ptr(h), ptr(out), ptr(v_emb), ptr(v_x))
    assert rc == 0

    xt = x.clone().requires_grad_(True)
    et = emb.clone().requires_grad_(True)
    out_t = hash_grid_encode(xt, et, spec, "torch", input_gradients=True)
    out_t.backward(v_out)
    torch.testing.assert_close(out, out_t.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_emb, et.grad, rtol=1e-5, atol=1e-5)
    scale = xt.grad.abs().max().clamp_min(1.0)
    torch.testing.assert_close(v_x / scale, xt.grad / scale, rtol=1e-5, atol=1e-5)
