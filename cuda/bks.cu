// BKS kernels: one thread per pair (grid-stride), the pair math from cpp/bks_math.hpp,
// forces and per-atom energies scattered with atomics, energy and virial reduced per block.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "bks_cuda.hpp"
#include "common.hpp"
#include "device.hpp"

namespace mlipbias {
namespace cuda {

namespace {

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;

// Sum of v over the block; the result is valid in thread 0. Every thread must call it.
__device__ double block_sum(double v, double* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // shared may still be read by the previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = 0.0;
  if (warp == 0) {
    v = lane < kWarps ? shared[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

__global__ void __launch_bounds__(kBlock) self_kernel(const bks::Table t, int64_t n_atoms, const int64_t* types,
                                                      double* energies, double* energy) {
  __shared__ double shared[kWarps];
  double e_sum = 0.0;
  for (int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; a < n_atoms;
       a += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double e = t.self_energy[types[a]];
    energies[a] += e;
    e_sum += e;
  }
  e_sum = block_sum(e_sum, shared);
  if (threadIdx.x == 0) atomicAdd(energy, e_sum);
}

__global__ void __launch_bounds__(kBlock)
    pair_kernel(const bks::Table t, int64_t n_pairs, const int64_t* types, const int64_t* pi, const int64_t* pj,
                const double* D, double* energies, double* forces, double* energy, double* virial) {
  __shared__ double shared[kWarps];
  const double max_cut_sq = fmax(t.cut_short_sq, t.cut_coul_sq);
  double e_sum = 0.0;
  double w[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};  // xx yy zz xy xz yz
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < n_pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double dx = D[3 * p], dy = D[3 * p + 1], dz = D[3 * p + 2];
    const double rsq = dx * dx + dy * dy + dz * dz;
    if (!(rsq < max_cut_sq)) continue;
    const int64_t a = pi[p], b = pj[p];
    double fpair;
    const double e = bks::pair_energy(t, static_cast<int>(types[a]), static_cast<int>(types[b]), rsq, &fpair);
    e_sum += e;
    atomicAdd(energies + a, 0.5 * e);
    atomicAdd(energies + b, 0.5 * e);
    const double fx = fpair * dx, fy = fpair * dy, fz = fpair * dz;
    atomicAdd(forces + 3 * b, fx);
    atomicAdd(forces + 3 * b + 1, fy);
    atomicAdd(forces + 3 * b + 2, fz);
    atomicAdd(forces + 3 * a, -fx);
    atomicAdd(forces + 3 * a + 1, -fy);
    atomicAdd(forces + 3 * a + 2, -fz);
    w[0] += dx * fx;
    w[1] += dy * fy;
    w[2] += dz * fz;
    w[3] += dx * fy;
    w[4] += dx * fz;
    w[5] += dy * fz;
  }
  e_sum = block_sum(e_sum, shared);
  if (threadIdx.x == 0) atomicAdd(energy, e_sum);
  // Row-major 3x3 positions of xx yy zz xy xz yz, and of the symmetric partners.
  const int upper[6] = {0, 4, 8, 1, 2, 5};
  const int lower[6] = {0, 4, 8, 3, 6, 7};
  for (int c = 0; c < 6; ++c) {
    const double s = block_sum(w[c], shared);
    if (threadIdx.x == 0) {
      atomicAdd(virial + upper[c], s);
      if (lower[c] != upper[c]) atomicAdd(virial + lower[c], s);
    }
  }
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    const std::string message = std::string("BKS CUDA: ") + what + ": " + cudaGetErrorString(status);
    cudaGetLastError();  // clear a non-sticky error so later calls start clean
    throw Error(message);
  }
}

// Enough blocks to fill the device a few times over; the kernels stride over the rest.
int grid_size(int64_t n_items, int device) {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "querying the device");
  const int64_t needed = (n_items + kBlock - 1) / kBlock;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(needed, 8LL * std::max(sms, 1))));
}

}  // namespace

void bks_compute(const bks::Table& table, int device, void* stream, int64_t n_atoms, const int64_t* types,
                 int64_t n_pairs, const int64_t* i, const int64_t* j, const double* D, double* energies,
                 double* forces, double* energy, double* virial) {
  require_device();
  check(cudaSetDevice(device), "selecting the device");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (n_atoms > 0) {
    self_kernel<<<grid_size(n_atoms, device), kBlock, 0, s>>>(table, n_atoms, types, energies, energy);
    check(cudaGetLastError(), "launching the self-energy kernel");
  }
  if (n_pairs > 0) {
    pair_kernel<<<grid_size(n_pairs, device), kBlock, 0, s>>>(table, n_pairs, types, i, j, D, energies, forces,
                                                               energy, virial);
    check(cudaGetLastError(), "launching the pair kernel");
  }
}

}  // namespace cuda
}  // namespace mlipbias
