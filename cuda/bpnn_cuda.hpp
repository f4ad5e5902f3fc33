// BP-NN on a CUDA device: the stages of cpp/bpnn_stages.hpp (the same math the host runs in the
// CPU tests), one kernel launch per stage (cuda/bpnn.cu; in builds without CUDA kernels,
// cuda/no_cuda.cpp reports why it cannot run). Options and results are GM-NN's.
#pragma once

#include <cstdint>
#include <memory>

#include "bpnn_packed.hpp"

namespace mlipbias {
namespace cuda {

class BpnnEvaluator {
 public:
  // As GmnnEvaluator's (cuda/gmnn_cuda.hpp).
  BpnnEvaluator(const PackedBpnn& model, int device, int64_t max_threads = 0);
  ~BpnnEvaluator();
  BpnnEvaluator(const BpnnEvaluator&) = delete;
  BpnnEvaluator& operator=(const BpnnEvaluator&) = delete;

  void evaluate(const NeighbourView& nb, const GmnnOptions& options, GmnnResult& result);
  double time_runs(int repeats);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace mlipbias
