// GM-NN kernels: the stages of cpp/gmnn_stages.hpp, each one launch over its items
// (cuda/staged.cuh); the math is the stages' (shared with the host run the CPU tests check).
#include "staged.cuh"
#include "staged_evaluator.hpp"

namespace mlipbias {
namespace cuda {

template <>
struct GmnnEvaluator::Impl : staged::StagedDevice {
  void load(const PackedGmnn& model, int device, int64_t max_threads) { init(model, device, max_threads); }
  void run() {
    staged::DeviceExec ex = exec();
    gmnn_run(ex, model.view, nb, buffers, options.posterior, options.gradient);
  }
};

template class StagedEvaluator<PackedGmnn>;

}  // namespace cuda
}  // namespace mlipbias
