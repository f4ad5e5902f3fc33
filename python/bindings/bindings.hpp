// Registration of the pieces of the `mlipbias._core` module.
//
// Each binding file defines its functions with MLIPBIAS_BINDINGS(name) { ... }, which adds
// them to the module when it is imported; no central list has to be edited.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>

#include "common.hpp"
#include "symmetry_functions.hpp"

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

// The CSR neighbour arrays of one call (see NeighbourView), checked, and kept alive while the core
// reads them through `view`. Centres are the first atoms of `species`.
struct Neighbours {
  IntArray species, offsets, j;
  DoubleArray D;
  mlipbias::NeighbourView view;

  Neighbours(IntArray species_, IntArray offsets_, IntArray j_, DoubleArray D_)
      : species(std::move(species_)), offsets(std::move(offsets_)), j(std::move(j_)), D(std::move(D_)) {
    using mlipbias::Error;
    if (species.ndim() != 1) throw Error("species must have shape (n_atoms,), got " + shape_of(species));
    if (offsets.ndim() != 1 || offsets.shape(0) < 1)
      throw Error("offsets must have shape (n_centers + 1,), got " + shape_of(offsets));
    if (j.ndim() != 1) throw Error("j must have shape (n_pairs,), got " + shape_of(j));
    const int64_t n_pairs = j.shape(0);
    if (D.ndim() != 2 || D.shape(0) != n_pairs || D.shape(1) != 3)
      throw Error("D must have shape (n_pairs, 3) = (" + std::to_string(n_pairs) + ", 3), got " + shape_of(D));
    const int64_t last = offsets.data()[offsets.shape(0) - 1];
    if (last != n_pairs)
      throw Error("offsets[-1] = " + std::to_string(last) + " must equal the number of pairs len(j) = " +
                  std::to_string(n_pairs));
    if (offsets.shape(0) - 1 > species.shape(0))
      throw Error("offsets describe " + std::to_string(offsets.shape(0) - 1) + " centres but species has " +
                  std::to_string(species.shape(0)) + " atoms (centres are the first atoms)");
    view.n_centers = offsets.shape(0) - 1;
    view.n_atoms = species.shape(0);
    view.species = species.data();
    view.offsets = offsets.data();
    view.j = j.data();
    view.D = D.data();
  }
};

}  // namespace mlipbias_bindings

#define MLIPBIAS_BINDINGS(name)                                                                 \
  static void mlipbias_register_##name(pybind11::module_& m);                                  \
  [[maybe_unused]] static const int mlipbias_registered_##name =                                \
      mlipbias_bindings::add_registrar(#name, &mlipbias_register_##name);                       \
  static void mlipbias_register_##name(pybind11::module_& m)
