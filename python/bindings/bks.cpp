// BKS silica potential: parameters -> table, evaluation over a half pair list (numpy on the
// CPU, raw device pointers for CUDA). mlipbias.potentials.BKS is the user-facing face.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bks_cuda.hpp"
#include "bindings.hpp"
#include "bks.hpp"
#include "common.hpp"

namespace py = pybind11;
using mlipbias::Error;
namespace bks = mlipbias::bks;

namespace {

using mlipbias_bindings::DoubleArray;

using IndexArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

std::vector<double> square_matrix(const DoubleArray& a, size_t n, const char* name) {
  if (a.ndim() != 2 || static_cast<size_t>(a.shape(0)) != n || static_cast<size_t>(a.shape(1)) != n) {
    throw Error(std::string("BKS: ") + name + " must have shape (" + std::to_string(n) + ", " + std::to_string(n) +
                ")");
  }
  return std::vector<double>(a.data(), a.data() + n * n);
}

void require_1d(const IndexArray& a, const char* name) {
  if (a.ndim() != 1) throw Error(std::string("BKS: ") + name + " must be one-dimensional, got ndim " + std::to_string(a.ndim()));
}

}  // namespace

MLIPBIAS_BINDINGS(bks) {
  py::class_<bks::Table>(m, "BKSTable",
                         "Precomputed BKS parameters (make one with bks_table); read-only summary attributes.")
      .def_readonly("n_types", &bks::Table::n_types)
      .def_readonly("alpha", &bks::Table::alpha)
      .def_readonly("e_shift", &bks::Table::e_shift, "LAMMPS coul/dsf e_shift (1/A)")
      .def_readonly("f_shift", &bks::Table::f_shift, "LAMMPS coul/dsf f_shift (1/A^2)")
      .def_property_readonly(
          "self_energy",
          [](const bks::Table& t) { return std::vector<double>(t.self_energy, t.self_energy + t.n_types); },
          "DSF self energy of one atom of each type (eV)")
      .def_property_readonly(
          "offset",
          [](const bks::Table& t) {
            py::array_t<double> out({t.n_types, t.n_types});
            auto o = out.mutable_unchecked<2>();
            for (int a = 0; a < t.n_types; ++a)
              for (int b = 0; b < t.n_types; ++b) o(a, b) = t.offset[a * bks::kMaxTypes + b];
            return out;
          },
          "short-range energy subtracted at the cutoff for each type pair (eV)");

  m.def(
      "bks_table",
      [](std::vector<std::string> names, std::vector<double> charges, const DoubleArray& A, const DoubleArray& rho,
         const DoubleArray& C, const DoubleArray& D, double cutoff_short, double cutoff_coulomb, double alpha,
         double coulomb_constant, bool shift_short, const std::string& erfc) {
        bks::Parameters p;
        const size_t n = charges.size();
        p.names = std::move(names);
        p.charges = std::move(charges);
        p.A = square_matrix(A, n, "A");
        p.rho = square_matrix(rho, n, "rho");
        p.C = square_matrix(C, n, "C");
        p.D = square_matrix(D, n, "D");
        p.cutoff_short = cutoff_short;
        p.cutoff_coulomb = cutoff_coulomb;
        p.alpha = alpha;
        p.coulomb_constant = coulomb_constant;
        p.shift_short = shift_short;
        if (erfc == "lammps") {
          p.erfc = bks::Erfc::lammps;
        } else if (erfc == "exact") {
          p.erfc = bks::Erfc::exact;
        } else {
          throw Error("BKS: erfc = '" + erfc + "', expected 'lammps' or 'exact'");
        }
        return bks::make_table(p);
      },
      py::arg("names"), py::arg("charges"), py::arg("A"), py::arg("rho"), py::arg("C"), py::arg("D"),
      py::arg("cutoff_short"), py::arg("cutoff_coulomb"), py::arg("alpha"), py::arg("coulomb_constant"),
      py::arg("shift_short"), py::arg("erfc"),
      "Check BKS parameters (per type: names, charges; per type pair: (n, n) arrays A, rho, C, D) and "
      "precompute the table. Units eV, A, e.");

  m.def(
      "bks_compute",
      [](const bks::Table& table, const IndexArray& types, const IndexArray& i, const IndexArray& j,
         const DoubleArray& D, bool energies, bool forces, int num_threads) {
        require_1d(types, "types");
        require_1d(i, "i");
        require_1d(j, "j");
        const int64_t n_atoms = types.shape(0), n_pairs = i.shape(0);
        if (j.shape(0) != n_pairs) {
          throw Error("BKS: i has " + std::to_string(n_pairs) + " pairs but j has " + std::to_string(j.shape(0)));
        }
        if (D.ndim() != 2 || D.shape(0) != n_pairs || D.shape(1) != 3) {
          throw Error("BKS: D must have shape (" + std::to_string(n_pairs) + ", 3)");
        }
        py::array_t<double> e_out(energies ? n_atoms : 0);
        py::array_t<double> f_out(std::vector<py::ssize_t>{forces ? n_atoms : 0, 3});
        py::array_t<double> virial(std::vector<py::ssize_t>{3, 3});
        double* e_ptr = energies ? e_out.mutable_data() : nullptr;
        double* f_ptr = forces ? f_out.mutable_data() : nullptr;
        bks::Totals totals;
        {
          py::gil_scoped_release release;
          totals = bks::compute(table, n_atoms, types.data(), n_pairs, i.data(), j.data(), D.data(), e_ptr, f_ptr,
                                num_threads);
        }
        std::copy(totals.virial, totals.virial + 9, virial.mutable_data());
        py::dict out;
        out["energy"] = totals.energy;
        out["virial"] = virial;
        if (energies) out["energies"] = e_out;
        if (forces) out["forces"] = f_out;
        out["closest_pair"] = totals.closest_pair;
        out["closest_distance"] = totals.closest_distance;
        return out;
      },
      py::arg("table"), py::arg("types"), py::arg("i"), py::arg("j"), py::arg("D"), py::arg("energies") = true,
      py::arg("forces") = true, py::arg("num_threads") = 0,
      "BKS over a half pair list: types (n,) int, i, j (m,) int, D (m, 3) = x_j - x_i + shift (A). Returns a dict: "
      "energy (eV), virial (3, 3) W = sum r_ij (x) f_j (eV; stress = -W/V), energies (n,), forces (n, 3) (eV/A), "
      "closest_pair (index, -1 if none) and closest_distance (A). num_threads: OpenMP threads, 0 = automatic.");

  m.def(
      "bks_compute_cuda",
      [](const bks::Table& table, int device, uintptr_t stream, int64_t n_atoms, uintptr_t types, int64_t n_pairs,
         uintptr_t i, uintptr_t j, uintptr_t D, uintptr_t energies, uintptr_t forces, uintptr_t energy,
         uintptr_t virial) {
        auto ptr = [](uintptr_t p) { return reinterpret_cast<void*>(p); };
        py::gil_scoped_release release;
        mlipbias::cuda::bks_compute(table, device, ptr(stream), n_atoms, static_cast<const int64_t*>(ptr(types)),
                                    n_pairs, static_cast<const int64_t*>(ptr(i)), static_cast<const int64_t*>(ptr(j)),
                                    static_cast<const double*>(ptr(D)), static_cast<double*>(ptr(energies)),
                                    static_cast<double*>(ptr(forces)), static_cast<double*>(ptr(energy)),
                                    static_cast<double*>(ptr(virial)));
      },
      py::arg("table"), py::arg("device"), py::arg("stream"), py::arg("n_atoms"), py::arg("types"),
      py::arg("n_pairs"), py::arg("i"), py::arg("j"), py::arg("D"), py::arg("energies"), py::arg("forces"),
      py::arg("energy"), py::arg("virial"),
      "BKS on a CUDA device from raw device pointers (int64 types, i, j; float64 D, outputs). Results are added "
      "to the zeroed outputs; asynchronous on `stream`. Use mlipbias.potentials.BKS.evaluate_pairs instead.");

  m.def(
      "bks_pair_energy",
      [](const bks::Table& table, int a, int b, const DoubleArray& r) {
        if (a < 0 || a >= table.n_types || b < 0 || b >= table.n_types) throw Error("BKS: type index out of range");
        py::array_t<double> e(r.size()), fpair(r.size());
        for (py::ssize_t k = 0; k < r.size(); ++k) {
          double f;
          e.mutable_data()[k] = bks::pair_energy(table, a, b, r.data()[k] * r.data()[k], &f);
          fpair.mutable_data()[k] = f;
        }
        return py::make_tuple(e, fpair);
      },
      py::arg("table"), py::arg("a"), py::arg("b"), py::arg("r"),
      "Pair energy U_ab(r) (eV) and fpair = -(dU/dr)/r (eV/A^2) at distances r (A), without self energies.");
}
