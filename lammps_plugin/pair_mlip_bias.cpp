/* ----------------------------------------------------------------------
   pair_style mlip/bias (mlipbias LAMMPS plugin)

   The model's energy, forces and virial come from the mlipbias C++ core (cpp/model.hpp),
   evaluated in two phases: each rank sums its local contributions to the global
   uncertainty (ensemble member energies, sketched gradient features), one MPI_Allreduce
   combines them, and each rank then finishes its own atoms. Forces on ghost atoms are
   folded back to their owners by this style's own reverse communication, so newton on and
   off give identical results, and the bias-force norms used by `rescale yes` are computed
   from complete per-atom forces.
------------------------------------------------------------------------- */

#include "pair_mlip_bias.h"

#include "element_masses.h"

#include "atom.h"
#include "evaluation_checks.hpp"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

#ifndef MLIPBIAS_LAMMPS_VERSION
#error "MLIPBIAS_LAMMPS_VERSION must name the LAMMPS version the plugin is built against"
#endif

using namespace LAMMPS_NS;

namespace {

// Entries of pvector, seen by `compute ID all pair mlip/bias` as c_ID[1] .. c_ID[5].
enum PVector { PV_U = 0, PV_BIAS_ENERGY, PV_TAU, PV_TAU_STRESS, PV_MAX_ATOM_U, PV_COUNT };

double norm2_sym(const double w[6]) {
  // Frobenius norm squared of a symmetric tensor stored as xx yy zz xy xz yz
  return w[0] * w[0] + w[1] * w[1] + w[2] * w[2] + 2.0 * (w[3] * w[3] + w[4] * w[4] + w[5] * w[5]);
}

}    // namespace

/* ---------------------------------------------------------------------- */

PairMLIPBias::PairMLIPBias(LAMMPS *lmp) :
    Pair(lmp), method(mlipbias::Uncertainty::none), every(1), min_distance(0.5), bias_step(-1), fold(nullptr),
    fold_nmax(0), fold_stride(0), fold_stride_used_(0), atom_uncertainty(nullptr), atom_uncertainty_nmax(0),
    uncertainty_flag(0), uncertainty(0.0), bias_energy(0.0), tau_eff(0.0), tau_stress_eff(0.0),
    max_atom_uncertainty(0.0), masses_checked(false)
{
  if (std::strcmp(lmp->version, MLIPBIAS_LAMMPS_VERSION) != 0)
    error->all(FLERR,
               "pair_style mlip/bias was built for LAMMPS {} but is loaded into LAMMPS {}; "
               "reinstall mlipbias against this LAMMPS (pip install --force-reinstall mlipbias)",
               MLIPBIAS_LAMMPS_VERSION, lmp->version);
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  no_virial_fdotr_compute = 1;
  nextra = PV_COUNT;
  pvector = new double[nextra];
  for (int k = 0; k < nextra; k++) pvector[k] = 0.0;
}

PairMLIPBias::~PairMLIPBias()
{
  delete[] pvector;
  memory->destroy(fold);
  memory->destroy(atom_uncertainty);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

/* ----------------------------------------------------------------------
   pair_style mlip/bias MODEL [keyword value ...]
------------------------------------------------------------------------- */

void PairMLIPBias::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style mlip/bias command: expected "
                      "pair_style mlip/bias MODEL.mlip [keyword value ...]");
  model_path = arg[0];
  try {
    model = std::make_unique<mlipbias::Model>(mlipbias::Model::load(model_path));
  } catch (std::exception &e) {
    error->all(FLERR, "pair_style mlip/bias: {}", e.what());
  }
  const auto &elements = model->elements();
  const int nelements = static_cast<int>(elements.size());

  bool method_given = false, tau_stress_given = false;
  bias_settings = mlipbias::BiasSettings();
  bias_settings.species_tau.clear();
  std::vector<std::pair<int, double>> species_tau;
  every = 1;
  min_distance = 0.5;
  single_precision = false;

  int iarg = 1;
  while (iarg < narg) {
    const std::string key = arg[iarg];
    if (iarg + 2 > narg)
      error->all(FLERR, "pair_style mlip/bias: keyword '{}' needs a value", key);
    const char *value = arg[iarg + 1];
    if (key == "uncertainty") {
      try {
        method = mlipbias::parse_uncertainty(value);
      } catch (std::exception &e) {
        error->all(FLERR, "pair_style mlip/bias: {}", e.what());
      }
      method_given = true;
      iarg += 2;
    } else if (key == "tau") {
      bias_settings.tau = utils::numeric(FLERR, value, false, lmp);
      if (bias_settings.tau < 0.0)
        error->all(FLERR, "pair_style mlip/bias: tau must be >= 0, got {}", value);
      iarg += 2;
    } else if (key == "tau_stress") {
      bias_settings.tau_stress = utils::numeric(FLERR, value, false, lmp);
      if (bias_settings.tau_stress < 0.0)
        error->all(FLERR, "pair_style mlip/bias: tau_stress must be >= 0, got {}", value);
      tau_stress_given = true;
      iarg += 2;
    } else if (key == "rescale") {
      // yes = window (Zaverkin et al.'s form), or the form by name, or no
      const std::string form = value;
      bias_settings.rescale = form != "no" && form != "off" && form != "false";
      if (form == "cumulative")
        bias_settings.rescale_form = mlipbias::RescaleForm::cumulative;
      else if (form == "window" || form == "yes" || form == "on" || form == "true")
        bias_settings.rescale_form = mlipbias::RescaleForm::window;
      else if (bias_settings.rescale)
        error->all(FLERR, "pair_style mlip/bias: rescale must be yes, no, window or cumulative, got '{}'", form);
      iarg += 2;
    } else if (key == "rescale_window") {
      bias_settings.window = utils::inumeric(FLERR, value, false, lmp);
      if (bias_settings.window < 1)
        error->all(FLERR, "pair_style mlip/bias: rescale_window must be >= 1, got {}", value);
      iarg += 2;
    } else if (key == "tau_species") {
      // tau_species El T [El T ...]: pairs continue while the next word is a model element
      iarg += 1;
      int npairs = 0;
      while (iarg < narg && model->element_index(arg[iarg]) >= 0) {
        if (iarg + 2 > narg)
          error->all(FLERR, "pair_style mlip/bias: tau_species {} needs a value", arg[iarg]);
        const int element = model->element_index(arg[iarg]);
        const double t = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
        if (t < 0.0)
          error->all(FLERR, "pair_style mlip/bias: tau_species {} must be >= 0, got {}", arg[iarg],
                     arg[iarg + 1]);
        species_tau.emplace_back(element, t);
        iarg += 2;
        npairs++;
      }
      if (npairs == 0)
        error->all(FLERR,
                   "pair_style mlip/bias: tau_species expects element/value pairs with elements "
                   "of the model ({}), got '{}'",
                   utils::join_words(elements, " "), iarg < narg ? arg[iarg] : "");
    } else if (key == "every") {
      every = utils::inumeric(FLERR, value, false, lmp);
      if (every < 1) error->all(FLERR, "pair_style mlip/bias: every must be >= 1, got {}", value);
      iarg += 2;
    } else if (key == "precision") {
      const std::string p = value;
      if (p != "double" && p != "single")
        error->all(FLERR, "pair_style mlip/bias: precision must be double or single, got '{}'", p);
      single_precision = p == "single";
      iarg += 2;
    } else if (key == "min_distance") {
      min_distance = utils::numeric(FLERR, value, false, lmp);
      if (min_distance < 0.0)
        error->all(FLERR, "pair_style mlip/bias: min_distance must be >= 0, got {}", value);
      iarg += 2;
    } else {
      error->all(FLERR,
                 "pair_style mlip/bias: unknown keyword '{}' (known: uncertainty tau tau_stress "
                 "rescale rescale_window tau_species every min_distance precision)",
                 key);
    }
  }

  if (!tau_stress_given) bias_settings.tau_stress = bias_settings.tau;
  if (!species_tau.empty()) {
    bias_settings.species_tau.assign(nelements, bias_settings.tau);
    for (const auto &st : species_tau) bias_settings.species_tau[st.first] = st.second;
  }

  // Default method: the ensemble when the file has several members, else the posterior
  // when the file carries gradient features, else none.
  if (!method_given) {
    if (model->n_members() > 1)
      method = mlipbias::Uncertainty::ensemble;
    else if (model->supports(mlipbias::Uncertainty::posterior))
      method = mlipbias::Uncertainty::posterior;
    else
      method = mlipbias::Uncertainty::none;
  }
  if (method != mlipbias::Uncertainty::none && !model->supports(method))
    error->all(FLERR, "pair_style mlip/bias: model file {} has no data for uncertainty '{}'",
               model_path, mlipbias::uncertainty_name(method));

  const bool any_bias = bias_settings.tau > 0.0 || bias_settings.tau_stress > 0.0 ||
      !species_tau.empty() || bias_settings.rescale;
  if (any_bias && method == mlipbias::Uncertainty::none)
    error->all(FLERR, "pair_style mlip/bias: a bias (tau, tau_stress, tau_species, rescale) needs "
                      "an uncertainty method, and model file {} provides none",
               model_path);
  if (any_bias && every > 1)
    error->all(FLERR, "pair_style mlip/bias: every {} > 1 is only allowed without bias: the bias "
                      "needs the uncertainty gradient on every step",
               every);

  try {
    bias = std::make_unique<mlipbias::BiasState>(bias_settings);
    evaluator = std::make_unique<mlipbias::Evaluator>(*model, mlipbias::EvaluatorOptions());
  } catch (std::exception &e) {
    error->all(FLERR, "pair_style mlip/bias: {}", e.what());
  }
  bias_step = -1;

  // Reverse communication folds forces, uncertainty gradients and, for per-atom ensemble
  // uncertainties, every member's forces. Sized here: Comm sizes its buffers in init().
  const int max_stride = 6 + 3 * model->n_members();
  comm_reverse = max_stride;
  comm_reverse_off = max_stride;

  // pair_style issued again after pair_coeff: map the same element names onto the new model,
  // whose element order may differ (an element it lacks is an error here, not a wrong species).
  if (!type_names.empty()) map_types();

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "mlip/bias: model {} (elements {}, {} member(s), cutoff {} A), uncertainty {}, "
                   "tau {}, tau_stress {}, rescale {}, every {}, networks in {} precision, {} OpenMP "
                   "thread(s) per rank\n",
                   model_path, utils::join_words(elements, " "), model->n_members(),
                   model->cutoff(), mlipbias::uncertainty_name(method), bias_settings.tau,
                   bias_settings.tau_stress,
                   !bias_settings.rescale ? std::string("no")
                   : bias_settings.rescale_form == mlipbias::RescaleForm::cumulative
                       ? std::string("cumulative")
                       : "window " + std::to_string(bias_settings.window),
                   every, single_precision ? "single" : "double", mlipbias::evaluator_threads());
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ... (one model element or NULL per atom type)
------------------------------------------------------------------------- */

void PairMLIPBias::coeff(int narg, char **arg)
{
  if (!model) error->all(FLERR, "pair_coeff for mlip/bias before pair_style mlip/bias");
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR,
               "pair_coeff * * for mlip/bias needs one element (or NULL) per atom type: "
               "{} type(s), got {} name(s)",
               ntypes, narg - 2);
  if (std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for mlip/bias must be 'pair_coeff * * El1 El2 ...'");
  if (!allocated) allocate();

  masses_checked = false;
  type_names.assign(ntypes + 1, "NULL");
  for (int t = 1; t <= ntypes; t++) type_names[t] = arg[t + 1];
  map_types();
}

void PairMLIPBias::map_types()
{
  const int ntypes = static_cast<int>(type_names.size()) - 1;
  type_to_element.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; t++) {
    const std::string &name = type_names[t];
    if (name == "NULL") continue;
    const int element = model->element_index(name);
    if (element < 0)
      error->all(FLERR,
                 "pair_coeff for mlip/bias: element '{}' (atom type {}) is not in model file {} "
                 "(its elements: {})",
                 name, t, model_path, utils::join_words(model->elements(), " "));
    type_to_element[t] = element;
  }
  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (type_to_element[i] >= 0 && type_to_element[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_coeff for mlip/bias maps no atom type to an element");
}

void PairMLIPBias::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

void PairMLIPBias::init_style()
{
  if (!model || type_to_element.empty())
    error->all(FLERR, "pair_style mlip/bias needs pair_coeff * * with one element per type");
  if (std::strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style mlip/bias needs 'units metal' (models are in eV and Angstrom), got "
                      "'units {}'", update->unit_style);
  neighbor->add_request(this, NeighConst::REQ_FULL);
  check_masses();
}

double PairMLIPBias::init_one(int, int)
{
  return model->cutoff();
}

/* ---------------------------------------------------------------------- */

bool PairMLIPBias::bias_active() const
{
  if (bias_settings.tau > 0.0 || bias_settings.tau_stress > 0.0) return true;
  for (double t : bias_settings.species_tau)
    if (t > 0.0) return true;
  return false;
}

// CSR neighbour structure over the local atoms, pairs within the model cutoff only.
void PairMLIPBias::build_neighbors()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const double *x = atom->x[0];  // LAMMPS' per-atom arrays are contiguous: one load less per neighbour
  const int *type = atom->type;
  const double cut = model->cutoff();
  const double cutsq_model = cut * cut;

  species.resize(nall);
  for (int i = 0; i < nall; i++) species[i] = type_to_element[type[i]];

  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;

  // one pass over the list's rows in local index order (the CSR order), into arrays sized for
  // every listed neighbour (the skin's pairs are dropped as they come)
  in_list.assign(nlocal, 0);
  int64_t bound = 0;
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal || species[i] < 0) continue;
    in_list[i] = 1;
    bound += numneigh[i];
  }
  if (static_cast<int64_t>(pair_j.size()) < bound) {
    pair_j.resize(bound);
    pair_d.resize(3 * bound);
  }
  offsets.resize(nlocal + 1);
  int64_t p = 0;
  for (int i = 0; i < nlocal; i++) {
    offsets[i] = p;
    if (!in_list[i]) continue;
    const double xi = x[3 * i], yi = x[3 * i + 1], zi = x[3 * i + 2];
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[3 * j] - xi, dy = x[3 * j + 1] - yi, dz = x[3 * j + 2] - zi;
      if (dx * dx + dy * dy + dz * dz >= cutsq_model || species[j] < 0) continue;  // most fail the first
      pair_j[p] = j;
      pair_d[3 * p] = dx;
      pair_d[3 * p + 1] = dy;
      pair_d[3 * p + 2] = dz;
      p++;
    }
  }
  offsets[nlocal] = p;
}

/* ---------------------------------------------------------------------- */

void PairMLIPBias::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom || cvflag_atom)
    error->all(FLERR, "pair_style mlip/bias does not compute per-atom virials "
                      "(compute stress/atom or centroid/stress/atom)");

  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  build_neighbors();

  const bool biased = bias_active();
  const bool has_method = method != mlipbias::Uncertainty::none;
  const bool want_u =
      has_method && (biased || uncertainty_flag || (update->ntimestep % every) == 0);
  const bool want_atom_u = has_method && uncertainty_flag;
  const bool ensemble_atom_u = want_atom_u && method == mlipbias::Uncertainty::ensemble;

  mlipbias::EvaluatorOptions options;
  options.uncertainty = want_u ? method : mlipbias::Uncertainty::none;
  options.uncertainty_gradient = biased;
  options.atom_uncertainty = want_atom_u;
  options.min_distance = min_distance;
  options.single_precision = single_precision;
  evaluator->set_options(options);

  mlipbias::NeighbourView view;
  view.n_centers = nlocal;
  view.n_atoms = nall;
  view.species = species.data();
  view.offsets = offsets.data();
  view.j = pair_j.data();
  view.D = pair_d.data();
  // Errors are collected on each rank and stopped on all ranks together (stop_if_any_rank_failed): the
  // message then reaches rank 0's screen and log.lammps, where error->one's MPI_Abort could cut it off.
  std::string failure;
  auto guarded = [&](auto &&step) {
    try {
      step();
    } catch (mlipbias::TooCloseError &e) {
      failure = fmt::format("step {}: atoms with IDs {} and {} are {:.6g} A apart, closer than min_distance = "
                            "{:.6g} A (pair_style keyword min_distance)",
                            update->ntimestep, atom->tag[e.i], atom->tag[e.j], e.r, e.min_distance);
    } catch (std::exception &e) {
      failure = e.what();
    }
  };
  guarded([&] { evaluator->forward(view); });
  stop_if_any_rank_failed(failure);
  guarded([&] {
    const std::vector<double> &local = evaluator->local_sums();
    global_sums.resize(local.size());
    MPI_Allreduce(local.data(), global_sums.data(), static_cast<int>(local.size()), MPI_DOUBLE, MPI_SUM,
                  world);
    evaluator->backward(global_sums.data(), result);
  });
  if (failure.empty()) failure = non_finite_output();
  stop_if_any_rank_failed(failure);

  // Fold every per-atom quantity of ghost atoms into their owners.
  const int n_members = model->n_members();
  const int stride = 3 + (biased ? 3 : 0) + (ensemble_atom_u ? 3 * n_members : 0);
  grow_fold(stride);
  for (int i = 0; i < nall; i++) {
    double *row = fold + static_cast<int64_t>(i) * stride;
    for (int k = 0; k < 3; k++) row[k] = result.forces[3 * i + k];
    int off = 3;
    if (biased) {
      for (int k = 0; k < 3; k++) row[off + k] = result.uncertainty_gradient[3 * i + k];
      off += 3;
    }
    if (ensemble_atom_u)
      for (int m = 0; m < n_members; m++)
        for (int k = 0; k < 3; k++)
          row[off + 3 * m + k] = result.member_forces[(static_cast<int64_t>(m) * nall + i) * 3 + k];
  }
  fold_ghosts(stride);

  // Global norms (bias rescaling) and the global virials they need.
  double **f = atom->f;
  tau_eff = tau_stress_eff = 0.0;
  if (biased) {
    double local_norms[2] = {0.0, 0.0};
    for (int i = 0; i < nlocal; i++) {
      const double *row = fold + static_cast<int64_t>(i) * stride;
      local_norms[0] += row[0] * row[0] + row[1] * row[1] + row[2] * row[2];
      local_norms[1] += row[3] * row[3] + row[4] * row[4] + row[5] * row[5];
    }
    double local_virials[12], global_virials[12], global_norms[2];
    for (int k = 0; k < 6; k++) {
      local_virials[k] = result.virial[k];
      local_virials[6 + k] = result.uncertainty_virial[k];
    }
    MPI_Allreduce(local_norms, global_norms, 2, MPI_DOUBLE, MPI_SUM, world);
    MPI_Allreduce(local_virials, global_virials, 12, MPI_DOUBLE, MPI_SUM, world);
    if (update->ntimestep == bias_step) {
      bias->set_state(bias_state_before);
    } else {
      bias_state_before = bias->state();
      bias_step = update->ntimestep;
    }
    bias->update(global_norms[0], global_norms[1], norm2_sym(global_virials),
                 norm2_sym(global_virials + 6));
    tau_eff = bias->tau_effective();
    tau_stress_eff = bias->tau_stress_effective();
  }

  for (int i = 0; i < nlocal; i++) {
    if (species[i] < 0) continue;
    const double *row = fold + static_cast<int64_t>(i) * stride;
    const double t = biased ? bias->tau_effective(species[i]) : 0.0;
    f[i][0] += row[0] + t * (biased ? row[3] : 0.0);
    f[i][1] += row[1] + t * (biased ? row[4] : 0.0);
    f[i][2] += row[2] + t * (biased ? row[5] : 0.0);
  }

  if (want_u) uncertainty = result.uncertainty;
  bias_energy = biased ? -tau_eff * uncertainty : 0.0;

  if (eflag_global) {
    double e = 0.0;
    for (int i = 0; i < nlocal; i++) e += result.atom_energies[i];
    eng_vdwl += e;
    if (comm->me == 0) eng_vdwl += bias_energy;
  }
  if (eflag_atom) {
    // The global bias energy is shared evenly so that compute pe/atom sums to the pe.
    const double share = atom->natoms > 0 ? bias_energy / static_cast<double>(atom->natoms) : 0.0;
    for (int i = 0; i < nlocal; i++) eatom[i] += (species[i] >= 0 ? result.atom_energies[i] : 0.0) + share;
  }
  if (vflag_global)
    for (int k = 0; k < 6; k++)
      virial[k] += result.virial[k] + (biased ? tau_stress_eff * result.uncertainty_virial[k] : 0.0);

  if (want_atom_u) {
    if (atom->nmax > atom_uncertainty_nmax) {
      memory->destroy(atom_uncertainty);
      atom_uncertainty_nmax = atom->nmax;
      memory->create(atom_uncertainty, atom_uncertainty_nmax, "pair:atom_uncertainty");
    }
    const double c_force = model->force_calibration(method);
    const int off = 3 + (biased ? 3 : 0);
    double local_max = 0.0;
    for (int i = 0; i < nlocal; i++) {
      if (species[i] < 0) {
        atom_uncertainty[i] = 0.0;
        continue;
      }
      if (ensemble_atom_u)
        mlipbias::ensemble_atom_uncertainty(fold + static_cast<int64_t>(i) * stride + off,
                                            n_members, 1, 1, c_force, &atom_uncertainty[i]);
      else
        atom_uncertainty[i] = result.atom_uncertainty[i];
      local_max = std::max(local_max, atom_uncertainty[i]);
    }
    MPI_Allreduce(&local_max, &max_atom_uncertainty, 1, MPI_DOUBLE, MPI_MAX, world);
  }

  // compute pair sums pvector over ranks: rank 0 carries the global values.
  for (int k = 0; k < nextra; k++) pvector[k] = 0.0;
  if (comm->me == 0) {
    pvector[PV_U] = uncertainty;
    pvector[PV_BIAS_ENERGY] = bias_energy;
    pvector[PV_TAU] = tau_eff;
    pvector[PV_TAU_STRESS] = tau_stress_eff;
    pvector[PV_MAX_ATOM_U] = max_atom_uncertainty;
  }
}

/* ----------------------------------------------------------------------
   What stops the run before NaN or inf reaches the integrator (one pass over this rank's outputs):
   the step, the quantity and the atom ID, or "" when every output is finite.
------------------------------------------------------------------------- */

std::string PairMLIPBias::non_finite_output()
{
  mlipbias::NonFiniteOutput bad;
  if (!mlipbias::find_non_finite(result, bad)) return std::string();
  const std::string where =
      bad.atom >= 0 ? fmt::format(" on the atom with ID {}", atom->tag[bad.atom]) : std::string();
  return fmt::format("step {}: the model gives a non-finite {}{} ({}): its weights overflow for this structure, "
                     "which is far outside what model {} was trained on",
                     update->ntimestep, bad.quantity, where, bad.value, model_path);
}

/* ----------------------------------------------------------------------
   Called by every rank at the same point: when any rank's failure is not empty, all ranks stop with
   error->all and the message of the lowest failing rank (sent to rank 0, which prints and logs it).
   One integer reduction per call when nothing failed.
------------------------------------------------------------------------- */

void PairMLIPBias::stop_if_any_rank_failed(const std::string &failure)
{
  const int mine = failure.empty() ? comm->nprocs : comm->me;
  int first = comm->nprocs;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, world);
  if (first == comm->nprocs) return;
  int length = static_cast<int>(failure.size());
  MPI_Bcast(&length, 1, MPI_INT, first, world);
  std::string message = failure;
  message.resize(length);
  MPI_Bcast(message.data(), length, MPI_CHAR, first, world);
  error->all(FLERR, "pair_style mlip/bias (MPI rank {}): {}", first, message);
}

/* ----------------------------------------------------------------------
   Warn when a type's mass is far from the mass of the element pair_coeff maps it to:
   "pair_coeff * * O Si" on a data file whose Masses say Si O runs, but with swapped elements.
------------------------------------------------------------------------- */

void PairMLIPBias::check_masses()
{
  if (masses_checked || comm->me != 0 || atom->rmass_flag || !atom->mass) return;
  masses_checked = true;
  for (int t = 1; t < static_cast<int>(type_to_element.size()); t++) {
    if (type_to_element[t] < 0 || !atom->mass_setflag[t]) continue;
    const std::string &symbol = model->elements()[type_to_element[t]];
    const double expected = mlipbias_plugin::element_mass(symbol.c_str());
    const double mass = atom->mass[t];
    // Isotopes (D: 2.01 for H 1.008) stay within this; another element almost never does.
    if (expected > 0.0 && std::fabs(mass - expected) > 0.1 * expected + 0.5)
      error->warning(FLERR,
                     "pair_style mlip/bias: atom type {} has mass {:.6g} but pair_coeff maps it to {} "
                     "(mass {:.6g}); the mass is nearest to {}: check the order of the elements in "
                     "pair_coeff against the Masses of the data file (ignore this for an isotope)",
                     t, mass, symbol, expected, mlipbias_plugin::nearest_element(mass));
  }
}

/* ---------------------------------------------------------------------- */

void PairMLIPBias::grow_fold(int stride)
{
  const int nmax = atom->nmax;
  if (nmax > fold_nmax || stride > fold_stride) {
    memory->destroy(fold);
    fold_nmax = std::max(nmax, fold_nmax);
    fold_stride = std::max(stride, fold_stride);
    memory->create(fold, static_cast<bigint>(fold_nmax) * fold_stride, "pair:fold");
  }
  fold_stride_used_ = stride;
}

void PairMLIPBias::fold_ghosts(int stride)
{
  fold_stride_used_ = stride;
  comm->reverse_comm(this);
}

int PairMLIPBias::pack_reverse_comm(int n, int first, double *buf)
{
  const int s = fold_stride_used_;
  int m = 0;
  for (int i = first; i < first + n; i++) {
    const double *row = fold + static_cast<int64_t>(i) * s;
    for (int k = 0; k < s; k++) buf[m++] = row[k];
  }
  return m;
}

void PairMLIPBias::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int s = fold_stride_used_;
  int m = 0;
  for (int i = 0; i < n; i++) {
    double *row = fold + static_cast<int64_t>(list[i]) * s;
    for (int k = 0; k < s; k++) row[k] += buf[m++];
  }
}

/* ---------------------------------------------------------------------- */

void *PairMLIPBias::extract(const char *name, int &dim)
{
  dim = 0;
  if (std::strcmp(name, "uncertainty_flag") == 0) return (void *) &uncertainty_flag;
  if (std::strcmp(name, "uncertainty") == 0) return (void *) &uncertainty;
  if (std::strcmp(name, "bias_energy") == 0) return (void *) &bias_energy;
  if (std::strcmp(name, "tau") == 0) return (void *) &tau_eff;
  if (std::strcmp(name, "tau_stress") == 0) return (void *) &tau_stress_eff;
  return nullptr;
}

void *PairMLIPBias::extract_peratom(const char *name, int &ncol)
{
  ncol = 0;
  if (std::strcmp(name, "uncertainty") == 0) return (void *) atom_uncertainty;
  return nullptr;
}

double PairMLIPBias::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += static_cast<double>(fold_nmax) * fold_stride * sizeof(double);
  bytes += static_cast<double>(atom_uncertainty_nmax) * sizeof(double);
  bytes += static_cast<double>(pair_d.capacity()) * sizeof(double);
  bytes += static_cast<double>(pair_j.capacity()) * sizeof(int64_t);
  return bytes;
}
