// GM-NN kernels: every stage of cpp/gmnn_stages.hpp is one launch of a grid-stride kernel over its
// items; the math is the stages' (shared with the host run the CPU tests check). Per-thread network
// rows live in one scratch array interleaved across threads (thread t of T reads entry x at
// t + x T, so a warp's reads are contiguous); moments are per-thread local arrays.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "common.hpp"
#include "device.hpp"
#include "gmnn_cuda.hpp"

namespace mlipbias {
namespace cuda {

namespace {

constexpr int kBlock = 128;
// Threads (scratch slots) of a stage at most, per multiprocessor: enough warps to hide FP64
// latency. The scratch holds the rows of one atom per slot (115 KB for two hidden layers of 512:
// 7.8 GB on an H100's 132 multiprocessors); at most a quarter of the free memory is taken.
constexpr int64_t kSlotsPerSM = 512;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    const std::string message = std::string("GM-NN CUDA: ") + what + ": " + cudaGetErrorString(status);
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

}  // namespace

struct GmnnEvaluator::Impl {
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

  void run() {
    DeviceExec ex{stream, scratch.p, max_slots};
    gmnn_run(ex, model.view, nb, buffers, options.posterior, options.gradient);
  }
};

GmnnEvaluator::GmnnEvaluator(const PackedGmnn& model, int device, int64_t max_threads)
    : impl_(std::make_unique<Impl>()) {
  require_device();
  Impl& s = *impl_;
  s.device = device;
  check(cudaSetDevice(device), "selecting the device");
  check(cudaStreamCreate(&s.stream), "creating a stream");
  s.model.view = model.view;
  s.model.has_posterior = model.has_posterior;
  s.model.path = model.path;
  s.params.upload(model.params.data(), model.params.size(), s.stream, "copying the weights");
  s.index.upload(model.index.data(), model.index.size(), s.stream, "copying the weights");
  s.model.view.params = s.params.p;
  s.model.view.index = s.index.p;
  const int64_t per_slot = model.view.scratch_size();
  if (max_threads > 0) {
    s.max_slots = max_threads;
  } else {
    int sms = 0;
    size_t free_bytes = 0, total_bytes = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "querying the device");
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "querying the device memory");
    const int64_t affordable = static_cast<int64_t>(free_bytes / 4 / (sizeof(double) * per_slot));
    s.max_slots = std::max<int64_t>(kBlock, std::min<int64_t>(kSlotsPerSM * std::max(sms, 1), affordable));
  }
  s.scratch.reserve(static_cast<size_t>(per_slot) * s.max_slots, "allocating the scratch");
  check(cudaStreamSynchronize(s.stream), "copying the weights");
}

GmnnEvaluator::~GmnnEvaluator() {
  if (impl_ && impl_->stream) cudaStreamDestroy(impl_->stream);
}

void GmnnEvaluator::evaluate(const NeighbourView& view, const GmnnOptions& options, GmnnResult& result) {
  Impl& s = *impl_;
  s.ready = false;
  PackedGmnn host_view;  // check_gmnn_input reads only the view and the flags
  host_view.view = s.model.view;
  host_view.has_posterior = s.model.has_posterior;
  host_view.path = s.model.path;
  check_gmnn_input(host_view, view, options);
  check(cudaSetDevice(s.device), "selecting the device");
  const int64_t n_pairs = view.n_pairs();
  s.species.upload(view.species, view.n_atoms, s.stream, "copying the neighbours");
  s.offsets.upload(view.offsets, view.n_centers + 1, s.stream, "copying the neighbours");
  s.j.upload(view.j, n_pairs, s.stream, "copying the neighbours");
  s.D.upload(view.D, 3 * n_pairs, s.stream, "copying the neighbours");
  s.nb = GmnnNeighbours{view.n_centers, view.n_atoms, n_pairs, s.species.p, s.offsets.p, s.j.p, s.D.p};
  const GmnnBuffers sizes = gmnn_layout(s.model.view, s.nb, nullptr);
  s.arena.reserve(sizes.n_total, "allocating the buffers");
  s.buffers = gmnn_layout(s.model.view, s.nb, s.arena.p);
  s.options = options;
  std::vector<double> tau(s.model.view.n_elements, 0.0);
  if (!options.tau.empty()) tau = options.tau;
  check(cudaMemcpyAsync(s.buffers.tau, tau.data(), tau.size() * sizeof(double), cudaMemcpyHostToDevice, s.stream),
        "copying tau");
  s.run();
  s.outputs.resize(sizes.n_outputs);
  check(cudaMemcpyAsync(s.outputs.data(), s.arena.p, sizes.n_outputs * sizeof(double), cudaMemcpyDeviceToHost,
                        s.stream),
        "copying the results");
  check(cudaStreamSynchronize(s.stream), "running the GM-NN stages");
  const GmnnNeighbours host_nb = gmnn_neighbours(view);
  gmnn_result(host_view, host_nb, s.outputs.data(), options, result);
  s.ready = true;
}

double GmnnEvaluator::time_runs(int repeats) {
  Impl& s = *impl_;
  if (!s.ready) throw Error("GM-NN CUDA: time_runs() needs an evaluate() first");
  if (repeats < 1) throw Error("GM-NN CUDA: repeats must be >= 1, got " + std::to_string(repeats));
  check(cudaSetDevice(s.device), "selecting the device");
  check(cudaStreamSynchronize(s.stream), "waiting for the device");
  const auto start = std::chrono::steady_clock::now();
  for (int r = 0; r < repeats; ++r) s.run();
  check(cudaStreamSynchronize(s.stream), "running the GM-NN stages");
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace cuda
}  // namespace mlipbias
