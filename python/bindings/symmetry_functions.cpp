// Python face of cpp/symmetry_functions.hpp: the class SymmetryFunctions with numpy arrays in
// and out. Shapes are checked here; the neighbour structure itself is checked by the core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bindings.hpp"
#include "common.hpp"
#include "symmetry_functions.hpp"

namespace py = pybind11;

namespace {

using mlipbias_bindings::DoubleArray;
using mlipbias_bindings::IntArray;
using mlipbias_bindings::Neighbours;
using mlipbias_bindings::shape_of;



// Reads a (rows, cols) or (n_rhs, rows, cols) array; returns n_rhs (0 for 2-D).
int64_t rhs_count(const py::array& a, int64_t rows, int64_t cols, const char* name, const char* shape) {
  const bool ok2 = a.ndim() == 2 && a.shape(0) == rows && a.shape(1) == cols;
  const bool ok3 = a.ndim() == 3 && a.shape(0) >= 1 && a.shape(1) == rows && a.shape(2) == cols;
  if (!ok2 && !ok3) {
    const std::string dims = std::to_string(rows) + ", " + std::to_string(cols);
    throw mlipbias::Error(std::string(name) + " must have shape " + shape + " = (" + dims + ") or (n_rhs, " + dims +
                          "), got " + shape_of(a));
  }
  return ok2 ? 0 : a.shape(0);
}

}  // namespace

MLIPBIAS_BINDINGS(symmetry_functions) {
  using mlipbias::SymmetryFunctions;
  const char* nb_doc =
      " species (n_atoms,) model element index of every atom; offsets (n_centers+1,) CSR pair offsets by centre;"
      " j (n_pairs,) neighbour atom of each pair; D (n_pairs, 3) r_ij = x_j - x_i in A.";
  m.def(
      "sf_simd_width",
      [](int width) {
        return width < 0 ? SymmetryFunctions::simd_width() : SymmetryFunctions::set_simd_width(width);
      },
      py::arg("width") = -1,
      "Vector width (doubles) of the symmetry-function triplet kernels: 8 AVX-512, 4 AVX2, 2 SSE2. width >= 0 caps "
      "it for the whole process (0: the CPU's best; for tests of every path); returns the width in use.");
  py::class_<SymmetryFunctions>(m, "SymmetryFunctions",
                                "Atom-centred symmetry functions (G2, G4, G5) of a table [n_sf, 8] with columns "
                                "kind, a, b, eta, rs, zeta, lambda, rc (docs/model_file.md).")
      .def(py::init([](DoubleArray table, int64_t n_elements) {
             if (table.ndim() != 2 || table.shape(1) != SymmetryFunctions::kColumns)
               throw mlipbias::Error("the symmetry-function table must have shape (n_sf, 8), got " + shape_of(table));
             return SymmetryFunctions(table.data(), table.shape(0), n_elements);
           }),
           py::arg("table"), py::arg("n_elements"))
      .def_property_readonly("n_sf", &SymmetryFunctions::n_sf)
      .def_property_readonly("n_elements", &SymmetryFunctions::n_elements)
      .def_property_readonly("cutoff", &SymmetryFunctions::cutoff, "largest cutoff of all functions (A)")
      .def(
          "compute",
          [](const SymmetryFunctions& sf, IntArray species, IntArray offsets, IntArray j, DoubleArray D) {
            Neighbours nb(species, offsets, j, D);
            py::array_t<double> G({nb.view.n_centers, sf.n_sf()});
            double* g = G.mutable_data();
            {
              py::gil_scoped_release release;
              sf.compute(nb.view, g);
            }
            return G;
          },
          py::arg("species"), py::arg("offsets"), py::arg("j"), py::arg("D"),
          (std::string("G (n_centers, n_sf).") + nb_doc).c_str())
      .def(
          "compute_with_derivatives",
          [](const SymmetryFunctions& sf, IntArray species, IntArray offsets, IntArray j, DoubleArray D) {
            Neighbours nb(species, offsets, j, D);
            py::array_t<double> G({nb.view.n_centers, sf.n_sf()});
            py::array_t<double> dG({nb.view.n_pairs(), sf.n_sf(), int64_t(3)});
            double *g = G.mutable_data(), *dg = dG.mutable_data();
            {
              py::gil_scoped_release release;
              sf.compute_with_derivatives(nb.view, g, dg);
            }
            return py::make_tuple(G, dG);
          },
          py::arg("species"), py::arg("offsets"), py::arg("j"), py::arg("D"),
          (std::string("(G (n_centers, n_sf), dG (n_pairs, n_sf, 3) = dG_i/dD_ij).") + nb_doc).c_str())
      .def(
          "vjp",
          [](const SymmetryFunctions& sf, IntArray species, IntArray offsets, IntArray j, DoubleArray D,
             DoubleArray dLdG) {
            Neighbours nb(species, offsets, j, D);
            const int64_t n_rhs = rhs_count(dLdG, nb.view.n_centers, sf.n_sf(), "dLdG", "(n_centers, n_sf)");
            const int64_t n_pairs = nb.view.n_pairs();
            py::array_t<double> out = n_rhs == 0 ? py::array_t<double>({n_pairs, int64_t(3)})
                                                 : py::array_t<double>({n_rhs, n_pairs, int64_t(3)});
            double* o = out.mutable_data();
            const double* w = dLdG.data();
            {
              py::gil_scoped_release release;
              sf.vjp(nb.view, n_rhs == 0 ? 1 : n_rhs, w, o);
            }
            return out;
          },
          py::arg("species"), py::arg("offsets"), py::arg("j"), py::arg("D"), py::arg("dLdG"),
          (std::string("dL/dD_ij (n_pairs, 3) from dL/dG (n_centers, n_sf); with a leading n_rhs axis on dLdG, "
                       "(n_rhs, n_pairs, 3).") +
           nb_doc)
              .c_str())
      .def(
          "jvp",
          [](const SymmetryFunctions& sf, IntArray species, IntArray offsets, IntArray j, DoubleArray D,
             DoubleArray t) {
            Neighbours nb(species, offsets, j, D);
            const int64_t n_rhs = rhs_count(t, nb.view.n_pairs(), 3, "t", "(n_pairs, 3)");
            const int64_t n_centers = nb.view.n_centers;
            py::array_t<double> out = n_rhs == 0 ? py::array_t<double>({n_centers, sf.n_sf()})
                                                 : py::array_t<double>({n_rhs, n_centers, sf.n_sf()});
            double* o = out.mutable_data();
            const double* tp = t.data();
            {
              py::gil_scoped_release release;
              sf.jvp(nb.view, n_rhs == 0 ? 1 : n_rhs, tp, o);
            }
            return out;
          },
          py::arg("species"), py::arg("offsets"), py::arg("j"), py::arg("D"), py::arg("t"),
          (std::string("dG (n_centers, n_sf) = sum_j dG_i/dD_ij . t_ij from tangents t (n_pairs, 3); with a "
                       "leading n_rhs axis on t, (n_rhs, n_centers, n_sf).") +
           nb_doc)
              .c_str());
}
