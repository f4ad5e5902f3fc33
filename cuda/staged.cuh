// What the staged model evaluations on a CUDA device share (cuda/gmnn.cu, cuda/bpnn.cu): every
// stage of cpp/gmnn_stages.hpp or cpp/bpnn_stages.hpp is one launch of a grid-stride kernel over
// its items; per-thread network rows live in one scratch array interleaved across threads
// (thread t of T reads entry x at t + x T, so a warp's reads are contiguous). StagedDevice holds
// the uploaded model, the scratch, the neighbours and the buffers; the .cu files add the run.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "common.hpp"
#include "device.hpp"
#include "gmnn_packed.hpp"
#include "staged_evaluator.hpp"

namespace mlipbias {
namespace cuda {
namespace staged {

constexpr int kBlock = 128;
// Threads (scratch slots) of a stage at most, per multiprocessor: enough warps to hide FP64
// latency. The scratch holds the rows of one atom per slot (115 KB for two hidden layers of 512:
// 7.8 GB on an H100's 132 multiprocessors); at most a quarter of the free memory is taken.
constexpr int64_t kSlotsPerSM = 512;

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    const std::string message = std::string("CUDA model: ") + what + ": " + cudaGetErrorString(status);
    cudaGetLastError();  // clear a non-sticky error so later calls start clean
    throw Error(message);
  }
}

template <class F>
__global__ void __launch_bounds__(kBlock) for_each_kernel(int64_t n, int64_t n_slots, double* scratch, F f) {
  const int64_t slot = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (slot >= n_slots) return;
  for (int64_t item = slot; item < n; item += n_slots) f(item, Strided{scratch + slot, n_slots});
}

template <class T>
struct DeviceArray {
  T* p = nullptr;
  size_t n = 0;
  DeviceArray() = default;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (p) cudaFree(p);
  }
  void reserve(size_t count, const char* what) {
    if (count <= n && p) return;
    if (p) cudaFree(p);
    p = nullptr;
    n = 0;
    check(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)), what);
    n = count;
  }
  void upload(const T* host, size_t count, cudaStream_t s, const char* what) {
    reserve(count, what);
    if (count) check(cudaMemcpyAsync(p, host, count * sizeof(T), cudaMemcpyHostToDevice, s), what);
  }
};

struct DeviceExec {
  cudaStream_t stream;
  double* scratch;
  int64_t max_slots;

  void zero(double* p, int64_t n) {
    if (n > 0) check(cudaMemsetAsync(p, 0, n * sizeof(double), stream), "zeroing outputs");
  }
  template <class F>
  void for_each(int64_t n, const F& f) {
    if (n <= 0) return;
    const int64_t slots = std::min(n, max_slots);
    const int64_t blocks = (slots + kBlock - 1) / kBlock;
    for_each_kernel<<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(n, slots, scratch, f);
    check(cudaGetLastError(), "launching a stage");
  }
};

// A packed model (networks and descriptor in one params and one index array) on the device.
struct StagedDevice {
  PackedGmnn model;  // its view points at device memory; params and index stay empty
  int device = 0;
  int64_t max_slots = 0;
  cudaStream_t stream = nullptr;
  DeviceArray<double> params, arena, scratch;
  DeviceArray<int64_t> index, species, offsets, j;
  DeviceArray<double> D;
  GmnnNeighbours nb{};
  GmnnBuffers buffers{};
  GmnnOptions options;
  std::vector<double> outputs;
  bool ready = false;

  StagedDevice() = default;
  StagedDevice(const StagedDevice&) = delete;
  StagedDevice& operator=(const StagedDevice&) = delete;
  ~StagedDevice() {
    if (stream) cudaStreamDestroy(stream);
  }

  // Uploads the model; max_threads as GmnnEvaluator's.
  void init(const PackedGmnn& host, int device_, int64_t max_threads) {
    require_device();
    device = device_;
    check(cudaSetDevice(device), "selecting the device");
    check(cudaStreamCreate(&stream), "creating a stream");
    model.view = host.view;
    model.has_posterior = host.has_posterior;
    model.path = host.path;
    params.upload(host.params.data(), host.params.size(), stream, "copying the weights");
    index.upload(host.index.data(), host.index.size(), stream, "copying the weights");
    model.view.params = params.p;
    model.view.index = index.p;
    const int64_t per_slot = host.view.scratch_size();
    if (max_threads > 0) {
      max_slots = max_threads;
    } else {
      int sms = 0;
      size_t free_bytes = 0, total_bytes = 0;
      check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "querying the device");
      check(cudaMemGetInfo(&free_bytes, &total_bytes), "querying the device memory");
      const int64_t affordable = static_cast<int64_t>(free_bytes / 4 / (sizeof(double) * per_slot));
      max_slots = std::max<int64_t>(kBlock, std::min<int64_t>(kSlotsPerSM * std::max(sms, 1), affordable));
    }
    scratch.reserve(static_cast<size_t>(per_slot) * max_slots, "allocating the scratch");
    check(cudaStreamSynchronize(stream), "copying the weights");
  }

  // Checks the input, copies the neighbours and tau to the device and lays out the buffers.
  void upload(const NeighbourView& view, const GmnnOptions& options_) {
    ready = false;
    check_gmnn_input(model, view, options_);  // reads only the view's sizes and the flags
    check(cudaSetDevice(device), "selecting the device");
    const int64_t n_pairs = view.n_pairs();
    species.upload(view.species, view.n_atoms, stream, "copying the neighbours");
    offsets.upload(view.offsets, view.n_centers + 1, stream, "copying the neighbours");
    j.upload(view.j, n_pairs, stream, "copying the neighbours");
    D.upload(view.D, 3 * n_pairs, stream, "copying the neighbours");
    nb = GmnnNeighbours{view.n_centers, view.n_atoms, n_pairs, species.p, offsets.p, j.p, D.p};
    const GmnnBuffers sizes = gmnn_layout(model.view, nb, nullptr);
    arena.reserve(sizes.n_total, "allocating the buffers");
    buffers = gmnn_layout(model.view, nb, arena.p);
    options = options_;
    std::vector<double> tau(model.view.n_elements, 0.0);
    if (!options.tau.empty()) tau = options.tau;
    check(cudaMemcpyAsync(buffers.tau, tau.data(), tau.size() * sizeof(double), cudaMemcpyHostToDevice, stream),
          "copying tau");
  }

  // After the run: copies the outputs back and fills result.
  void download(const NeighbourView& view, GmnnResult& result) {
    outputs.resize(buffers.n_outputs);
    check(cudaMemcpyAsync(outputs.data(), arena.p, buffers.n_outputs * sizeof(double), cudaMemcpyDeviceToHost,
                          stream),
          "copying the results");
    check(cudaStreamSynchronize(stream), "running the stages");
    gmnn_result(model, gmnn_neighbours(view), outputs.data(), options, result);
    ready = true;
  }

  DeviceExec exec() { return DeviceExec{stream, scratch.p, max_slots}; }

  // Seconds for `repeats` more runs of the last input (run: a callable doing one run).
  template <class Run>
  double time_runs(int repeats, Run run) {
    if (!ready) throw Error("CUDA model: time_runs() needs an evaluate() first");
    if (repeats < 1) throw Error("CUDA model: repeats must be >= 1, got " + std::to_string(repeats));
    check(cudaSetDevice(device), "selecting the device");
    check(cudaStreamSynchronize(stream), "waiting for the device");
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) run();
    check(cudaStreamSynchronize(stream), "running the stages");
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
};

}  // namespace staged

// The members of StagedEvaluator (cuda/staged_evaluator.hpp), the same for every model: a .cu
// file defines its Impl (a StagedDevice with load() and run()) and instantiates the class.
template <class Packed>
StagedEvaluator<Packed>::StagedEvaluator(const Packed& model, int device, int64_t max_threads)
    : impl_(std::make_unique<Impl>()) {
  impl_->load(model, device, max_threads);
}

template <class Packed>
StagedEvaluator<Packed>::~StagedEvaluator() = default;

template <class Packed>
void StagedEvaluator<Packed>::evaluate(const NeighbourView& view, const GmnnOptions& options, GmnnResult& result) {
  impl_->upload(view, options);
  impl_->run();
  impl_->download(view, result);
}

template <class Packed>
double StagedEvaluator<Packed>::time_runs(int repeats) {
  return impl_->time_runs(repeats, [this] { impl_->run(); });
}

}  // namespace cuda
}  // namespace mlipbias
