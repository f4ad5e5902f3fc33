// See evaluation_checks.hpp.
#include "evaluation_checks.hpp"

#include <cmath>
#include <cstdio>
#include <vector>

namespace mlipbias {

namespace {

std::string fmt(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.6g", x);
  return buffer;
}

// First non-finite entry of `values`, reported per atom with `per_atom` entries each.
bool first_bad(const std::vector<double>& values, int per_atom, const char* quantity, NonFiniteOutput& bad) {
  for (std::size_t k = 0; k < values.size(); ++k) {
    if (std::isfinite(values[k])) continue;
    bad.quantity = quantity;
    bad.atom = static_cast<int64_t>(k / per_atom);
    bad.value = values[k];
    return true;
  }
  return false;
}

bool global_bad(const double* values, int n, const char* quantity, NonFiniteOutput& bad) {
  for (int k = 0; k < n; ++k) {
    if (std::isfinite(values[k])) continue;
    bad.quantity = quantity;
    bad.atom = -1;
    bad.value = values[k];
    return true;
  }
  return false;
}

}  // namespace

TooCloseError::TooCloseError(int64_t i_, int64_t j_, double r_, double min_distance_)
    : Error("atoms with indices " + std::to_string(i_) + " and " + std::to_string(j_) + " are " + fmt(r_) +
            " A apart, closer than min_distance = " + fmt(min_distance_) + " A"),
      i(i_),
      j(j_),
      r(r_),
      min_distance(min_distance_) {}

bool find_non_finite(const EvaluationResult& r, NonFiniteOutput& bad) {
  // Per-atom arrays first, so that the atom where it starts is named.
  return first_bad(r.atom_energies, 1, "atom energy", bad) || first_bad(r.forces, 3, "force", bad) ||
         first_bad(r.atom_uncertainty, 1, "atom uncertainty", bad) ||
         first_bad(r.uncertainty_gradient, 3, "uncertainty gradient", bad) ||
         global_bad(&r.energy, 1, "energy", bad) || global_bad(&r.uncertainty, 1, "uncertainty", bad) ||
         global_bad(r.virial, 6, "virial", bad) || global_bad(r.uncertainty_virial, 6, "uncertainty virial", bad);
}

}  // namespace mlipbias
