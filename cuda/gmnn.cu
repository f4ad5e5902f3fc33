// GM-NN kernels: the stages of cpp/gmnn_stages.hpp, each one launch over its items
// (cuda/staged.cuh); the math is the stages' (shared with the host run the CPU tests check).
#include "gmnn_cuda.hpp"
#include "staged.cuh"

namespace mlipbias {
namespace cuda {

struct GmnnEvaluator::Impl : staged::StagedDevice {
  void run() {
    staged::DeviceExec ex = exec();
    gmnn_run(ex, model.view, nb, buffers, options.posterior, options.gradient);
  }
};

GmnnEvaluator::GmnnEvaluator(const PackedGmnn& model, int device, int64_t max_threads)
    : impl_(std::make_unique<Impl>()) {
  impl_->init(model, device, max_threads);
}

GmnnEvaluator::~GmnnEvaluator() = default;

void GmnnEvaluator::evaluate(const NeighbourView& view, const GmnnOptions& options, GmnnResult& result) {
  impl_->upload(view, options);
  impl_->run();
  impl_->download(view, result);
}

double GmnnEvaluator::time_runs(int repeats) {
  return impl_->time_runs(repeats, [this] { impl_->run(); });
}

}  // namespace cuda
}  // namespace mlipbias
