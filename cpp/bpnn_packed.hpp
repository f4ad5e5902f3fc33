// A BP-NN model packed for the staged evaluation of bpnn_stages.hpp (host and CUDA device), and
// its host run (the reference the CUDA results are compared with, itself held to the C++
// evaluator by the CPU tests). Options, checks and results are GM-NN's (gmnn_packed.hpp).
#pragma once

#include "bpnn_stages.hpp"
#include "gmnn_packed.hpp"
#include "model.hpp"

namespace mlipbias {

struct PackedBpnn {
  PackedGmnn base;  // networks, flags and the arrays; base.view.gm and beta unused
  SfTable sf;       // offsets into base.params and base.index
  BpnnView view() const { return BpnnView{base.view, sf}; }
};

// Throws Error naming the file for a model that is not a BP-NN (symmetry functions).
PackedBpnn pack_bpnn(const Model& model);

// The stages on the host, serially (checks the input first: check_gmnn_input).
void bpnn_evaluate_host(const PackedBpnn& model, const NeighbourView& nb, const GmnnOptions& options,
                        GmnnResult& result);

}  // namespace mlipbias
