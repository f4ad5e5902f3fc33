// A GM-NN model packed for the staged evaluation of gmnn_stages.hpp (host and CUDA device), the
// checks of its input, and its host run (the reference the CUDA results are compared with, and
// itself held to the C++ evaluator by the CPU tests).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gmnn_stages.hpp"
#include "model.hpp"

namespace mlipbias {

struct PackedGmnn {
  GmnnView view;  // params and index point into the vectors below (host memory)
  std::vector<double> params;
  std::vector<int64_t> index;
  bool has_posterior = false;
  std::string path;
};

// Throws Error naming the file for a model that is not a GM-NN, or has more than
// kGmStagedMaxRadial radial functions.
PackedGmnn pack_gmnn(const Model& model);

struct GmnnOptions {
  bool posterior = false;   // U of the posterior (gradient features); the file must have it
  bool gradient = false;    // dU/dx, its virial and the bias forces (needs posterior)
  std::vector<double> tau;  // bias strength per model element (empty: 0 everywhere)
};

struct GmnnResult {
  double energy = 0.0;                // eV, ensemble mean
  double uncertainty = 0.0;           // U (eV), calibrated; 0 without posterior
  std::vector<double> member_energies;  // [M]
  std::vector<double> atom_energies;    // [n_centers]
  std::vector<double> forces;           // [n_atoms][3]
  double virial[9] = {};                // -sum D (x) dE/dD, row-major (not symmetrised)
  std::vector<double> uncertainty_gradient;  // [n_atoms][3] dU/dx (with gradient)
  double uncertainty_virial[9] = {};         // +sum D (x) dU/dD
  std::vector<double> bias_forces;           // [n_atoms][3] tau_(Z) dU/dx (with gradient)
};

// Checks the options against the model and the neighbours (every atom of an element of the
// model, offsets, neighbour indices, no pair of length 0); throws Error naming the problem.
void check_gmnn_input(const PackedGmnn& model, const NeighbourView& nb, const GmnnOptions& options);

GmnnNeighbours gmnn_neighbours(const NeighbourView& nb);

// The result from the output prefix (GmnnBuffers::n_outputs doubles) of a run.
void gmnn_result(const PackedGmnn& model, const GmnnNeighbours& nb, const double* outputs,
                 const GmnnOptions& options, GmnnResult& result);

// The stages on the host, serially (checks the input first).
void gmnn_evaluate_host(const PackedGmnn& model, const NeighbourView& nb, const GmnnOptions& options,
                        GmnnResult& result);

}  // namespace mlipbias
