// Host-side helpers shared by every CUDA entry point of mlipbias.
//
// These are declared for every build; without CUDA they report that the build has no
// CUDA kernels. Kernels take device pointers (for example torch CUDA tensors' data_ptr)
// and never allocate on behalf of the caller unless their documentation says so.
#pragma once

#include <string>

namespace mlipbias {
namespace cuda {

// True when this build contains CUDA kernels (nvcc was found at build time).
bool compiled_with_cuda();

// Number of usable CUDA devices; 0 when none, with the reason in *why (driver missing,
// no device, build without CUDA).
int device_count(std::string* why = nullptr);

// Throws mlipbias::Error("no CUDA device: <reason>") unless a device is usable.
void require_device();

}  // namespace cuda
}  // namespace mlipbias
