// Checks on an evaluation that its callers (the LAMMPS plugin, the Python bindings) report in
// their own terms: LAMMPS names atoms by their IDs (tags) and the step, Python by indices.
//
//   try { evaluator.evaluate(view, result); }
//   catch (const TooCloseError& e) { ... e.i, e.j: indices into the atom array ... }
//   NonFiniteOutput bad;
//   if (find_non_finite(result, bad)) { ... bad.quantity, bad.atom ... }
#pragma once

#include <cstdint>
#include <string>

#include "common.hpp"
#include "model.hpp"

namespace mlipbias {

// Thrown by Evaluator when two atoms are closer than EvaluatorOptions::min_distance.
// i and j index the atom array of the NeighbourView (centres first, then ghosts).
class TooCloseError : public Error {
 public:
  TooCloseError(int64_t i_, int64_t j_, double r_, double min_distance_);
  int64_t i, j;
  double r, min_distance;
};

// The first output of an evaluation that is NaN or infinite.
struct NonFiniteOutput {
  std::string quantity;  // "energy", "atom energy", "force", "virial", "uncertainty", ...
  int64_t atom = -1;     // index into the atom array for a per-atom quantity, -1 for a global one
  double value = 0.0;
};

// One pass over everything `result` holds (arrays not computed are empty and skipped).
// Returns true and fills `bad` when an output is not finite: the model (weights that
// overflow, a damaged file) or the structure (atoms far outside the training data) gives
// numbers that must not drive dynamics.
bool find_non_finite(const EvaluationResult& result, NonFiniteOutput& bad);

}  // namespace mlipbias
