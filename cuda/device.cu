#include <cuda_runtime.h>

#include "common.hpp"
#include "device.hpp"

namespace mlipbias {
namespace cuda {

bool compiled_with_cuda() { return true; }

int device_count(std::string* why) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    if (why) *why = cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  if (count == 0 && why) *why = "the CUDA runtime reports no devices";
  return count;
}

void require_device() {
  std::string why;
  if (device_count(&why) == 0) throw Error("no CUDA device: " + why);
}

}  // namespace cuda
}  // namespace mlipbias
