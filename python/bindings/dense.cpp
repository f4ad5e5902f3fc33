// Python face of the networks' vectorised activations (cpp/dense.hpp), for tests against libm.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bindings.hpp"
#include "common.hpp"
#include "dense.hpp"

namespace py = pybind11;

MLIPBIAS_BINDINGS(dense) {
  using mlipbias_bindings::DoubleArray;
  m.def(
      "nn_simd_width", [](int width) { return mlipbias::activation_simd_width(width); }, py::arg("width") = -1,
      "Vector width (doubles) of the networks' activations: 8 AVX-512, 4 AVX2, 2 SSE2. width >= 0 caps it for the "
      "whole process (0: the CPU's best; for tests of every path); returns the width in use.");
  m.def(
      "nn_activation",
      [](const std::string& kind, DoubleArray z) {
        mlipbias::Activation act;
        if (kind == "tanh")
          act = mlipbias::Activation::tanh;
        else if (kind == "silu")
          act = mlipbias::Activation::silu;
        else
          throw mlipbias::Error("activation must be 'tanh' or 'silu', got '" + kind + "'");
        if (z.ndim() != 1) throw mlipbias::Error("z must be one-dimensional, got " + mlipbias_bindings::shape_of(z));
        const py::ssize_t n = z.shape(0);
        DoubleArray value(n), d1(n), d2(n);
        mlipbias::activation_rows(act, static_cast<int>(n), z.data(), value.mutable_data(), d1.mutable_data(),
                                  d2.mutable_data());
        return py::make_tuple(value, d1, d2);
      },
      py::arg("kind"), py::arg("z"),
      "act(z), act'(z), act''(z) of a 1-D array by the vectorised kernel the networks use (z: pre-activations).");
}
