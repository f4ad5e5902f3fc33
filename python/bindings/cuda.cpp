// Whether this build has CUDA kernels and whether a device is usable right now.
#include <string>

#include "device.hpp"
#include "bindings.hpp"

MLIPBIAS_BINDINGS(cuda) {
  m.def("cuda_compiled", &mlipbias::cuda::compiled_with_cuda,
        "True when this build contains the CUDA kernels.");
  m.def(
      "cuda_device_count",
      []() {
        std::string why;
        int n = mlipbias::cuda::device_count(&why);
        return pybind11::make_tuple(n, why);
      },
      "(number of usable CUDA devices, reason when there are none)");
}
