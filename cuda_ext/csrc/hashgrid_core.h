// Per-(point, level) math of the hash-grid encoding, shared by the CUDA kernels and a host build.
//
// Everything here is __host__ __device__ under nvcc and plain inline C++ under a host compiler,
// so tests/test_cuda_ext_compile.py can compile this exact code with g++ and compare it with the
// PyTorch twin on machines without a GPU. Conventions (keep in step with _torch_impl.py):
//   pos = x * res (one rounded multiply, never contracted into an FMA),
//   cell = min(floor(pos), res - 1), t = pos - cell in [0, 1],
//   corner k (bit d of k = offset on axis d) has weight prod_d (bit ? t_d : 1 - t_d),
//   multiplied in axis order 0..D-1;
//   row = dense c0 + c1 (res+1) + c2 (res+1)^2, or hashed (c0 * 1 ^ c1 * 2654435761 ^
//   c2 * 805459861) & (2^T - 1) in uint32 arithmetic.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define HG_HD __host__ __device__ __forceinline__
#else
#define HG_HD inline
#endif

namespace avatar3d {
namespace hashgrid {
namespace core {

// Per-axis primes of the spatial hash (Instant-NGP); keep equal to HASH_PRIMES in _grid_spec.py.
HG_HD constexpr uint32_t hash_prime(int d) {
  return d == 0 ? 1u : (d == 1 ? 2654435761u : 805459861u);
}

// a * b rounded once, never fused with a following add.
HG_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  volatile float p = a * b;  // host: a store forbids contraction whatever -ffp-contract says
  return p;
#endif
}

HG_HD float to_float(float v) { return v; }
#ifdef __CUDACC__
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
#endif

// Row of vertex `c` inside its level's table.
template <int D>
HG_HD uint32_t level_row(const uint32_t (&c)[D], uint32_t res, bool hashed, uint32_t hash_mask) {
  if (hashed) {
    uint32_t h = 0;
#pragma unroll
    for (int d = 0; d < D; ++d) h ^= c[d] * hash_prime(d);
    return h & hash_mask;
  }
  // Dense: (res + 1)^D <= table size <= 2^30, so no overflow.
  uint32_t row = 0, stride = 1;
#pragma unroll
  for (int d = 0; d < D; ++d) {
    row += c[d] * stride;
    stride *= res + 1;
  }
  return row;
}

// Cell and fraction of point `xi` ([D] floats) on a level of resolution res.
template <int D>
HG_HD void locate(const float* xi, uint32_t res, uint32_t (&cell)[D], float (&t)[D]) {
  const float fres = static_cast<float>(res);
#pragma unroll
  for (int d = 0; d < D; ++d) {
    const float xd = fminf(fmaxf(xi[d], 0.0f), 1.0f);
    const float pos = mul_rn(xd, fres);
    const float fl = fminf(floorf(pos), fres - 1.0f);
    cell[d] = static_cast<uint32_t>(fl);
    t[d] = pos - fl;
  }
}

// Corner k of the cell: vertex coordinates, per-axis factors and weight.
template <int D>
HG_HD float corner(int k, const uint32_t (&cell)[D], const float (&t)[D], uint32_t (&c)[D],
                   float (&factor)[D]) {
  float w = 1.0f;
#pragma unroll
  for (int d = 0; d < D; ++d) {
    const bool bit = (k >> d) & 1;
    c[d] = cell[d] + bit;
    factor[d] = bit ? t[d] : 1.0f - t[d];
    w = mul_rn(w, factor[d]);
  }
  return w;
}

// Level output: out[f] = sum_k w_k * table[row_k, f] (fp32 accumulation).
//   xi: [D]; table: this level's rows, [size, F]; out: [F]
template <int D, int F, typename T>
HG_HD void forward_point_level(const float* xi, const T* table, uint32_t res, bool hashed,
                               uint32_t hash_mask, float* out) {
  uint32_t cell[D];
  float t[D];
  locate<D>(xi, res, cell, t);
  float acc[F];
#pragma unroll
  for (int f = 0; f < F; ++f) acc[f] = 0.0f;
#pragma unroll
  for (int k = 0; k < (1 << D); ++k) {
    uint32_t c[D];
    float factor[D];
    const float w = corner<D>(k, cell, t, c, factor);
    const T* e = table + static_cast<int64_t>(level_row<D>(c, res, hashed, hash_mask)) * F;
#pragma unroll
    for (int f = 0; f < F; ++f) acc[f] += w * to_float(e[f]);
  }
#pragma unroll
  for (int f = 0; f < F; ++f) out[f] = acc[f];
}

// Level backward for one point.
//   g: [F] upstream gradient of this level's output; table: this level's rows [size, F].
//   add_grad(row, f, value): accumulate an embedding gradient (row within the level), or skip
//   when want_emb is false. v_x (when want_x): [D] receives this level's d loss / d x.
template <int D, int F, typename T, typename AddGrad>
HG_HD void backward_point_level(const float* xi, const T* table, uint32_t res, bool hashed,
                                uint32_t hash_mask, const float* g, bool want_emb,
                                AddGrad&& add_grad, bool want_x, float* v_x) {
  uint32_t cell[D];
  float t[D];
  locate<D>(xi, res, cell, t);
  float v_t[D];
#pragma unroll
  for (int d = 0; d < D; ++d) v_t[d] = 0.0f;
#pragma unroll
  for (int k = 0; k < (1 << D); ++k) {
    uint32_t c[D];
    float factor[D];
    const float w = corner<D>(k, cell, t, c, factor);
    const uint32_t row = level_row<D>(c, res, hashed, hash_mask);
    if (want_emb) {
#pragma unroll
      for (int f = 0; f < F; ++f) add_grad(row, f, w * g[f]);
    }
    if (want_x) {
      // d out / d t_d = sum_k (prod_{e != d} factor_e) * (bit_d ? 1 : -1) * <g, table[row_k]>
      const T* e = table + static_cast<int64_t>(row) * F;
      float ge = 0.0f;
#pragma unroll
      for (int f = 0; f < F; ++f) ge += g[f] * to_float(e[f]);
#pragma unroll
      for (int d = 0; d < D; ++d) {
        float others = 1.0f;
#pragma unroll
        for (int e2 = 0; e2 < D; ++e2)
          if (e2 != d) others *= factor[e2];
        v_t[d] += ((k >> d) & 1) ? others * ge : -others * ge;
      }
    }
  }
  if (want_x) {
    const float fres = static_cast<float>(res);  // d t / d x = res
#pragma unroll
    for (int d = 0; d < D; ++d) v_x[d] = v_t[d] * fres;
  }
}

}  // namespace core
}  // namespace hashgrid
}  // namespace avatar3d
