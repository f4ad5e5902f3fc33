// Registration of the pieces of the `mlipbias._core` module.
//
// Each binding file defines its functions with MLIPBIAS_BINDINGS(name) { ... }, which adds
// them to the module when it is imported; no central list has to be edited.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace mlipbias_bindings {

using Registrar = void (*)(pybind11::module_&);
int add_registrar(const char* name, Registrar fn);

// Arrays as the C++ core takes them: contiguous, converted from any numeric dtype.
using IntArray = pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast>;
using DoubleArray = pybind11::array_t<double, pybind11::array::c_style | pybind11::array::forcecast>;

// "(n, 3)": a shape as numpy prints it, for error messages.
inline std::string shape_of(const pybind11::array& a) {
  std::string s = "(";
  for (pybind11::ssize_t k = 0; k < a.ndim(); ++k) s += (k ? ", " : "") + std::to_string(a.shape(k));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

}  // namespace mlipbias_bindings

#define MLIPBIAS_BINDINGS(name)                                                                 \
  static void mlipbias_register_##name(pybind11::module_& m);                                  \
  [[maybe_unused]] static const int mlipbias_registered_##name =                                \
      mlipbias_bindings::add_registrar(#name, &mlipbias_register_##name);                       \
  static void mlipbias_register_##name(pybind11::module_& m)
