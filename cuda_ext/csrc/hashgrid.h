// Multi-resolution hash-grid encoding: launchers for the CUDA kernels in hashgrid_kernels.cu.
//
// This header is plain C++ + the CUDA runtime API (no torch), so hashgrid_kernels.cu compiles
// with nvcc alone; hashgrid_binding.cpp adapts torch tensors to these launchers.
// The grid layout (resolutions, dense/hashed levels, row offsets) is computed in Python
// (avatar3d.cuda_ext._grid_spec.GridSpec) and passed in a Levels struct.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace avatar3d {
namespace hashgrid {

constexpr int kMaxLevels = 32;  // keep equal to MAX_LEVELS in _grid_spec.py

// Per-level layout, passed by value as a kernel argument (~400 bytes).
struct Levels {
  int num_levels;
  uint32_t resolution[kMaxLevels];   // cells per axis; vertices are 0..resolution
  uint32_t hashed_mask;              // bit l set: level l uses the spatial hash
  uint32_t hash_mask[kMaxLevels];    // hashed levels: table size - 1 (table size is a power of 2)
  int64_t offset[kMaxLevels + 1];    // level l owns rows offset[l] .. offset[l+1]-1
};

enum class EmbeddingType { kFloat32, kFloat16 };

// out[n, l*F + f] = sum over the 2^D corners of weight * embeddings[row, f], accumulated in fp32.
//   x:          [n, dim] float32 in [0, 1]
//   embeddings: [offset[L], features] float32 or float16
//   out:        [n, L * features] float32
cudaError_t launch_forward(const float* x, const void* embeddings, EmbeddingType type, float* out,
                           int64_t n, int dim, int features, const Levels& levels,
                           cudaStream_t stream);

// Backward of launch_forward.
//   grad_out:        [n, L * features] float32
//   grad_embeddings: [offset[L], features] float32, zero-initialised, accumulated with atomicAdd;
//                    nullptr to skip
//   grad_x_levels:   [n, L, dim] float32, per-level input gradients (the caller sums over L,
//                    which keeps it deterministic); nullptr to skip
cudaError_t launch_backward(const float* grad_out, const float* x, const void* embeddings,
                            EmbeddingType type, float* grad_embeddings, float* grad_x_levels,
                            int64_t n, int dim, int features, const Levels& levels,
                            cudaStream_t stream);

}  // namespace hashgrid
}  // namespace avatar3d
