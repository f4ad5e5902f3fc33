// Neighbor lists (cpp/neighbors.hpp) for Python: numpy in, numpy out (the search writes
// into the numpy arrays directly), and the two-stage CUDA search on raw device pointers
// for mlipbias.neighbors.neighbor_list_cuda.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "common.hpp"
#include "neighbors.hpp"
#include "neighbors_cuda.hpp"

namespace py = pybind11;

namespace {

using mlipbias_bindings::shape_of;
using Doubles = mlipbias_bindings::DoubleArray;
using Bools = py::array_t<bool, py::array::c_style | py::array::forcecast>;


void check_cell_and_pbc(const Doubles& cell, const Bools& pbc) {
  if (cell.ndim() != 2 || cell.shape(0) != 3 || cell.shape(1) != 3) {
    throw mlipbias::Error("cell must have shape (3, 3), got " + shape_of(cell));
  }
  if (pbc.ndim() != 1 || pbc.shape(0) != 3) throw mlipbias::Error("pbc must have shape (3,), got " + shape_of(pbc));
}

}  // namespace

MLIPBIAS_BINDINGS(neighbors) {
  m.attr("default_max_neighbors") = mlipbias::kDefaultMaxNeighbors;
  m.def(
      "neighbor_list",
      [](Doubles positions, Doubles cell, Bools pbc, double cutoff, bool self_interaction, bool half,
         bool distances, bool vectors, bool shifts, int n_threads, int64_t max_neighbors) {
        if (positions.ndim() != 2 || positions.shape(1) != 3) {
          throw mlipbias::Error("positions must have shape (n_atoms, 3), got " + shape_of(positions));
        }
        check_cell_and_pbc(cell, pbc);
        mlipbias::NeighborOptions options;
        options.cutoff = cutoff;
        options.half = half;
        options.self_interaction = self_interaction;
        options.return_distances = distances;
        options.return_vectors = vectors;
        options.return_shifts = shifts;
        options.n_threads = n_threads;
        options.max_neighbors = max_neighbors;
        // Count, then let the search write straight into uninitialised numpy arrays.
        mlipbias::NeighborSearch search;
        int64_t n_pairs = 0;
        {
          py::gil_scoped_release release;
          n_pairs = search.count(positions.data(), positions.shape(0), cell.data(), pbc.data(), options);
        }
        py::array_t<int64_t> i(n_pairs), j(n_pairs);
        py::array_t<double> d(distances ? n_pairs : 0);
        py::array_t<double> D(std::vector<py::ssize_t>{vectors ? n_pairs : 0, 3});
        py::array_t<int64_t> S(std::vector<py::ssize_t>{shifts ? n_pairs : 0, 3});
        {
          py::gil_scoped_release release;
          search.fill(i.mutable_data(), j.mutable_data(), shifts ? S.mutable_data() : nullptr,
                      vectors ? D.mutable_data() : nullptr, distances ? d.mutable_data() : nullptr);
        }
        const std::vector<int64_t>& offsets = search.offsets();
        py::dict out;
        out["i"] = i;
        out["j"] = j;
        if (distances) out["d"] = d;
        if (vectors) out["D"] = D;
        if (shifts) out["S"] = S;
        out["offsets"] = py::array_t<int64_t>(static_cast<py::ssize_t>(offsets.size()), offsets.data());
        return out;
      },
      py::arg("positions"), py::arg("cell"), py::arg("pbc"), py::arg("cutoff"), py::arg("self_interaction") = false,
      py::arg("half") = false, py::arg("distances") = true, py::arg("vectors") = true, py::arg("shifts") = true,
      py::arg("n_threads") = 0, py::arg("max_neighbors") = mlipbias::kDefaultMaxNeighbors,
      "Neighbor list of positions (n, 3) in a cell (3, 3) with periodicity pbc (3,), cutoff in A. Returns a dict "
      "with i, j (int64), d (float64), D (float64, (n_pairs, 3)), S (int64, (n_pairs, 3)) and offsets (n + 1). "
      "ValueError when an atom has more than max_neighbors neighbours (0: no limit). "
      "Conventions: cpp/neighbors.hpp; use mlipbias.neighbors.neighbor_list.");

  // The C++ MD-loop form (NeighborSearch::compute into a NeighborList that is reused
  // between calls), for C++ parity tests; returns copies.
  struct ReusedSearch {
    mlipbias::NeighborSearch search;
    mlipbias::NeighborList list;
  };
  py::class_<ReusedSearch>(m, "ReusedNeighborSearch",
                           "NeighborSearch::compute into a NeighborList kept between calls (returns copies).")
      .def(py::init<>())
      .def(
          "compute",
          [](ReusedSearch& self, Doubles positions, Doubles cell, Bools pbc, double cutoff, bool half) {
            if (positions.ndim() != 2 || positions.shape(1) != 3) {
              throw mlipbias::Error("positions must have shape (n_atoms, 3), got " + shape_of(positions));
            }
            check_cell_and_pbc(cell, pbc);
            mlipbias::NeighborOptions options;
            options.cutoff = cutoff;
            options.half = half;
            {
              py::gil_scoped_release release;
              self.search.compute(positions.data(), positions.shape(0), cell.data(), pbc.data(), options, self.list);
            }
            const mlipbias::NeighborList& l = self.list;
            const py::ssize_t n_pairs = l.n_pairs();
            py::dict out;
            out["i"] = py::array_t<int64_t>(n_pairs, l.first.data());
            out["j"] = py::array_t<int64_t>(n_pairs, l.second.data());
            out["d"] = py::array_t<double>(n_pairs, l.distances.data());
            out["D"] = py::array_t<double>(std::vector<py::ssize_t>{n_pairs, 3}, l.vectors.data());
            out["S"] = py::array_t<int64_t>(std::vector<py::ssize_t>{n_pairs, 3}, l.shifts.data());
            out["offsets"] = py::array_t<int64_t>(static_cast<py::ssize_t>(l.offsets.size()), l.offsets.data());
            return out;
          },
          py::arg("positions"), py::arg("cell"), py::arg("pbc"), py::arg("cutoff"), py::arg("half") = false);

  py::class_<mlipbias::cuda::NeighborSearch>(
      m, "CudaNeighborSearch",
      "Two-stage neighbor search on a CUDA device: count() then fill() into device arrays (cpp/neighbors.hpp).")
      .def(py::init<>())
      .def(
          "count",
          [](mlipbias::cuda::NeighborSearch& self, std::uintptr_t positions, int64_t n_atoms, Doubles cell, Bools pbc,
             double cutoff, bool half, bool self_interaction, int device, std::uintptr_t stream,
             int64_t max_neighbors) {
            check_cell_and_pbc(cell, pbc);
            mlipbias::NeighborOptions options;
            options.cutoff = cutoff;
            options.half = half;
            options.self_interaction = self_interaction;
            options.max_neighbors = max_neighbors;
            py::gil_scoped_release release;
            return self.count(reinterpret_cast<const double*>(positions), n_atoms, cell.data(), pbc.data(), options,
                              device, reinterpret_cast<void*>(stream));
          },
          py::arg("positions"), py::arg("n_atoms"), py::arg("cell"), py::arg("pbc"), py::arg("cutoff"),
          py::arg("half"), py::arg("self_interaction"), py::arg("device"), py::arg("stream"),
          py::arg("max_neighbors") = mlipbias::kDefaultMaxNeighbors,
          "positions: device pointer to float64 (n_atoms, 3); cell, pbc on the host; stream: a cudaStream_t as an "
          "integer (0 for the default stream); max_neighbors as for neighbor_list (0: no limit). Returns the "
          "number of pairs.")
      .def(
          "fill",
          [](mlipbias::cuda::NeighborSearch& self, std::uintptr_t first, std::uintptr_t second, std::uintptr_t shifts,
             std::uintptr_t vectors, std::uintptr_t distances, std::uintptr_t offsets) {
            py::gil_scoped_release release;
            self.fill(reinterpret_cast<int64_t*>(first), reinterpret_cast<int64_t*>(second),
                      reinterpret_cast<int64_t*>(shifts), reinterpret_cast<double*>(vectors),
                      reinterpret_cast<double*>(distances), reinterpret_cast<int64_t*>(offsets));
          },
          py::arg("first"), py::arg("second"), py::arg("shifts"), py::arg("vectors"), py::arg("distances"),
          py::arg("offsets"),
          "Writes the pairs of the last count() into device arrays given as integer pointers (0 skips one).");
}
