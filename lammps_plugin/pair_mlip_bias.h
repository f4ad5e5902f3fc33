/* -*- c++ -*- ----------------------------------------------------------
   pair_style mlip/bias: a Behler-Parrinello model from an mlipbias .mlip file, its
   uncertainty, and uncertainty-bias forces and bias stress (Zaverkin et al. 2024).
   Documentation: lammps_plugin/README.md.
------------------------------------------------------------------------- */

#ifndef LMP_PAIR_MLIP_BIAS_H
#define LMP_PAIR_MLIP_BIAS_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

#include "model.hpp"

namespace LAMMPS_NS {

class PairMLIPBias : public Pair {
 public:
  PairMLIPBias(class LAMMPS *);
  ~PairMLIPBias() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void *extract(const char *, int &) override;
  void map_types();  // type_names -> type_to_element and setflag for the current model
  void *extract_peratom(const char *, int &) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;

 protected:
  // settings
  std::string model_path;
  std::unique_ptr<mlipbias::Model> model;
  std::unique_ptr<mlipbias::Evaluator> evaluator;
  std::unique_ptr<mlipbias::BiasState> bias;
  mlipbias::Uncertainty method;
  mlipbias::BiasSettings bias_settings;
  int every;              // evaluate U every this many steps when no bias is applied
  double min_distance;    // error when two atoms are closer (A)
  bool single_precision;  // precision single: the networks in float32
  std::vector<std::string> type_names;  // [ntypes + 1] from pair_coeff, "NULL" unmapped
  std::vector<int> type_to_element;    // [ntypes + 1] model element index, -1 for NULL

  // per-step work arrays
  std::vector<int64_t> species;        // [nall]
  std::vector<int64_t> offsets;        // [nlocal + 1]
  std::vector<char> in_list;           // [nlocal] 1: the list has its row and the model its element
  std::vector<int64_t> pair_j;         // [pairs]: sized for every listed neighbour, never shrunk
  std::vector<double> pair_d;          // [pairs][3] x_j - x_i
  mlipbias::EvaluationResult result;
  std::vector<double> global_sums;
  // rescale yes: one contribution to the running sums per timestep; a second evaluation of
  // the same step (the setup of a following run, run 0) replaces it instead of adding to it.
  bigint bias_step;                    // timestep of the last update, -1 before the first
  std::vector<double> bias_state_before;  // running sums before that update
  double *fold;           // [nmax * fold_stride]: per-atom values folded from ghosts to owners
  int fold_nmax, fold_stride;          // allocated rows and row length
  int fold_stride_used_;               // row length of the current fold (pack/unpack)
  double *atom_uncertainty;            // [nmax], for extract_peratom / fix pair
  int atom_uncertainty_nmax;

  // state exposed through extract() and compute pair (pvector)
  int uncertainty_flag;   // set by fix pair to request per-atom uncertainties on a step
  double uncertainty;     // last global U (eV)
  double bias_energy;     // -tau_eff U (eV)
  double tau_eff, tau_stress_eff;
  double max_atom_uncertainty;

  void allocate();
  void build_neighbors();
  bool bias_active() const;
  void grow_fold(int stride);
  void fold_ghosts(int stride);
  std::string non_finite_output();  // the step and atom ID of a NaN/inf output, or ""
  void stop_if_any_rank_failed(const std::string &failure);  // collective: error->all if any rank failed
  void check_masses();    // warn once when a type's mass is far from its element's
  bool masses_checked;
};

}    // namespace LAMMPS_NS

#endif
