// Cell-list neighbor search on the CPU (API and conventions in neighbors.hpp, the shared
// bin arithmetic in neighbors_math.hpp).
//
// count(): validate and size the grid (one pass over the atoms for bounds and NaN/inf),
// counting-sort the atoms by bin (stable, so atoms keep ascending order inside a bin),
// then count the pairs of each atom and take the prefix sum. fill(): repeat the search and
// write each atom's pairs from its offset on. Both passes split the atoms over OpenMP
// threads; every atom writes only its own slice, so the output is the same for any number
// of threads, and it lands in its final place. Counting first costs a second search, and
// saves growing buffers (reallocations, page faults) and merging per-thread buffers.
#include "neighbors.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.hpp"
#include "neighbors_math.hpp"

namespace mlipbias {

namespace {

// Below this many atoms, starting threads costs more than it saves.
constexpr int64_t kParallelMinAtoms = 2000;

int thread_count(int n_threads, int64_t n_atoms) {
#ifdef _OPENMP
  if (n_threads > 0) return n_threads;
  return n_atoms >= kParallelMinAtoms ? omp_get_max_threads() : 1;
#else
  (void)n_threads;
  (void)n_atoms;
  return 1;
#endif
}

}  // namespace

struct NeighborSearch::Scratch {
  std::vector<int> bin_start, cursor, atom, slot, bin, wrap, wrap_of_atom;
  std::vector<double> wrapped, wrapped_of_atom;
  std::vector<int64_t> offsets{0};
  cell_list::Grid grid{};
  NeighborOptions options;
  int n_atoms = -1;  // -1 until a count() succeeds

  cell_list::Bins bins() const {
    return cell_list::Bins{bin_start.data(), atom.data(), wrapped.data(), wrap.data(), slot.data(), bin.data()};
  }
};

NeighborSearch::NeighborSearch() : scratch_(new Scratch) {}
NeighborSearch::~NeighborSearch() = default;

const std::vector<int64_t>& NeighborSearch::offsets() const { return scratch_->offsets; }

int64_t NeighborSearch::count(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                              const NeighborOptions& options) {
  Scratch& s = *scratch_;
  s.n_atoms = -1;
  check_search_input(positions, n_atoms, cell, pbc);
  if (options.n_threads < 0) throw Error("n_threads must be >= 0, got " + std::to_string(options.n_threads));
  const int64_t max_neighbors = cell_list::neighbor_limit(options);

  cell_list::Grid grid = cell_list::make_grid(cell, pbc, options.cutoff);
  const int n = static_cast<int>(n_atoms);
  [[maybe_unused]] const int threads = thread_count(options.n_threads, n_atoms);
  cell_list::Bounds bounds;
  double* lo = bounds.lo;
  double* hi = bounds.hi;
  int first_bad = n;
#pragma omp parallel for num_threads(threads) if (threads > 1) reduction(min : lo[:3], first_bad) reduction(max : hi[:3])
  for (int i = 0; i < n; ++i) {
    const double* x = positions + 3 * static_cast<int64_t>(i);
    if (cell_list::position_is_finite(x)) {
      cell_list::extend_bounds(grid, x, lo, hi);
    } else {
      first_bad = std::min(first_bad, i);
    }
  }
  if (first_bad < n) cell_list::throw_non_finite_position(first_bad, positions + 3 * static_cast<int64_t>(first_bad));
  cell_list::finish_grid(grid, bounds, n_atoms, options.cutoff);

  // Counting sort of the atoms by bin.
  const int n_bins = grid.n_bins[0] * grid.n_bins[1] * grid.n_bins[2];
  s.bin.resize(n);
  s.wrapped_of_atom.resize(3 * static_cast<size_t>(n));
  s.wrap_of_atom.resize(3 * static_cast<size_t>(n));
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int i = 0; i < n; ++i) {
    s.bin[i] = cell_list::locate_atom(grid, positions + 3 * static_cast<int64_t>(i), &s.wrapped_of_atom[3 * i],
                                      &s.wrap_of_atom[3 * i]);
  }
  s.bin_start.assign(static_cast<size_t>(n_bins) + 1, 0);
  for (int i = 0; i < n; ++i) s.bin_start[s.bin[i] + 1] += 1;
  for (int b = 0; b < n_bins; ++b) s.bin_start[b + 1] += s.bin_start[b];
  s.cursor.assign(s.bin_start.begin(), s.bin_start.end() - 1);
  s.atom.resize(n);
  s.slot.resize(n);
  s.wrapped.resize(3 * static_cast<size_t>(n));
  s.wrap.resize(3 * static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const int slot = s.cursor[s.bin[i]]++;
    s.atom[slot] = i;
    s.slot[i] = slot;
    for (int c = 0; c < 3; ++c) {
      s.wrapped[3 * slot + c] = s.wrapped_of_atom[3 * i + c];
      s.wrap[3 * slot + c] = s.wrap_of_atom[3 * i + c];
    }
  }

  // Pairs per atom, then offsets[i + 1] = offsets[i] + count of atom i.
  const cell_list::Bins bins = s.bins();
  s.offsets.resize(static_cast<size_t>(n) + 1);
  int64_t* offsets = s.offsets.data();
  offsets[0] = 0;
  const bool half = options.half, self_interaction = options.self_interaction;
  // The first atom found over the limit; every thread stops once one is.
  std::atomic<bool> too_many{false};
  int over_atom = -1;
  int64_t over_count = 0;
  // Atoms in bin order: consecutive atoms search the same bins, which stay in cache.
#pragma omp parallel for schedule(dynamic, 256) num_threads(threads) if (threads > 1)
  for (int slot = 0; slot < n; ++slot) {
    if (too_many.load(std::memory_order_relaxed)) continue;
    const int i = s.atom[slot];
    cell_list::CountPairs pairs;
    cell_list::visit_neighbors(grid, bins, i, half, self_interaction, pairs);
    offsets[i + 1] = pairs.n;
    if (pairs.n > max_neighbors && !too_many.exchange(true)) {
      over_atom = i;
      over_count = pairs.n;
    }
  }
  if (too_many) cell_list::throw_too_many_neighbors(over_atom, over_count, n_atoms, options);
  for (int i = 0; i < n; ++i) offsets[i + 1] += offsets[i];

  s.grid = grid;
  s.options = options;
  s.n_atoms = n;
  return offsets[n];
}

void NeighborSearch::fill(int64_t* first, int64_t* second, int64_t* shifts, double* vectors, double* distances) {
  const Scratch& s = *scratch_;
  if (s.n_atoms < 0) throw Error("NeighborSearch::fill() needs a successful count() first");
  const cell_list::Grid grid = s.grid;
  const cell_list::Bins bins = s.bins();
  const int64_t* offsets = s.offsets.data();
  const int n = s.n_atoms;
  const bool half = s.options.half, self_interaction = s.options.self_interaction;
  [[maybe_unused]] const int threads = thread_count(s.options.n_threads, n);
  // Atoms in index order: the pairs are written sequentially (in bin order the writes would
  // jump around the output, which is much larger than the bins, at a cost in TLB misses).
#pragma omp parallel for schedule(dynamic, 256) num_threads(threads) if (threads > 1)
  for (int i = 0; i < n; ++i) {
    cell_list::WritePairs write{offsets[i], i, first, second, shifts, vectors, distances};
    cell_list::visit_neighbors(grid, bins, i, half, self_interaction, write);
  }
}

void NeighborSearch::compute(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                             const NeighborOptions& options, NeighborList& out) {
  const size_t n_pairs = static_cast<size_t>(count(positions, n_atoms, cell, pbc, options));
  out.n_atoms = n_atoms;
  out.first.resize(n_pairs);
  out.second.resize(n_pairs);
  out.shifts.resize(options.return_shifts ? 3 * n_pairs : 0);
  out.vectors.resize(options.return_vectors ? 3 * n_pairs : 0);
  out.distances.resize(options.return_distances ? n_pairs : 0);
  fill(out.first.data(), out.second.data(), options.return_shifts ? out.shifts.data() : nullptr,
       options.return_vectors ? out.vectors.data() : nullptr, options.return_distances ? out.distances.data() : nullptr);
  out.offsets = scratch_->offsets;
}

NeighborList neighbor_list(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                           const NeighborOptions& options) {
  NeighborSearch search;
  NeighborList out;
  search.compute(positions, n_atoms, cell, pbc, options, out);
  return out;
}

}  // namespace mlipbias
