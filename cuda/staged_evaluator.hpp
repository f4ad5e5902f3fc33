// GM-NN and BP-NN on a CUDA device: the stages of cpp/gmnn_stages.hpp (BP-NN: cpp/bpnn_stages.hpp,
// which swaps in its two per-centre stages; the same math the host runs in the CPU tests), one
// kernel launch per stage (cuda/gmnn.cu, cuda/bpnn.cu over cuda/staged.cuh; in builds without
// CUDA kernels, cuda/no_cuda.cpp reports why it cannot run). Options and results are GM-NN's.
#pragma once

#include <cstdint>
#include <memory>

#include "bpnn_packed.hpp"
#include "gmnn_packed.hpp"

namespace mlipbias {
namespace cuda {

// One class for both models: only the uploaded model and the stages run (Impl, in the .cu file
// of each) differ.
template <class Packed>
class StagedEvaluator {
 public:
  // Uploads the packed model to device `device`; throws Error "no CUDA device: ..." without one.
  // max_threads: threads (each with its scratch) of a stage at most; 0 = 512 per multiprocessor,
  // within a quarter of the free memory. Items beyond it are taken in turns (grid-stride).
  StagedEvaluator(const Packed& model, int device, int64_t max_threads = 0);
  ~StagedEvaluator();
  StagedEvaluator(const StagedEvaluator&) = delete;
  StagedEvaluator& operator=(const StagedEvaluator&) = delete;

  // Checks the input (check_gmnn_input), copies the neighbours (host memory) and tau to the
  // device, runs the stages and copies the results back.
  void evaluate(const NeighbourView& nb, const GmnnOptions& options, GmnnResult& result);

  // Runs the stages `repeats` more times on the neighbours and options of the last evaluate(),
  // on the device only (no copies), and returns the wall time in seconds (synchronised).
  double time_runs(int repeats);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

using GmnnEvaluator = StagedEvaluator<PackedGmnn>;
using BpnnEvaluator = StagedEvaluator<PackedBpnn>;
// Instantiated in cuda/gmnn.cu and cuda/bpnn.cu (or cuda/no_cuda.cpp).
extern template class StagedEvaluator<PackedGmnn>;
extern template class StagedEvaluator<PackedBpnn>;

}  // namespace cuda
}  // namespace mlipbias
