// Neighbor lists: every pair of atoms closer than a cutoff, with periodic images.
//
// Conventions (the same as ASE's `neighbor_list("ijdDS", ...)`, vesin and matscipy):
//
// * Units: positions, cell, cutoff, vectors and distances in Angstrom (any length unit
//   works, as long as it is the same for all of them).
// * Arrays are row-major and contiguous: positions (n_atoms, 3), cell (3, 3) with the
//   lattice vectors a, b, c as rows, so that a point with fractional coordinates f sits at
//   x = f . cell.
// * A pair is (i, j, S): the centre atom i, the neighbour atom j and the integer periodic
//   shift S = (S_a, S_b, S_c). The neighbour is the image of j translated by S . cell, and
//   the pair vector points from the centre to that image:
//
//       r_ij = x_j - x_i + S_a a + S_b b + S_c c          (ASE's "D")
//       d_ij = |r_ij|,   kept when d_ij < cutoff (strict)  (ASE's "d")
//
//   x_i and x_j are the positions as given (they need not lie inside the cell); r_ij is
//   computed from positions wrapped into the cell, so it equals the formula above to
//   rounding (~1e-15 relative to the largest coordinate).
// * Along a non-periodic direction k, S_k is always 0, atoms may lie anywhere, and the
//   cell vector k is ignored (it may be zero: an isolated molecule has pbc = false and a
//   zero cell). Along a periodic direction the cell vector must be non-zero, and the
//   periodic vectors must be linearly independent.
// * Full list (default): both (i, j, S) and (j, i, -S) are listed. Half list: each pair
//   once, the one with i < j, or for an atom and its own image (i == j) the one whose
//   first non-zero component of S is positive.
// * (i, i, 0) is a pair only with self_interaction (distance 0). An atom and its own
//   periodic images, (i, i, S != 0), are ordinary pairs whenever the cell is smaller
//   than the cutoff.
// * Output order: sorted by i; for one i the order of the neighbours is fixed by the
//   algorithm (deterministic, independent of the number of threads), not sorted by j.
//   offsets gives the CSR view: the pairs of centre i are [offsets[i], offsets[i + 1]).
//
// Algorithm: cell list. Atoms are binned in fractional coordinates into bins about one
// cutoff wide (half a cutoff in cells a few cutoffs across, where that searches less
// volume), measured between bin faces, and each atom is compared with the atoms of the
// bins within reach, so the cost is O(n_atoms) at fixed density. Triclinic cells, mixed
// periodicity and cells thinner than the cutoff (several images of the same atom) all
// follow from the same bin arithmetic (cpp/neighbors_math.hpp, shared with the CUDA
// kernels of cuda/neighbors.cu). A first pass counts the pairs of each atom, a second
// writes them into arrays of the exact size; OpenMP threads share the atoms.
//
// Errors: invalid input throws mlipbias::Error naming the problem (non-finite position,
// cutoff <= 0 or not finite, singular periodic cell, a search wider than the limits below,
// an atom with more than NeighborOptions::max_neighbors neighbours).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"

namespace mlipbias {

// Atom indices, and 3 x atom indices for coordinates, are 32-bit integers inside the search.
constexpr int64_t kMaxNeighborAtoms = 715827882;  // (2^31 - 1) / 3

// The input checks shared by the CPU and CUDA searches (host pointers or device pointers alike).
inline void check_search_input(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc) {
  if (n_atoms < 0 || n_atoms > kMaxNeighborAtoms) {
    throw Error("number of atoms must be between 0 and " + std::to_string(kMaxNeighborAtoms) + ", got " +
                std::to_string(n_atoms));
  }
  if (n_atoms > 0 && positions == nullptr) throw Error("positions is a null pointer");
  if (cell == nullptr || pbc == nullptr) throw Error("cell and pbc must not be null pointers");
}
// Largest number of bins the search visits around each atom: (2 n_a + 1)(2 n_b + 1)(2 n_c + 1)
// where n_k is the number of bins (or, for a cell thinner than the cutoff, of periodic
// images) within the cutoff along direction k. A cutoff of 10 A in a cell with 0.3 A
// between faces needs 67^3 ~ 3e5; beyond this limit, build a supercell first.
constexpr int64_t kMaxNeighborSearchBins = 1000000;
// Default largest number of neighbours of one atom (NeighborOptions::max_neighbors). Dense
// liquids and solids at cutoffs of 10-15 A have a few hundred; thousands mean atoms on top
// of each other or wrong units, and would make the search and its output quadratic.
constexpr int64_t kDefaultMaxNeighbors = 5000;
// Largest distance of an atom from the cell along a periodic direction, in cell lengths.
constexpr double kMaxNeighborWrap = 536870912.0;  // 2^29

// What to compute.
struct NeighborOptions {
  double cutoff = 0.0;            // spherical cutoff (A); pairs with d_ij < cutoff
  bool half = false;              // each pair once instead of in both directions
  bool self_interaction = false;  // also list (i, i, 0) at distance 0
  bool return_shifts = true;      // fill NeighborList::shifts (S)
  bool return_vectors = true;     // fill NeighborList::vectors (D)
  bool return_distances = true;   // fill NeighborList::distances (d)
  int n_threads = 0;              // OpenMP threads; 0: OMP_NUM_THREADS (or all cores) from
                                  // 2000 atoms on, 1 below (threads cost more than they save)
  int64_t max_neighbors = kDefaultMaxNeighbors;  // count() throws, naming the atom and the
                                  // numbers, when an atom has more pairs; 0: no limit. The
                                  // search stops at the first such atom, so a structure
                                  // far too dense fails in milliseconds, not hours. The
                                  // CUDA search names the same atom as a serial CPU one.
};

// The pairs, as plain arrays (n_pairs = first.size()). Vectors that were not requested
// are left empty. Reusing one NeighborList across calls reuses its memory.
struct NeighborList {
  int64_t n_atoms = 0;
  std::vector<int64_t> first;      // [n_pairs] centre atom i (ASE "i")
  std::vector<int64_t> second;     // [n_pairs] neighbour atom j (ASE "j")
  std::vector<int64_t> shifts;     // [n_pairs * 3] periodic shift S (ASE "S")
  std::vector<double> vectors;     // [n_pairs * 3] r_ij = x_j - x_i + S . cell (ASE "D"), A
  std::vector<double> distances;   // [n_pairs] |r_ij| (ASE "d"), A
  std::vector<int64_t> offsets;    // [n_atoms + 1] pairs of centre i: [offsets[i], offsets[i+1])

  int64_t n_pairs() const { return static_cast<int64_t>(first.size()); }
};

// A reusable neighbor search: keeps its scratch memory (bins, per-atom counts) between
// calls, so an MD loop calling it every step does not reallocate. Not thread-safe: use one
// NeighborSearch per thread (each call may use OpenMP threads inside).
//
// Two ways to call it:
// * compute(..., out) fills a NeighborList (whose buffers are reused when `out` is);
// * count(...) then fill(...) writes into arrays the caller allocates once the number of
//   pairs is known (numpy arrays in the Python bindings), the same two stages as the CUDA
//   search below. Both stages run the search; count() stores the per-atom offsets.
class NeighborSearch {
 public:
  NeighborSearch();
  ~NeighborSearch();
  NeighborSearch(const NeighborSearch&) = delete;
  NeighborSearch& operator=(const NeighborSearch&) = delete;

  // positions: [n_atoms * 3]; cell: [9], lattice vectors as rows; pbc: [3], periodicity
  // along a, b, c. Replaces the content of `out`.
  void compute(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
               const NeighborOptions& options, NeighborList& out);

  // Stage 1: validates the input, bins the atoms and counts the pairs of each atom.
  // Returns the number of pairs. options.return_* are ignored (fill() decides).
  int64_t count(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                const NeighborOptions& options);

  // Stage 2: writes the pairs found by the last count(); a null pointer skips that
  // quantity. first, second, distances: [n_pairs]; shifts, vectors: [n_pairs * 3].
  void fill(int64_t* first, int64_t* second, int64_t* shifts, double* vectors, double* distances);

  // [n_atoms + 1] CSR offsets of the last count(): pairs of centre i are [offsets[i], offsets[i+1]).
  const std::vector<int64_t>& offsets() const;

 private:
  struct Scratch;
  std::unique_ptr<Scratch> scratch_;
};

// One-off convenience form of NeighborSearch::compute.
NeighborList neighbor_list(const double* positions, int64_t n_atoms, const double* cell,
                           const bool* pbc, const NeighborOptions& options);

}  // namespace mlipbias
