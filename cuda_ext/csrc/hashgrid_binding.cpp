// Torch binding of the hash-grid kernels: registers torch.ops.avatar3d_hashgrid.{forward,backward}.
//
// Registered with TORCH_LIBRARY (no pybind11), so the JIT build loads it with
// torch.utils.cpp_extension.load(..., is_python_module=False) and the ops are reached through
// torch.ops. Argument checks here are a second line of defence: the Python public function
// (avatar3d.cuda_ext.hash_grid_encode) checks shapes, dtypes and ranges first.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "hashgrid.h"

namespace avatar3d {
namespace hashgrid {
namespace {

Levels make_levels(at::IntArrayRef resolutions, at::IntArrayRef offsets, at::IntArrayRef hashed,
                   int64_t dim) {
  const int64_t num_levels = static_cast<int64_t>(resolutions.size());
  TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxLevels, "hashgrid: 1..", kMaxLevels,
              " levels supported, got ", num_levels);
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == num_levels + 1,
              "hashgrid: offsets must have num_levels + 1 entries");
  TORCH_CHECK(static_cast<int64_t>(hashed.size()) == num_levels,
              "hashgrid: hashed must have num_levels entries");
  Levels lv{};
  lv.num_levels = static_cast<int>(num_levels);
  lv.offset[0] = offsets[0];
  TORCH_CHECK(offsets[0] == 0, "hashgrid: offsets[0] must be 0");
  for (int64_t l = 0; l < num_levels; ++l) {
    const int64_t res = resolutions[l];
    const int64_t size = offsets[l + 1] - offsets[l];
    TORCH_CHECK(res >= 1 && res <= (int64_t{1} << 24), "hashgrid: bad resolution ", res);
    int64_t vertices = 1;
    for (int64_t d = 0; d < dim; ++d) vertices *= res + 1;
    lv.resolution[l] = static_cast<uint32_t>(res);
    lv.offset[l + 1] = offsets[l + 1];
    if (hashed[l]) {
      TORCH_CHECK(size > 0 && (size & (size - 1)) == 0 && size <= (int64_t{1} << 30),
                  "hashgrid: hashed level ", l, " needs a power-of-two table size, got ", size);
      lv.hashed_mask |= 1u << l;
      lv.hash_mask[l] = static_cast<uint32_t>(size - 1);
    } else {
      TORCH_CHECK(size == vertices, "hashgrid: dense level ", l, " needs ", vertices, " rows, got ",
                  size);
      lv.hash_mask[l] = 0;
    }
  }
  return lv;
}

EmbeddingType embedding_type(const at::Tensor& embeddings) {
  if (embeddings.scalar_type() == at::kFloat) return EmbeddingType::kFloat32;
  TORCH_CHECK(embeddings.scalar_type() == at::kHalf,
              "hashgrid: embeddings must be float32 or float16, got ", embeddings.scalar_type());
  return EmbeddingType::kFloat16;
}

void check_inputs(const at::Tensor& x, const at::Tensor& embeddings, const Levels& lv) {
  TORCH_CHECK(x.is_cuda() && embeddings.is_cuda(), "hashgrid: x and embeddings must be CUDA tensors");
  TORCH_CHECK(x.device() == embeddings.device(), "hashgrid: x and embeddings on different devices");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "hashgrid: x must be float32");
  TORCH_CHECK(x.dim() == 2 && (x.size(1) == 2 || x.size(1) == 3), "hashgrid: x must be [N, 2|3]");
  TORCH_CHECK(x.is_contiguous() && embeddings.is_contiguous(), "hashgrid: inputs must be contiguous");
  TORCH_CHECK(embeddings.dim() == 2 && embeddings.size(0) == lv.offset[lv.num_levels],
              "hashgrid: embeddings must be [total_params, F]");
  embedding_type(embeddings);
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "hashgrid: ", what, " failed: ", cudaGetErrorString(err));
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& embeddings,
                   at::IntArrayRef resolutions, at::IntArrayRef offsets, at::IntArrayRef hashed) {
  const Levels lv = make_levels(resolutions, offsets, hashed, x.size(1));
  check_inputs(x, embeddings, lv);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0);
  const int64_t features = embeddings.size(1);
  at::Tensor out = at::empty({n, lv.num_levels * features}, x.options().dtype(at::kFloat));
  check_launch(launch_forward(x.data_ptr<float>(), embeddings.data_ptr(), embedding_type(embeddings),
                              out.data_ptr<float>(), n, static_cast<int>(x.size(1)),
                              static_cast<int>(features), lv, c10::cuda::getCurrentCUDAStream()),
               "forward kernel launch");
  return out;
}

// Returns (grad_embeddings [total, F] in the embeddings' dtype, grad_x [N, D] float32); a gradient
// that was not asked for comes back as an empty tensor.
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor& embeddings,
                                            at::IntArrayRef resolutions,
                                            at::IntArrayRef offsets, at::IntArrayRef hashed,
                                            bool need_embeddings,
                                            bool need_x) {
  const Levels lv = make_levels(resolutions, offsets, hashed, x.size(1));
  check_inputs(x, embeddings, lv);
  const int64_t n = x.size(0);
  const int64_t dim = x.size(1);
  const int64_t features = embeddings.size(1);
  TORCH_CHECK(grad_out.is_cuda() && grad_out.scalar_type() == at::kFloat && grad_out.is_contiguous(),
              "hashgrid: grad_out must be a contiguous float32 CUDA tensor");
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == n &&
                  grad_out.size(1) == lv.num_levels * features,
              "hashgrid: grad_out must be [N, L*F]");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor grad_emb32 = need_embeddings ? at::zeros({embeddings.size(0), features}, f32) : at::Tensor();
  at::Tensor grad_x_levels = need_x ? at::empty({n, lv.num_levels, dim}, f32) : at::Tensor();
  check_launch(launch_backward(grad_out.data_ptr<float>(), x.data_ptr<float>(), embeddings.data_ptr(),
                               embedding_type(embeddings),
                               need_embeddings ? grad_emb32.data_ptr<float>() : nullptr,
                               need_x ? grad_x_levels.data_ptr<float>() : nullptr, n,
                               static_cast<int>(dim), static_cast<int>(features), lv,
                               c10::cuda::getCurrentCUDAStream()),
               "backward kernel launch");
  at::Tensor grad_emb = need_embeddings ? grad_emb32.to(embeddings.scalar_type())
                                        : at::empty({0}, embeddings.options());
  at::Tensor grad_x = need_x ? grad_x_levels.sum(1) : at::empty({0}, f32);
  return {grad_emb, grad_x};
}

}  // namespace
}  // namespace hashgrid
}  // namespace avatar3d

TORCH_LIBRARY(avatar3d_hashgrid, m) {
  m.def("forward(Tensor x, Tensor embeddings, int[] resolutions, int[] offsets, int[] hashed) -> Tensor");
  m.def(
      "backward(Tensor grad_out, Tensor x, Tensor embeddings, int[] resolutions, int[] offsets, "
      "int[] hashed, bool need_embeddings, bool need_x) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(avatar3d_hashgrid, CUDA, m) {
  m.impl("forward", &avatar3d::hashgrid::forward);
  m.impl("backward", &avatar3d::hashgrid::backward);
}
