// Cell-list neighbor search on a CUDA device (API in cuda/neighbors_cuda.hpp).
//
// The same algorithm as cpp/neighbors.cpp, with the per-atom math of
// cpp/neighbors_math.hpp; this file holds launches, memory and reductions only.
//
// count():  bounds + NaN check (block reduction, finished on the host, which sizes the grid)
//           -> locate each atom (wrap, bin, histogram of bins) -> scan: bin starts
//           -> stable radix sort of atoms by bin -> gather wrapped positions in bin order
//           -> one thread per atom counts its pairs (and marks the first slot over
//           max_neighbors) -> scan: per-atom offsets.
// fill():   one thread per atom repeats the search and writes its pairs at its offset.
// The stable sort keeps atoms in ascending order inside each bin, so the pairs come out in
// exactly the order of the C++ search.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <limits>
#include <string>
#include <vector>

#include "common.hpp"
#include "device.hpp"
#include "neighbors_cuda.hpp"
#include "neighbors_math.hpp"

namespace mlipbias {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBoundsBlocks = 1024;
constexpr unsigned long long kNoBadAtom = std::numeric_limits<unsigned long long>::max();

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    throw Error(std::string("CUDA error in the neighbor search (") + what + "): " + cudaGetErrorString(status));
  }
}

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

// Device memory that grows on demand and is kept for the next call.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);
  }
  T* reserve(size_t n) {
    if (n > capacity_ || data_ == nullptr) {
      if (data_ != nullptr) cudaFree(data_);
      data_ = nullptr;
      capacity_ = 0;
      check(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
      capacity_ = std::max<size_t>(n, 1);
    }
    return data_;
  }
  T* get() const { return data_; }

 private:
  T* data_ = nullptr;
  size_t capacity_ = 0;
};

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

__global__ void bounds_kernel(const double* positions, int n, cell_list::Grid grid, double* block_bounds,
                              unsigned long long* first_bad_atom) {
  double lo[3] = {HUGE_VAL, HUGE_VAL, HUGE_VAL};
  double hi[3] = {-HUGE_VAL, -HUGE_VAL, -HUGE_VAL};
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double* x = positions + 3 * i;
    if (!cell_list::position_is_finite(x)) {
      atomicMin(first_bad_atom, static_cast<unsigned long long>(i));
      continue;
    }
    cell_list::extend_bounds(grid, x, lo, hi);
  }
  __shared__ double shared[6][kThreads];
  const int t = threadIdx.x;
  for (int k = 0; k < 3; ++k) {
    shared[k][t] = lo[k];
    shared[3 + k][t] = hi[k];
  }
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (t < stride) {
      for (int k = 0; k < 3; ++k) {
        shared[k][t] = fmin(shared[k][t], shared[k][t + stride]);
        shared[3 + k][t] = fmax(shared[3 + k][t], shared[3 + k][t + stride]);
      }
    }
    __syncthreads();
  }
  if (t < 6) block_bounds[6 * blockIdx.x + t] = shared[t][0];
}

__global__ void locate_kernel(const double* positions, int n, cell_list::Grid grid, double* wrapped, int* wrap,
                              int* bin, int* bin_count, int* identity) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int b = cell_list::locate_atom(grid, positions + 3 * i, wrapped + 3 * i, wrap + 3 * i);
  bin[i] = b;
  atomicAdd(bin_count + b, 1);
  identity[i] = static_cast<int>(i);
}

__global__ void gather_kernel(int n, const int* atom, const double* wrapped_of_atom, const int* wrap_of_atom,
                              double* wrapped, int* wrap, int* slot) {
  const int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (s >= n) return;
  const int64_t a = atom[s];
  slot[a] = static_cast<int>(s);
  for (int c = 0; c < 3; ++c) {
    wrapped[3 * s + c] = wrapped_of_atom[3 * a + c];
    wrap[3 * s + c] = wrap_of_atom[3 * a + c];
  }
}

// One thread per atom, threads in bin order: the atoms of a warp search the same bins, so
// their loads of the candidates coincide. Each atom still writes at its own offset.
// first_over_slot ends as the smallest slot whose atom has more than `limit` pairs, the atom
// the serial CPU search reports; slots after one already found skip their search, so a
// structure far too dense fails fast, as on the CPU.
__global__ void count_kernel(cell_list::Grid grid, cell_list::Bins bins, int n, bool half, bool self_interaction,
                             int64_t limit, unsigned long long* first_over_slot, int64_t* counts) {
  const int64_t slot = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (slot >= n) return;
  if (static_cast<unsigned long long>(slot) > *static_cast<volatile unsigned long long*>(first_over_slot)) return;
  const int i = bins.atom[slot];
  cell_list::CountPairs count;
  cell_list::visit_neighbors(grid, bins, i, half, self_interaction, count);
  counts[i] = count.n;
  if (count.n > limit) atomicMin(first_over_slot, static_cast<unsigned long long>(slot));
}

__global__ void fill_kernel(cell_list::Grid grid, cell_list::Bins bins, int n, bool half, bool self_interaction,
                            const int64_t* offsets, int64_t* first, int64_t* second, int64_t* shifts,
                            double* vectors, double* distances) {
  const int64_t slot = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (slot >= n) return;
  const int i = bins.atom[slot];
  cell_list::WritePairs write{offsets[i], i, first, second, shifts, vectors, distances};
  cell_list::visit_neighbors(grid, bins, i, half, self_interaction, write);
}

}  // namespace

struct NeighborSearch::Impl {
  DeviceBuffer<double> block_bounds, wrapped_of_atom, wrapped;
  DeviceBuffer<unsigned long long> first_bad_atom, first_over_slot;
  DeviceBuffer<int> wrap_of_atom, wrap, bin, sorted_bin, identity, atom, slot, bin_count, bin_start;
  DeviceBuffer<int64_t> counts, offsets;
  DeviceBuffer<char> temp;

  // What the last count() found, for fill(); n_atoms < 0 until a count() succeeds.
  cell_list::Grid grid{};
  int n_atoms = -1;
  int64_t n_pairs = 0;
  bool half = false;
  bool self_interaction = false;
  int device = 0;
  cudaStream_t stream = nullptr;

  cell_list::Bins bins() const {
    return cell_list::Bins{bin_start.get(), atom.get(), wrapped.get(), wrap.get(), slot.get(), bin.get()};
  }
};

NeighborSearch::NeighborSearch() : impl_(new Impl) {}
NeighborSearch::~NeighborSearch() = default;

int64_t NeighborSearch::count(const double* positions, int64_t n_atoms, const double* cell, const bool* pbc,
                              const NeighborOptions& options, int device, void* stream_handle) {
  require_device();
  Impl& s = *impl_;
  s.n_atoms = -1;
  check_search_input(positions, n_atoms, cell, pbc);
  const int64_t limit = cell_list::neighbor_limit(options);
  const DeviceGuard guard(device);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  cell_list::Grid grid = cell_list::make_grid(cell, pbc, options.cutoff);
  const int n = static_cast<int>(n_atoms);
  s.half = options.half;
  s.self_interaction = options.self_interaction;
  s.device = device;
  s.stream = stream;
  if (n == 0) {
    s.grid = grid;
    s.n_pairs = 0;
    s.n_atoms = 0;
    return 0;
  }

  // Bounds of the fractional coordinates and the first non-finite position.
  const unsigned int bounds_blocks = std::min<unsigned int>(blocks_for(n), kMaxBoundsBlocks);
  double* block_bounds = s.block_bounds.reserve(6 * static_cast<size_t>(bounds_blocks));
  unsigned long long* first_bad = s.first_bad_atom.reserve(1);
  check(cudaMemsetAsync(first_bad, 0xFF, sizeof(unsigned long long), stream), "cudaMemsetAsync");
  bounds_kernel<<<bounds_blocks, kThreads, 0, stream>>>(positions, n, grid, block_bounds, first_bad);
  check(cudaGetLastError(), "bounds kernel launch");
  std::vector<double> host_bounds(6 * static_cast<size_t>(bounds_blocks));
  unsigned long long host_first_bad = kNoBadAtom;
  check(cudaMemcpyAsync(host_bounds.data(), block_bounds, host_bounds.size() * sizeof(double),
                        cudaMemcpyDeviceToHost, stream),
        "copy of the bounds");
  check(cudaMemcpyAsync(&host_first_bad, first_bad, sizeof(host_first_bad), cudaMemcpyDeviceToHost, stream),
        "copy of the NaN check");
  check(cudaStreamSynchronize(stream), "bounds kernel");
  if (host_first_bad != kNoBadAtom) {
    double x[3];
    check(cudaMemcpy(x, positions + 3 * host_first_bad, sizeof(x), cudaMemcpyDeviceToHost), "copy of a position");
    cell_list::throw_non_finite_position(static_cast<int64_t>(host_first_bad), x);
  }
  cell_list::Bounds bounds;
  for (unsigned int b = 0; b < bounds_blocks; ++b) {
    for (int k = 0; k < 3; ++k) {
      bounds.lo[k] = std::fmin(bounds.lo[k], host_bounds[6 * b + k]);
      bounds.hi[k] = std::fmax(bounds.hi[k], host_bounds[6 * b + 3 + k]);
    }
  }
  cell_list::finish_grid(grid, bounds, n_atoms, options.cutoff);
  s.grid = grid;
  const int n_bins = grid.n_bins[0] * grid.n_bins[1] * grid.n_bins[2];

  // Wrap and bin every atom; bin starts from the histogram.
  double* wrapped_of_atom = s.wrapped_of_atom.reserve(3 * static_cast<size_t>(n));
  int* wrap_of_atom = s.wrap_of_atom.reserve(3 * static_cast<size_t>(n));
  int* bin = s.bin.reserve(n);
  int* identity = s.identity.reserve(n);
  int* bin_count = s.bin_count.reserve(static_cast<size_t>(n_bins) + 1);
  int* bin_start = s.bin_start.reserve(static_cast<size_t>(n_bins) + 1);
  check(cudaMemsetAsync(bin_count, 0, (static_cast<size_t>(n_bins) + 1) * sizeof(int), stream), "cudaMemsetAsync");
  locate_kernel<<<blocks_for(n), kThreads, 0, stream>>>(positions, n, grid, wrapped_of_atom, wrap_of_atom, bin,
                                                        bin_count, identity);
  check(cudaGetLastError(), "locate kernel launch");
  size_t temp_bytes = 0;
  check(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, bin_count, bin_start, n_bins + 1, stream), "scan size");
  check(cub::DeviceScan::ExclusiveSum(s.temp.reserve(temp_bytes), temp_bytes, bin_count, bin_start, n_bins + 1,
                                      stream),
        "scan of the bin sizes");

  // Stable sort of the atoms by bin: ascending atom index inside each bin.
  int end_bit = 1;
  while (end_bit < 31 && (1 << end_bit) < n_bins) ++end_bit;
  int* sorted_bin = s.sorted_bin.reserve(n);
  int* atom = s.atom.reserve(n);
  check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, bin, sorted_bin, identity, atom, n, 0, end_bit, stream),
        "sort size");
  check(cub::DeviceRadixSort::SortPairs(s.temp.reserve(temp_bytes), temp_bytes, bin, sorted_bin, identity, atom, n,
                                        0, end_bit, stream),
        "sort of the atoms by bin");
  double* wrapped = s.wrapped.reserve(3 * static_cast<size_t>(n));
  int* wrap = s.wrap.reserve(3 * static_cast<size_t>(n));
  int* slot = s.slot.reserve(n);
  gather_kernel<<<blocks_for(n), kThreads, 0, stream>>>(n, atom, wrapped_of_atom, wrap_of_atom, wrapped, wrap, slot);
  check(cudaGetLastError(), "gather kernel launch");

  // Pairs per atom, and their prefix sum: offsets[0] = 0, offsets[i + 1] = offsets[i] + counts[i].
  int64_t* counts = s.counts.reserve(n);
  int64_t* offsets = s.offsets.reserve(static_cast<size_t>(n) + 1);
  unsigned long long* first_over = s.first_over_slot.reserve(1);
  check(cudaMemsetAsync(first_over, 0xFF, sizeof(unsigned long long), stream), "cudaMemsetAsync");
  count_kernel<<<blocks_for(n), kThreads, 0, stream>>>(grid, s.bins(), n, s.half, s.self_interaction, limit,
                                                       first_over, counts);
  check(cudaGetLastError(), "count kernel launch");
  check(cudaMemsetAsync(offsets, 0, sizeof(int64_t), stream), "cudaMemsetAsync");
  check(cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, counts, offsets + 1, n, stream), "scan size");
  check(cub::DeviceScan::InclusiveSum(s.temp.reserve(temp_bytes), temp_bytes, counts, offsets + 1, n, stream),
        "scan of the pair counts");
  int64_t n_pairs = 0;
  unsigned long long host_first_over = kNoBadAtom;
  check(cudaMemcpyAsync(&n_pairs, offsets + n, sizeof(n_pairs), cudaMemcpyDeviceToHost, stream),
        "copy of the pair count");
  check(cudaMemcpyAsync(&host_first_over, first_over, sizeof(host_first_over), cudaMemcpyDeviceToHost, stream),
        "copy of the max_neighbors check");
  check(cudaStreamSynchronize(stream), "pair count");
  if (host_first_over != kNoBadAtom) {
    int over_atom = 0;
    int64_t over_count = 0;
    check(cudaMemcpy(&over_atom, atom + host_first_over, sizeof(over_atom), cudaMemcpyDeviceToHost),
          "copy of an atom index");
    check(cudaMemcpy(&over_count, counts + over_atom, sizeof(over_count), cudaMemcpyDeviceToHost),
          "copy of a pair count");
    cell_list::throw_too_many_neighbors(over_atom, over_count, n_atoms, options);
  }
  s.n_pairs = n_pairs;
  s.n_atoms = n;
  return n_pairs;
}

void NeighborSearch::fill(int64_t* first, int64_t* second, int64_t* shifts, double* vectors, double* distances,
                          int64_t* offsets) {
  Impl& s = *impl_;
  if (s.n_atoms < 0) throw Error("NeighborSearch::fill() needs a successful count() first");
  const DeviceGuard guard(s.device);
  const int n = s.n_atoms;
  if (n == 0) {
    if (offsets != nullptr) check(cudaMemsetAsync(offsets, 0, sizeof(int64_t), s.stream), "cudaMemsetAsync");
  } else {
    if (s.n_pairs > 0) {
      fill_kernel<<<blocks_for(n), kThreads, 0, s.stream>>>(s.grid, s.bins(), n, s.half, s.self_interaction,
                                                            s.offsets.get(), first, second, shifts, vectors,
                                                            distances);
      check(cudaGetLastError(), "fill kernel launch");
    }
    if (offsets != nullptr) {
      check(cudaMemcpyAsync(offsets, s.offsets.get(), (static_cast<size_t>(n) + 1) * sizeof(int64_t),
                            cudaMemcpyDeviceToDevice, s.stream),
            "copy of the offsets");
    }
  }
  check(cudaStreamSynchronize(s.stream), "fill kernel");
}

}  // namespace cuda
}  // namespace mlipbias
