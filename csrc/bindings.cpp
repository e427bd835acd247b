// The r1_megatron._C extension: registers the CUDA ops as torch.ops.r1_megatron.* (so they work with
// torch.compile graphs and need no pybind signatures); importing the Python module runs the registrations.
// Schemas and CUDA implementations are registered here, in host-compiled code, rather than in the .cu files.
#include <torch/extension.h>
#include <torch/library.h>

#include <tuple>

namespace r1_megatron {
std::tuple<at::Tensor, at::Tensor> gumbel_argmax_partial_cuda(const at::Tensor& logits,
                                                               const at::Tensor& temperature,
                                                               const at::Tensor& seeds, const at::Tensor& steps,
                                                               int64_t vocab_start);
}  // namespace r1_megatron

TORCH_LIBRARY(r1_megatron, m) {
  m.def(
      "gumbel_argmax_partial(Tensor logits, Tensor temperature, Tensor seeds, Tensor steps, int vocab_start)"
      " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(r1_megatron, CUDA, m) {
  m.impl("gumbel_argmax_partial", &r1_megatron::gumbel_argmax_partial_cuda);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "r1_megatron CUDA ops, registered under torch.ops.r1_megatron";
}
