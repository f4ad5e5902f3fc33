// The CUDA entry points for builds without CUDA kernels (no nvcc at build time, or
// MLIPBIAS_CUDA=OFF): compiled in place of the .cu files, so the Python module has the same
// functions in every build and asking for the GPU is a clear error, not a missing symbol.
#include <cstdint>
#include <string>

#include "bks_cuda.hpp"
#include "common.hpp"
#include "device.hpp"
#include "neighbors_cuda.hpp"
#include "staged_evaluator.hpp"

namespace mlipbias {
namespace cuda {

bool compiled_with_cuda() { return false; }

int device_count(std::string* why) {
  if (why) *why = "mlipbias was built without CUDA kernels (no nvcc at build time, or MLIPBIAS_CUDA=OFF)";
  return 0;
}

void require_device() {
  std::string why;
  device_count(&why);
  throw Error("no CUDA device: " + why);
}

void bks_compute(const bks::Table&, int, void*, int64_t, const int64_t*, int64_t, const int64_t*, const int64_t*,
                 const double*, double*, double*, double*, double*) {
  require_device();
}

struct NeighborSearch::Impl {};
NeighborSearch::NeighborSearch() = default;
NeighborSearch::~NeighborSearch() = default;

int64_t NeighborSearch::count(const double*, int64_t, const double*, const bool*, const NeighborOptions&, int,
                              void*) {
  require_device();
  return 0;
}

void NeighborSearch::fill(int64_t*, int64_t*, int64_t*, double*, double*, int64_t*) { require_device(); }

template <class Packed>
struct StagedEvaluator<Packed>::Impl {};
template <class Packed>
StagedEvaluator<Packed>::StagedEvaluator(const Packed&, int, int64_t) {
  require_device();
}
template <class Packed>
StagedEvaluator<Packed>::~StagedEvaluator() = default;
template <class Packed>
void StagedEvaluator<Packed>::evaluate(const NeighbourView&, const GmnnOptions&, GmnnResult&) {
  require_device();
}
template <class Packed>
double StagedEvaluator<Packed>::time_runs(int) {
  require_device();
  return 0.0;
}
template class StagedEvaluator<PackedGmnn>;
template class StagedEvaluator<PackedBpnn>;

}  // namespace cuda
}  // namespace mlipbias
