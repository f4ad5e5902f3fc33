// BP-NN kernels: the stages of cpp/bpnn_stages.hpp (symmetry functions of
// cpp/symmetry_functions_math.hpp, one thread per centre with its triplet loop, and the network
// stages shared with GM-NN), each one launch over its items (cuda/staged.cuh).
#include "staged.cuh"
#include "staged_evaluator.hpp"

namespace mlipbias {
namespace cuda {

template <>
struct BpnnEvaluator::Impl : staged::StagedDevice {
  SfTable sf;
  void load(const PackedBpnn& model, int device, int64_t max_threads) {
    sf = model.sf;
    init(model.base, device, max_threads);
  }
  void run() {
    staged::DeviceExec ex = exec();
    bpnn_run(ex, BpnnView{model.view, sf}, nb, buffers, options.posterior, options.gradient);
  }
};

template class StagedEvaluator<PackedBpnn>;

}  // namespace cuda
}  // namespace mlipbias
