// Packing a BP-NN for bpnn_stages.hpp and the host executor of its stages.
#include "bpnn_packed.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "model_data.hpp"

namespace mlipbias {

PackedBpnn pack_bpnn(const Model& model) {
  const ModelData& d = *model.data();
  if (d.gaussian_moments)
    throw Error(d.path + ": the staged BP-NN evaluation runs symmetry-function files; this file is a GM-NN "
                "(descriptor/kind gaussian_moments)");
  PackedBpnn out;
  pack_networks(model, out.base);
  std::vector<double>& params = out.base.params;
  std::vector<int64_t>& index = out.base.index;
  const int n_el = d.n_elements();
  const std::vector<double>& table = d.descriptor_table;  // validated by SymmetryFunctions at load
  const int n_sf = static_cast<int>(table.size() / SymmetryFunctions::kColumns);
  SfTable& t = out.sf;
  t.n_sf = n_sf;
  t.n_elements = n_el;
  t.cutoff = d.descriptor.cutoff();
  t.angular_cutoff = 0.0;
  t.rows = static_cast<int64_t>(params.size());
  std::vector<std::vector<int64_t>> radial(n_el), angular(static_cast<size_t>(n_el) * n_el);
  for (int f = 0; f < n_sf; ++f) {
    const double* row = &table[static_cast<size_t>(f) * SymmetryFunctions::kColumns];
    const double kind = row[0], zeta = row[5], rc = row[7];
    const int a = static_cast<int>(row[1]);
    // As SymmetryFunctions: integer zeta up to 1024 takes the integer power.
    const double izeta = (kind != 2 && zeta == std::floor(zeta) && zeta <= 1024) ? zeta : -1.0;
    params.insert(params.end(), {kind, row[3], row[4], zeta, row[6], rc, std::pow(2.0, 1.0 - zeta), izeta});
    if (kind == 2) {
      radial[a].push_back(f);
      continue;
    }
    const int b = static_cast<int>(row[2]);
    t.angular_cutoff = std::max(t.angular_cutoff, rc);
    angular[static_cast<size_t>(a) * n_el + b].push_back(f);
    if (a != b) angular[static_cast<size_t>(b) * n_el + a].push_back(f);
  }
  auto csr = [&](const std::vector<std::vector<int64_t>>& lists, int64_t* start, int64_t* list) {
    *start = static_cast<int64_t>(index.size());
    int64_t at = 0;
    for (const auto& l : lists) {
      index.push_back(at);
      at += static_cast<int64_t>(l.size());
    }
    index.push_back(at);
    *list = static_cast<int64_t>(index.size());
    for (const auto& l : lists) index.insert(index.end(), l.begin(), l.end());
  };
  csr(radial, &t.radial_start, &t.radial_list);
  csr(angular, &t.angular_start, &t.angular_list);
  out.base.view.params = params.data();
  out.base.view.index = index.data();
  return out;
}

void bpnn_evaluate_host(const PackedBpnn& model, const NeighbourView& view, const GmnnOptions& options,
                        GmnnResult& result) {
  check_gmnn_input(model.base, view, options);
  const GmnnNeighbours nb = gmnn_neighbours(view);
  const GmnnView& v = model.base.view;
  std::vector<double> arena(gmnn_layout(v, nb, nullptr).n_total);
  const GmnnBuffers b = gmnn_layout(v, nb, arena.data());
  for (int e = 0; e < v.n_elements; ++e) b.tau[e] = options.tau.empty() ? 0.0 : options.tau[e];
  StagedHostExec ex;
  ex.scratch.resize(v.scratch_size());
  bpnn_run(ex, model.view(), nb, b, options.posterior, options.gradient);
  gmnn_result(model.base, nb, arena.data(), options, result);
}

}  // namespace mlipbias
