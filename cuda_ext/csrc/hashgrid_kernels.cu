// CUDA kernels of the multi-resolution hash-grid encoding (forward and backward).
//
// Plain CUDA, no torch headers: `nvcc -c -arch=sm_90 hashgrid_kernels.cu` compiles this file on
// any machine with nvcc. The per-(point, level) math lives in hashgrid_core.h (also compiled
// for the host in the tests); the PyTorch twin (avatar3d/cuda_ext/_torch_impl.py) computes the
// same function.
// One thread handles one (point, level) pair: blockIdx.y is the level.
// Backward: embedding gradients are scattered with fp32 atomicAdd into an fp32 buffer (also for
// half embeddings; the caller casts once at the end, so there is a single rounding to half).
// Input gradients are written per level and summed by the caller (deterministic).

#include <cuda_fp16.h>

#include "hashgrid.h"
#include "hashgrid_core.h"

namespace avatar3d {
namespace hashgrid {
namespace {

constexpr int kThreads = 256;

template <int D, int F, typename T>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const float* __restrict__ x, const T* __restrict__ emb, float* __restrict__ out,
               int64_t n, Levels lv) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int l = blockIdx.y;
  if (i >= n) return;
  core::forward_point_level<D, F, T>(x + i * D, emb + lv.offset[l] * F, lv.resolution[l],
                                     (lv.hashed_mask >> l) & 1u, lv.hash_mask[l],
                                     out + i * (static_cast<int64_t>(lv.num_levels) * F) + l * F);
}

template <int D, int F, typename T>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const float* __restrict__ grad_out, const float* __restrict__ x,
                const T* __restrict__ emb, float* __restrict__ grad_emb,
                float* __restrict__ grad_x_levels, int64_t n, Levels lv) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int l = blockIdx.y;
  if (i >= n) return;
  float g[F];
  const float* go = grad_out + i * (static_cast<int64_t>(lv.num_levels) * F) + l * F;
#pragma unroll
  for (int f = 0; f < F; ++f) g[f] = go[f];
  float* const level_grad = grad_emb == nullptr ? nullptr : grad_emb + lv.offset[l] * F;
  auto add_grad = [level_grad](uint32_t row, int f, float v) {
    atomicAdd(level_grad + static_cast<int64_t>(row) * F + f, v);
  };
  core::backward_point_level<D, F, T>(
      x + i * D, emb + lv.offset[l] * F, lv.resolution[l], (lv.hashed_mask >> l) & 1u,
      lv.hash_mask[l], g, level_grad != nullptr, add_grad, grad_x_levels != nullptr,
      grad_x_levels == nullptr ? nullptr : grad_x_levels + (i * lv.num_levels + l) * D);
}

dim3 grid_for(int64_t n, int num_levels) {
  return dim3(static_cast<unsigned>((n + kThreads - 1) / kThreads), static_cast<unsigned>(num_levels));
}

// Kernel launchers, one static template per op, instantiated for every (D, F, T).
struct ForwardOp {
  template <int D, int F, typename T>
  static cudaError_t run(dim3 grid, cudaStream_t stream, const float* x, const void* emb,
                         float* out, int64_t n, const Levels& lv) {
    forward_kernel<D, F, T><<<grid, kThreads, 0, stream>>>(x, static_cast<const T*>(emb), out, n, lv);
    return cudaGetLastError();
  }
};

struct BackwardOp {
  template <int D, int F, typename T>
  static cudaError_t run(dim3 grid, cudaStream_t stream, const float* grad_out, const float* x,
                         const void* emb, float* grad_emb, float* grad_x_levels, int64_t n,
                         const Levels& lv) {
    backward_kernel<D, F, T><<<grid, kThreads, 0, stream>>>(
        grad_out, x, static_cast<const T*>(emb), grad_emb, grad_x_levels, n, lv);
    return cudaGetLastError();
  }
};

template <typename Op, int D, int F, typename... A>
cudaError_t by_type(EmbeddingType type, A... args) {
  if (type == EmbeddingType::kFloat16) return Op::template run<D, F, __half>(args...);
  return Op::template run<D, F, float>(args...);
}

template <typename Op, int D, typename... A>
cudaError_t by_features(int features, EmbeddingType type, A... args) {
  switch (features) {
    case 1: return by_type<Op, D, 1>(type, args...);
    case 2: return by_type<Op, D, 2>(type, args...);
    case 4: return by_type<Op, D, 4>(type, args...);
    case 8: return by_type<Op, D, 8>(type, args...);
    default: return cudaErrorInvalidValue;
  }
}

// Op::run<D, F, T>(args...) for the runtime (dim, features, type).
template <typename Op, typename... A>
cudaError_t dispatch(int dim, int features, EmbeddingType type, A... args) {
  switch (dim) {
    case 2: return by_features<Op, 2>(features, type, args...);
    case 3: return by_features<Op, 3>(features, type, args...);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_forward(const float* x, const void* embeddings, EmbeddingType type, float* out,
                           int64_t n, int dim, int features, const Levels& levels,
                           cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (levels.num_levels < 1 || levels.num_levels > kMaxLevels) return cudaErrorInvalidValue;
  const dim3 grid = grid_for(n, levels.num_levels);
  return dispatch<ForwardOp>(dim, features, type, grid, stream, x, embeddings, out, n, levels);
}

cudaError_t launch_backward(const float* grad_out, const float* x, const void* embeddings,
                            EmbeddingType type, float* grad_embeddings, float* grad_x_levels,
                            int64_t n, int dim, int features, const Levels& levels,
                            cudaStream_t stream) {
  if (n == 0 || (grad_embeddings == nullptr && grad_x_levels == nullptr)) return cudaSuccess;
  if (levels.num_levels < 1 || levels.num_levels > kMaxLevels) return cudaErrorInvalidValue;
  const dim3 grid = grid_for(n, levels.num_levels);
  return dispatch<BackwardOp>(dim, features, type, grid, stream, grad_out, x, embeddings,
                             grad_embeddings, grad_x_levels, n, levels);
}

}  // namespace hashgrid
}  // namespace avatar3d
