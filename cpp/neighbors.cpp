// Cell-list neighbor search on the CPU (API and conventions in neighbors.hpp, the shared
// bin arithmetic in neighbors_math.hpp).
//
// Steps: validate and size the grid (one pass over the atoms for bounds and NaN/inf),
// counting-sort the atoms by bin (stable, so atoms keep ascending order inside a bin),
// then visit the atoms in index order, each against the bins within reach. With several
// threads each takes contiguous chunks of atoms into its own buffer and the chunks are
// concatenated in order, so the output does not depend on the number of threads.
#include "neighbors.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../cuda/device.hpp"
#include "common.hpp"
#include "neighbors_math.hpp"

namespace mlipbias {

namespace {

// Below this many atoms, starting threads costs more than it saves.
constexpr int64_t kParallelMinAtoms = 2000;
// Chunks per thread: enough for dynamic scheduling to even out dense and empty regions.
constexpr int kChunksPerThread = 4;

void clear_pairs(NeighborList& list) {
  list.first.clear();
  list.second.clear();
  list.shifts.clear();
  list.vectors.clear();
  list.distances.clear();
}

struct AppendPair {
  NeighborList& out;
  int64_t i;
  const NeighborOptions& options;

  void operator()(int j, const int* shift, const double* r, double d2) {
    out.first.push_back(i);
    out.second.push_back(j);
    if (options.return_shifts) out.shifts.insert(out.shifts.end(), {shift[0], shift[1], shift[2]});
    if (options.return_vectors) out.vectors.insert(out.vectors.end(), {r[0], r[1], r[2]});
    if (options.return_distances) out.distances.push_back(std::sqrt(d2));
  }
};

// Appends the pairs of centres [begin, end) to `list`; offsets[i] is where centre i starts
// in `list`.
void search_atoms(const cell_list::Grid& grid, const cell_list::Bins& bins, int begin, int end,
                  const NeighborOptions& options, NeighborList& list, int64_t* offsets) {
  for (int i = begin; i < end; ++i) {
    offsets[i] = list.n_pairs();
    AppendPair append{list, i, options};
    cell_list::visit_neighbors(grid, bins, i, options.half, options.self_interaction, append);
  }
}

template <class T>
void copy_into(const std::vector<T>& from, std::vector<T>& to, size_t at) {
  if (!from.empty()) std::memcpy(to.data() + at, from.data(), from.size() * sizeof(T));
}

int thread_count(const NeighborOptions& options, int64_t n_atoms) {
#ifdef _OPENMP
  if (options.n_threads > 0) return options.n_threads;
  return n_atoms >= kParallelMinAtoms ? omp_get_max_threads() : 1;
#else
  (void)options;
  (void)n_atoms;
  return 1;
#endif
}

}  // namespace

struct NeighborSearch::Scratch {
  std::vector<int> bin_start, cursor, atom, slot, bin, wrap, wrap_of_atom;
  std::vector<double> wrapped, wrapped_of_atom;
  std::vector<NeighborList> chunks;
};

NeighborSearch::NeighborSearch() : scratch_(new Scratch) {}
NeighborSearch::~NeighborSearch() = default;

void NeighborSearch::compute(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                             const NeighborOptions& options, NeighborList& out) {
  if (n_atoms < 0 || n_atoms > kMaxNeighborAtoms) {
    throw Error("number of atoms must be between 0 and " + std::to_string(kMaxNeighborAtoms) + ", got " +
                std::to_string(n_atoms));
  }
  if (n_atoms > 0 && positions == nullptr) throw Error("positions is a null pointer");
  if (cell == nullptr || pbc == nullptr) throw Error("cell and pbc must not be null pointers");
  if (options.n_threads < 0) throw Error("n_threads must be >= 0, got " + std::to_string(options.n_threads));

  cell_list::Grid grid = cell_list::make_grid(cell, pbc, options.cutoff);
  const int n = static_cast<int>(n_atoms);
  cell_list::Bounds bounds;
  for (int i = 0; i < n; ++i) {
    const double* x = positions + 3 * static_cast<int64_t>(i);
    if (!cell_list::position_is_finite(x)) cell_list::throw_non_finite_position(i, x);
    cell_list::extend_bounds(grid, x, bounds.lo, bounds.hi);
  }
  cell_list::finish_grid(grid, bounds, n_atoms, options.cutoff);

  // Counting sort of the atoms by bin.
  Scratch& s = *scratch_;
  const int n_bins = grid.n_bins[0] * grid.n_bins[1] * grid.n_bins[2];
  s.bin_start.assign(static_cast<size_t>(n_bins) + 1, 0);
  s.bin.resize(n);
  s.wrapped_of_atom.resize(3 * static_cast<size_t>(n));
  s.wrap_of_atom.resize(3 * static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const int b = cell_list::locate_atom(grid, positions + 3 * static_cast<int64_t>(i), &s.wrapped_of_atom[3 * i],
                                         &s.wrap_of_atom[3 * i]);
    s.bin[i] = b;
    s.bin_start[b + 1] += 1;
  }
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
  const cell_list::Bins bins{s.bin_start.data(), s.atom.data(), s.wrapped.data(),
                             s.wrap.data(),      s.slot.data(), s.bin.data()};

  out.n_atoms = n_atoms;
  out.offsets.resize(static_cast<size_t>(n) + 1);
  int64_t* offsets = out.offsets.data();
  const int threads = n > 1 ? std::min(thread_count(options, n_atoms), n) : 1;

  if (threads <= 1) {
    clear_pairs(out);
    search_atoms(grid, bins, 0, n, options, out, offsets);
    out.offsets[n] = out.n_pairs();
    return;
  }

  const int n_chunks = std::min(n, threads * kChunksPerThread);
  if (static_cast<int>(s.chunks.size()) < n_chunks) s.chunks.resize(n_chunks);
  std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int c = 0; c < n_chunks; ++c) {
    try {
      NeighborList& chunk = s.chunks[c];
      clear_pairs(chunk);
      const int begin = static_cast<int>(static_cast<int64_t>(n) * c / n_chunks);
      const int end = static_cast<int>(static_cast<int64_t>(n) * (c + 1) / n_chunks);
      search_atoms(grid, bins, begin, end, options, chunk, offsets);
    } catch (...) {
#pragma omp critical(mlipbias_neighbors_failure)
      failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);

  std::vector<int64_t> base(n_chunks + 1, 0);
  for (int c = 0; c < n_chunks; ++c) base[c + 1] = base[c] + s.chunks[c].n_pairs();
  const size_t total = static_cast<size_t>(base[n_chunks]);
  out.first.resize(total);
  out.second.resize(total);
  out.shifts.resize(options.return_shifts ? 3 * total : 0);
  out.vectors.resize(options.return_vectors ? 3 * total : 0);
  out.distances.resize(options.return_distances ? total : 0);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int c = 0; c < n_chunks; ++c) {
    const NeighborList& chunk = s.chunks[c];
    const size_t at = static_cast<size_t>(base[c]);
    copy_into(chunk.first, out.first, at);
    copy_into(chunk.second, out.second, at);
    copy_into(chunk.shifts, out.shifts, 3 * at);
    copy_into(chunk.vectors, out.vectors, 3 * at);
    copy_into(chunk.distances, out.distances, at);
    const int begin = static_cast<int>(static_cast<int64_t>(n) * c / n_chunks);
    const int end = static_cast<int>(static_cast<int64_t>(n) * (c + 1) / n_chunks);
    for (int i = begin; i < end; ++i) offsets[i] += base[c];
  }
  out.offsets[n] = static_cast<int64_t>(total);
}

NeighborList neighbor_list(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                           const NeighborOptions& options) {
  NeighborSearch search;
  NeighborList out;
  search.compute(positions, n_atoms, cell, pbc, options, out);
  return out;
}

#ifndef MLIPBIAS_WITH_CUDA
// Builds without CUDA kernels: the GPU search exists but reports why it cannot run.
namespace cuda {

struct NeighborSearch::Impl {};
NeighborSearch::NeighborSearch() = default;
NeighborSearch::~NeighborSearch() = default;

int64_t NeighborSearch::count(const double*, int64_t, const double*, const bool*, const NeighborOptions&, int,
                              void*) {
  require_device();
  return 0;
}

void NeighborSearch::fill(int64_t*, int64_t*, int64_t*, double*, double*, int64_t*) { require_device(); }

}  // namespace cuda
#endif

}  // namespace mlipbias
