// Packing a GM-NN for gmnn_stages.hpp, checking its input, and the host executor of the stages.
#include "gmnn_packed.hpp"

#include <algorithm>
#include <string>

#include "model_data.hpp"

namespace mlipbias {

PackedGmnn pack_gmnn(const Model& model) {
  const ModelData& d = *model.data();
  if (!d.gaussian_moments)
    throw Error(d.path + ": the staged (CUDA) evaluation runs GM-NN files only (descriptor/kind "
                "gaussian_moments); this file has symmetry functions");
  const GaussianMoments& gm = *d.gaussian_moments;
  if (gm.settings().n_radial > kGmStagedMaxRadial)
    throw Error(d.path + ": the staged (CUDA) evaluation supports at most " + std::to_string(kGmStagedMaxRadial) +
                " radial functions, the file has " + std::to_string(gm.settings().n_radial));
  PackedGmnn out;
  out.path = d.path;
  std::vector<double>& params = out.params;
  std::vector<int64_t>& index = out.index;
  auto append = [&](const std::vector<double>& values) {
    const int64_t at = static_cast<int64_t>(params.size());
    params.insert(params.end(), values.begin(), values.end());
    return at;
  };
  GmnnView& v = out.view;
  v.gm = gm.settings();
  v.n_elements = d.n_elements();
  v.n_members = d.n_members();
  v.n_layers = d.n_layers;
  v.n_features = d.n_features;
  v.width = d.max_width;
  v.activation = d.activation;
  out.has_posterior = std::find(d.methods.begin(), d.methods.end(), "posterior") != d.methods.end();
  v.k = out.has_posterior ? d.k : 0;
  v.n_sketch = out.has_posterior ? d.n_sketch : 0;
  v.c_E = d.energy_calibration[static_cast<int>(Uncertainty::posterior)];
  v.beta = append(gm.beta_values());
  v.mean = static_cast<int64_t>(params.size());
  for (const auto& m : d.mean) append(m);
  v.inv_std = static_cast<int64_t>(params.size());
  for (const auto& s : d.inv_std) append(s);
  v.scale = static_cast<int64_t>(params.size());
  for (const Member& m : d.members) params.push_back(m.energy_scale);
  v.shift = static_cast<int64_t>(params.size());
  for (const Member& m : d.members) append(m.energy_shift);
  v.precision = append(out.has_posterior ? d.precision_energy : std::vector<double>());
  v.layers = static_cast<int64_t>(index.size());
  for (const Member& m : d.members)
    for (const Network& net : m.networks)
      for (const Layer& layer : net.layers) {
        const int64_t W = append(layer.W), b = append(layer.b);
        index.insert(index.end(), {W, b, layer.n_in, layer.n_out});
      }
  v.sketch = static_cast<int64_t>(index.size());
  if (out.has_posterior)
    for (int e = 0; e < d.n_elements(); ++e)
      for (int l = 0; l < d.n_layers; ++l) {
        const int64_t R1 = append(d.sketches[e][l].R1), R2 = append(d.sketches[e][l].R2);
        index.insert(index.end(), {R1, R2});
      }
  v.params = params.data();
  v.index = index.data();
  return out;
}

void check_gmnn_input(const PackedGmnn& model, const NeighbourView& nb, const GmnnOptions& options) {
  const GmnnView& v = model.view;
  if (options.posterior && !model.has_posterior)
    throw Error(model.path + ": the model file has no data for uncertainty 'posterior'");
  if (options.gradient && !options.posterior)
    throw Error("the uncertainty gradient and bias forces need uncertainty 'posterior'");
  if (!options.tau.empty() && static_cast<int>(options.tau.size()) != v.n_elements)
    throw Error("tau has " + std::to_string(options.tau.size()) + " values, expected one per model element (" +
                std::to_string(v.n_elements) + ")");
  if (nb.n_centers < 0 || nb.n_atoms < nb.n_centers)
    throw Error("n_centers = " + std::to_string(nb.n_centers) + " must be in 0..n_atoms = " +
                std::to_string(nb.n_atoms) + " (centres are the first atoms)");
  if (nb.offsets[0] != 0) throw Error("offsets[0] must be 0, got " + std::to_string(nb.offsets[0]));
  for (int64_t a = 0; a < nb.n_atoms; ++a)
    if (nb.species[a] < 0 || nb.species[a] >= v.n_elements)
      throw Error("atom " + std::to_string(a) + " has element index " + std::to_string(nb.species[a]) +
                  ", expected 0.." + std::to_string(v.n_elements - 1) +
                  " (the staged evaluation has no atoms outside the model)");
  for (int64_t i = 0; i < nb.n_centers; ++i) {
    if (nb.offsets[i + 1] < nb.offsets[i])
      throw Error("offsets must be non-decreasing (pairs sorted by centre); offsets[" + std::to_string(i + 1) +
                  "] < offsets[" + std::to_string(i) + "]");
    for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) {
      if (nb.j[p] < 0 || nb.j[p] >= nb.n_atoms)
        throw Error("pair " + std::to_string(p) + " of atom " + std::to_string(i) + " has neighbour index " +
                    std::to_string(nb.j[p]) + ", expected 0.." + std::to_string(nb.n_atoms - 1));
      if (dot3(nb.D + 3 * p, nb.D + 3 * p) == 0.0)
        throw Error("atoms " + std::to_string(i) + " and " + std::to_string(nb.j[p]) +
                    " are at the same position (pair " + std::to_string(p) + ")");
    }
  }
}

GmnnNeighbours gmnn_neighbours(const NeighbourView& nb) {
  return GmnnNeighbours{nb.n_centers, nb.n_atoms, nb.n_pairs(), nb.species, nb.offsets, nb.j, nb.D};
}

void gmnn_result(const PackedGmnn& model, const GmnnNeighbours& nb, const double* outputs,
                 const GmnnOptions& options, GmnnResult& result) {
  const GmnnView& v = model.view;
  const GmnnBuffers b = gmnn_layout(v, nb, const_cast<double*>(outputs));
  const int M = v.n_members;
  result.member_energies.assign(b.sums, b.sums + M);
  result.atom_energies.resize(nb.n_centers);
  result.energy = 0.0;
  for (int64_t i = 0; i < nb.n_centers; ++i) {
    double e = 0.0;
    for (int m = 0; m < M; ++m) e += b.member_E[i * M + m];
    result.atom_energies[i] = e / M;
    result.energy += result.atom_energies[i];
  }
  result.uncertainty = options.posterior ? b.scalars[0] : 0.0;
  result.forces.assign(b.forces, b.forces + 3 * nb.n_atoms);
  std::copy(b.virial, b.virial + 9, result.virial);
  std::copy(b.u_virial, b.u_virial + 9, result.uncertainty_virial);
  if (options.gradient) {
    result.uncertainty_gradient.assign(b.u_gradient, b.u_gradient + 3 * nb.n_atoms);
    result.bias_forces.assign(b.bias_forces, b.bias_forces + 3 * nb.n_atoms);
  } else {
    result.uncertainty_gradient.clear();
    result.bias_forces.clear();
  }
}

namespace {

struct HostExec {
  std::vector<double> scratch;
  void zero(double* p, int64_t n) { std::fill(p, p + n, 0.0); }
  template <class F>
  void for_each(int64_t n, const F& f) {
    for (int64_t i = 0; i < n; ++i) f(i, Strided{scratch.data(), 1});
  }
};

}  // namespace

void gmnn_evaluate_host(const PackedGmnn& model, const NeighbourView& view, const GmnnOptions& options,
                        GmnnResult& result) {
  check_gmnn_input(model, view, options);
  const GmnnNeighbours nb = gmnn_neighbours(view);
  std::vector<double> arena(gmnn_layout(model.view, nb, nullptr).n_total);
  const GmnnBuffers b = gmnn_layout(model.view, nb, arena.data());
  for (int e = 0; e < model.view.n_elements; ++e) b.tau[e] = options.tau.empty() ? 0.0 : options.tau[e];
  HostExec ex;
  ex.scratch.resize(model.view.scratch_size());
  gmnn_run(ex, model.view, nb, b, options.posterior, options.gradient);
  gmnn_result(model, nb, arena.data(), options, result);
}

}  // namespace mlipbias
