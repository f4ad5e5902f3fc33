// GM-NN on a CUDA device: the stages of cpp/gmnn_stages.hpp (the same math the host runs in the
// CPU tests), one kernel launch per stage (cuda/gmnn.cu; in builds without CUDA kernels,
// cuda/no_cuda.cpp reports why it cannot run).
#pragma once

#include <cstdint>
#include <memory>

#include "gmnn_packed.hpp"

namespace mlipbias {
namespace cuda {

class GmnnEvaluator {
 public:
  // Uploads the packed model to device `device`; throws Error "no CUDA device: ..." without one.
  // max_threads: threads (each with its scratch) of a stage at most; 0 = 512 per multiprocessor,
  // within a quarter of the free memory. Items beyond it are taken in turns (grid-stride).
  GmnnEvaluator(const PackedGmnn& model, int device, int64_t max_threads = 0);
  ~GmnnEvaluator();
  GmnnEvaluator(const GmnnEvaluator&) = delete;
  GmnnEvaluator& operator=(const GmnnEvaluator&) = delete;

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

}  // namespace cuda
}  // namespace mlipbias
