// BP-NN model inference with uncertainties and uncertainty-bias gradients.
//
// This header is the contract between the model file (docs/model_file.md), the Python
// bindings (MLIPCalculator's C++ backend) and the LAMMPS plugin (pair_style mlip/bias).
// Everything here follows docs/model_file.md: read it first.
//
// Evaluation runs in two phases so that a global uncertainty can be summed over MPI ranks
// without gathering atoms (LAMMPS domain decomposition):
//
//   Evaluator ev(model, options);
//   ev.forward(neighbors);                       // descriptors, member energies, local sums
//   std::vector<double> sums = ev.local_sums();  // a few doubles + K sketch entries
//   MPI_Allreduce(... sums ...);                 // or nothing in a serial caller
//   ev.backward(sums.data(), result);            // U, grad U, forces, virials
//
// Neighbours come as the NeighbourView of the symmetry functions (symmetry_functions.hpp):
// centres are atoms 0..n_centers-1; neighbours index the full atom array (centres first,
// then ghosts; periodic images of real atoms are represented through D), pairs of centre i
// are offsets[i]..offsets[i+1]-1, D[p] is r_ij = x_j - x_i. One extension: species[k] = -1
// marks an atom this model does not handle (a LAMMPS type mapped to NULL); it has no energy
// and its pairs are skipped, as centre and as neighbour. The arrays are not owned and must
// stay valid from forward() to the end of backward(). Forces are returned for every atom
// index (0..n_atoms-1); the caller folds ghost forces back to their owners (LAMMPS reverse
// communication).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "symmetry_functions.hpp"

namespace mlipbias {

enum class Uncertainty { none, ensemble, posterior, distance };

// Parse "none" | "ensemble" | "posterior" | "distance"; throws Error naming the choices.
Uncertainty parse_uncertainty(const std::string& name);
const char* uncertainty_name(Uncertainty u);

struct ModelData;  // weights, scaling, sketches, precisions; defined in model.cpp

// A loaded and validated .mlip file. Loading checks the container (model_file.hpp) and
// the schema (every record present with consistent shapes); errors name the file and the
// record. Cheap to copy (shared, immutable data).
class Model {
 public:
  static Model load(const std::string& path);

  const std::vector<std::string>& elements() const;
  int element_index(const std::string& symbol) const;  // -1 when unknown
  double cutoff() const;                               // largest descriptor cutoff (A)
  int n_features() const;
  int n_members() const;
  bool supports(Uncertainty u) const;                  // data present in the file
  double energy_calibration(Uncertainty u) const;      // c_E (1 when absent)
  double force_calibration(Uncertainty u) const;       // c_F (1 when absent)
  const std::string& path() const;

  std::shared_ptr<const ModelData> data() const { return data_; }

 private:
  std::shared_ptr<const ModelData> data_;
};

// What an evaluation computes. The Evaluator checks the options against the model (the
// method's data must be in the file; a gradient or per-atom U needs a method) and throws Error.
struct EvaluatorOptions {
  Uncertainty uncertainty = Uncertainty::none;
  bool uncertainty_gradient = false;   // compute grad_R U and its virial (needed for bias);
                                       // where U = 0 the gradient is 0 (a subgradient)
  bool atom_uncertainty = false;       // compute per-atom U_i
  double min_distance = 0.0;           // > 0: throw Error naming i, j, r when a pair is closer
  // The networks (and the tangent passes of the uncertainty gradient) in float32; descriptors,
  // their derivatives, contractions and every sum stay float64. Measured force error against
  // float64: benchmarks/RESULTS.md ("Batched networks").
  bool single_precision = false;
};

// Everything one evaluation returns. Arrays are resized by the evaluator and reused across
// calls (no allocation in an MD loop once sizes are stable).
struct EvaluationResult {
  double energy = 0.0;                   // sum of centre energies (ensemble mean), eV
  std::vector<double> atom_energies;     // [n_centers]
  std::vector<double> forces;            // [n_atoms][3], -dE/dx (ensemble mean)
  double virial[6] = {0, 0, 0, 0, 0, 0}; // xx yy zz xy xz yz of W = -sum r_ij (x) dE/dr_ij
  double uncertainty = 0.0;              // U (eV), calibrated; 0 with Uncertainty::none
  std::vector<double> uncertainty_gradient;  // [n_atoms][3], dU/dx (only when requested)
  // +sum r_ij (x) dU/dr_ij: the virial of the bias potential -U, so W_bias = tau_stress * this
  // (same sign convention as uncertainty_gradient, whose multiple tau * dU/dx is F_bias).
  double uncertainty_virial[6] = {0, 0, 0, 0, 0, 0};
  std::vector<double> atom_uncertainty;  // [n_centers], U_i (eV/A), calibrated
  std::vector<double> member_energies;   // [n_members], global (after the reduction)
  // Ensemble only, with atom_uncertainty: forces of every member [n_members][n_atoms][3].
  // atom_uncertainty is computed from them as they are, which is right when every atom
  // index is a real atom (serial callers). A caller with ghost atoms folds ghost rows back
  // to their owners first and then calls ensemble_atom_uncertainty() itself.
  std::vector<double> member_forces;
};

// U_i = c_F sqrt(sum_m |F_im - Fbar_i|^2 / (3 (M - 1))) for atoms 0..n-1 of member_forces
// laid out [n_members][stride_atoms][3]; writes n values to out.
void ensemble_atom_uncertainty(const double* member_forces, int n_members, int64_t stride_atoms,
                               int64_t n, double c_F, double* out);

// OpenMP threads an evaluation runs on (omp_get_max_threads; 1 in a build without OpenMP).
int evaluator_threads();

class Evaluator {
 public:
  Evaluator(const Model& model, const EvaluatorOptions& options);
  ~Evaluator();
  Evaluator(Evaluator&&) noexcept;
  Evaluator& operator=(Evaluator&&) noexcept;

  // Phase 1: descriptors, per-atom energies of every member, local sketch sums.
  void forward(const NeighbourView& neighbors);

  // Local partial sums to be summed over ranks before backward(). Layout (documented so a
  // caller can print it): [E_m for each member] [Phi (K entries) when posterior/distance]
  // [number of centres of species >= 0, as a double]. Valid until the next forward().
  const std::vector<double>& local_sums() const;

  // Phase 2: with the globally summed local_sums(), compute U, grad U and forces/virials.
  void backward(const double* global_sums, EvaluationResult& result);

  // Convenience for serial callers: forward + backward with local sums as global.
  void evaluate(const NeighbourView& neighbors, EvaluationResult& result);

  const EvaluatorOptions& options() const;
  // Change what the next evaluation computes (e.g. the uncertainty only every N steps);
  // cached buffers are kept.
  void set_options(const EvaluatorOptions& options);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Uncertainty-bias policy of seed 002, shared by the LAMMPS plugin and the Python
// calculators so both drive dynamics identically.
//   E_biased = E - tau U;  F_bias,i = tau_(Z_i) dU/dx_i;  W_bias = tau_stress sum r_ij (x) dU/dr_ij
// The biased dynamics conserve E_biased only with one tau for all species and no rescaling.
// With rescale (seed 002 Eq. 8) the strengths used at step t are tau times a ratio of the
// magnitudes of model forces F and uncertainty gradients dU/dx (3N-vectors), in one of two forms:
//   window (default; the form of the seed 002 authors' public code): no bias during a burn-in
//     of W steps, then tau_eff = tau * sqrt(sum_t' |F_t'|^2 / sum_t' |dU/dx_t'|^2) over the
//     last W steps t' <= t;
//   cumulative: tau_eff = tau * sum_t' |F_t'| / sum_t' |dU/dx_t'| over all steps t' <= t.
// Likewise tau_stress with the virial norms. Norms are global: a parallel caller passes the
// squared norms summed over ranks.
enum class RescaleForm { window, cumulative };

struct BiasSettings {
  double tau = 0.0;                    // strength for bias forces (dimensionless, U in eV)
  double tau_stress = 0.0;             // strength for the bias virial
  bool rescale = false;
  RescaleForm rescale_form = RescaleForm::window;
  int window = 100;                    // W: burn-in and window length (steps) of the window form
  std::vector<double> species_tau;     // [n_elements] strength per element; empty: tau for all
};

class BiasState {
 public:
  explicit BiasState(const BiasSettings& settings);

  // Record this step's global norms and return the effective strengths to apply now.
  // force_norm2 / gradient_norm2: squared norms of F (model) and dU/dx over all atoms;
  // virial_norm2 / gradient_virial_norm2: squared Frobenius norms of the two virials.
  void update(double force_norm2, double gradient_norm2, double virial_norm2,
              double gradient_virial_norm2);
  double tau_effective() const;                 // for the bias energy -tau_eff U
  double tau_effective(int element) const;      // for the bias force on an atom of element
  double tau_stress_effective() const;
  const BiasSettings& settings() const { return settings_; }
  int64_t steps() const { return steps_; }

  // Serialisable running sums (restart files, Python pickling): sums of |F|, |dU/dx|, |W|,
  // |W_U|, the step count and, for the window form, the squared norms of the last
  // min(steps, W) steps, oldest first, four per step.
  std::vector<double> state() const;
  void set_state(const std::vector<double>& state);

 private:
  double ratio(int first) const;       // the Eq. 8 factor of norms first (F or W), first + 1
  BiasSettings settings_;
  double force_ratio_ = 0.0, virial_ratio_ = 0.0;  // ratio(0), ratio(2) after the last update
  double sum_force_ = 0.0, sum_gradient_ = 0.0, sum_virial_ = 0.0, sum_gradient_virial_ = 0.0;
  int64_t steps_ = 0;
  std::vector<double> recent_;         // window form: ring of [W][4] squared norms
};

}  // namespace mlipbias
