// The neighbor search of cpp/neighbors.hpp on a CUDA device (cuda/neighbors.cu; in builds
// without CUDA kernels, cuda/no_cuda.cpp reports why it cannot run).
#pragma once

#include <cstdint>
#include <memory>

#include "neighbors.hpp"

namespace mlipbias {
namespace cuda {

// The same neighbor list on a CUDA device, with the same pairs in the same order as the
// C++ version (up to rounding of r_ij in the last bits). Two stages, so that the caller
// allocates the outputs (for example as torch tensors) once their size is known:
//
//   cuda::NeighborSearch search;
//   int64_t n_pairs = search.count(positions_on_device, n_atoms, cell, pbc, options,
//                                  device, stream);
//   ... allocate first, second [n_pairs], shifts, vectors [n_pairs * 3] on the device ...
//   search.fill(first, second, shifts, vectors, nullptr, nullptr);
//
// count() bins the atoms, counts the pairs of each atom and their prefix sum (this is the
// only host synchronisation); fill() runs the same search again and writes each atom's
// pairs at its offset. The scratch memory (bins, counts) stays allocated on the device
// for the next call. Without a usable device (or in a build without CUDA kernels) count()
// throws mlipbias::Error("no CUDA device: ...").
class NeighborSearch {
 public:
  NeighborSearch();
  ~NeighborSearch();
  NeighborSearch(const NeighborSearch&) = delete;
  NeighborSearch& operator=(const NeighborSearch&) = delete;

  // positions: device pointer, [n_atoms * 3] float64. cell [9] and pbc [3]: host memory.
  // device: CUDA device index the positions live on; stream: a cudaStream_t (nullptr for
  // the default stream). options.return_* and options.n_threads are ignored (fill()
  // decides what to write); options.max_neighbors is honoured as on the CPU (the same
  // error, naming the same atom as a serial CPU search). Returns the number of pairs.
  int64_t count(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                const NeighborOptions& options, int device, void* stream);

  // Writes the pairs found by the last count() into device arrays; a null pointer skips
  // that quantity. first, second, distances: [n_pairs]; shifts, vectors: [n_pairs * 3];
  // offsets: [n_atoms + 1]. Returns once the data is written.
  void fill(int64_t* first, int64_t* second, int64_t* shifts, double* vectors, double* distances,
            int64_t* offsets);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace mlipbias
