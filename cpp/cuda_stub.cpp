// Definitions of the cuda/device.hpp helpers for builds without CUDA kernels.
// With CUDA, cuda/device.cu provides them and this file compiles to nothing.
#ifndef MLIPBIAS_WITH_CUDA

#include "../cuda/device.hpp"

#include "common.hpp"

namespace mlipbias {
namespace cuda {

bool compiled_with_cuda() { return false; }

int device_count(std::string* why) {
  if (why) *why = "mlipbias was built without CUDA kernels (no nvcc at build time, or MLIPBIAS_CUDA=OFF)";
  return 0;
}

void require_device() {
  std::string why;
  device_count(&why);
  throw Error("no CUDA device: " + why);
}

}  // namespace cuda
}  // namespace mlipbias

#endif
