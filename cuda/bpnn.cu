// BP-NN kernels: the stages of cpp/bpnn_stages.hpp (symmetry functions of
// cpp/symmetry_functions_math.hpp, one thread per centre with its triplet loop, and the network
// stages shared with GM-NN), each one launch over its items (cuda/staged.cuh).
#include "bpnn_cuda.hpp"
#include "staged.cuh"

namespace mlipbias {
namespace cuda {

struct BpnnEvaluator::Impl : staged::StagedDevice {
  SfTable sf;
  void run() {
    staged::DeviceExec ex = exec();
    bpnn_run(ex, BpnnView{model.view, sf}, nb, buffers, options.posterior, options.gradient);
  }
};

BpnnEvaluator::BpnnEvaluator(const PackedBpnn& model, int device, int64_t max_threads)
    : impl_(std::make_unique<Impl>()) {
  impl_->sf = model.sf;
  impl_->init(model.base, device, max_threads);
}

BpnnEvaluator::~BpnnEvaluator() = default;

void BpnnEvaluator::evaluate(const NeighbourView& view, const GmnnOptions& options, GmnnResult& result) {
  impl_->upload(view, options);
  impl_->run();
  impl_->download(view, result);
}

double BpnnEvaluator::time_runs(int repeats) {
  return impl_->time_runs(repeats, [this] { impl_->run(); });
}

}  // namespace cuda
}  // namespace mlipbias
