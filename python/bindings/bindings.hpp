// Registration of the pieces of the `mlipbias._core` module.
//
// Each binding file defines its functions with MLIPBIAS_BINDINGS(name) { ... }, which adds
// them to the module when it is imported; no central list has to be edited.
#pragma once

#include <pybind11/pybind11.h>

namespace mlipbias_bindings {

using Registrar = void (*)(pybind11::module_&);
int add_registrar(const char* name, Registrar fn);

}  // namespace mlipbias_bindings

#define MLIPBIAS_BINDINGS(name)                                                                 \
  static void mlipbias_register_##name(pybind11::module_& m);                                  \
  [[maybe_unused]] static const int mlipbias_registered_##name =                                \
      mlipbias_bindings::add_registrar(#name, &mlipbias_register_##name);                       \
  static void mlipbias_register_##name(pybind11::module_& m)
