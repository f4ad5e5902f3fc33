// Two-phase evaluation of a BP-NN model with its uncertainty and the uncertainty gradient.
//
// forward(), one fused pass per atom while its neighbourhood is in cache: descriptors G_i
// (recording the geometry), for every member the network forward and backward pass (atomic
// energies and dE_i/dG_i), at once the descriptor vector-Jacobian product of the energy rows
// (the mean, or every member when member forces or the ensemble gradient are wanted) into
// pair gradients; the sketched gradient features phi_i of member 0; local sums.
// backward(): U from the global sums; the ensemble's dU/dx is the v-weighted sum of the member
// pair gradients (no descriptor work); the gradient-feature methods need dU/dG_i, known only
// after the global sums, and run one more descriptor vjp for it; scatter to atoms.
//
// dU/dG for the gradient-feature methods: with U^2 = c^2 q(Phi) and v = (1/2) dq/dPhi,
// dU = (c^2 / U) v . dPhi, and v . phi_i = sum_l delta_l^T B_l a_l with the weight-shaped
// matrix B_l = R1_l^T diag(v_l) R2_l / sqrt(k): the derivative of E_i along B in parameter
// space (docs/model_file.md). Its gradient with respect to G_i is the forward-mode tangent
// (along B) of the network's own backward pass, computed exactly below (tangent_pass).
//
// Each centre writes only its own rows, and every sum over centres or pairs runs serially in
// index order, so results do not depend on the number of OpenMP threads.
//
// GM-NN files (md.gaussian_moments) share the networks and the uncertainties but not the fused
// descriptor pass: their Gaussian moments are computed for all centres first (one block of
// features per member, each with its own beta), the energy rows are placed in their members'
// blocks, and one Gaussian-moment vjp with those right-hand sides gives the pair gradients.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "evaluation_checks.hpp"
#include "model.hpp"
#include "model_data.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mlipbias {

namespace {

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

std::string fmt(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.6g", x);
  return buffer;
}

// z[0..n_out) = b + W x for a layer stored with WT [n_in][n_out] (axpy over outputs).
inline void layer_forward(const Layer& layer, const double* x, double* z) {
  const int n_out = layer.n_out;
  std::copy(layer.b.begin(), layer.b.end(), z);
  for (int k = 0; k < layer.n_in; ++k) {
    const double xk = x[k];
    const double* w = &layer.WT[static_cast<size_t>(k) * n_out];
    for (int o = 0; o < n_out; ++o) z[o] += w[o] * xk;
  }
}

// y[0..n_in) (+)= W^T g (axpy over inputs).
inline void layer_backward(const Layer& layer, const double* g, double* y, bool accumulate) {
  const int n_in = layer.n_in;
  if (!accumulate) std::fill(y, y + n_in, 0.0);
  for (int o = 0; o < layer.n_out; ++o) {
    const double go = g[o];
    const double* w = &layer.W[static_cast<size_t>(o) * n_in];
    for (int k = 0; k < n_in; ++k) y[k] += w[k] * go;
  }
}

// Per-thread scratch for one atom's network passes; rows of width max_width per layer.
struct Workspace {
  int width = 0;
  std::vector<double> h, z, d1, d2, g;     // h: [L+1] rows, the others [L]
  std::vector<double> hdot, zdot, gdot;    // tangents (gradient-feature uncertainty gradient)
  std::vector<double> gh, ghdot;           // [width]

  void resize(int n_layers, int max_width) {
    width = max_width;
    const size_t row = static_cast<size_t>(max_width);
    h.resize((n_layers + 1) * row);
    hdot.resize((n_layers + 1) * row);
    for (auto* v : {&z, &d1, &d2, &g, &zdot, &gdot}) v->resize(n_layers * row);
    gh.resize(row);
    ghdot.resize(row);
  }
  double* H(int l) { return &h[static_cast<size_t>(l) * width]; }
  double* Z(int l) { return &z[static_cast<size_t>(l) * width]; }
  double* D1(int l) { return &d1[static_cast<size_t>(l) * width]; }
  double* D2(int l) { return &d2[static_cast<size_t>(l) * width]; }
  double* Gr(int l) { return &g[static_cast<size_t>(l) * width]; }
  double* Hdot(int l) { return &hdot[static_cast<size_t>(l) * width]; }
  double* Zdot(int l) { return &zdot[static_cast<size_t>(l) * width]; }
  double* Gdot(int l) { return &gdot[static_cast<size_t>(l) * width]; }
};

// Forward pass of one network from the descriptors of one atom: fills h, z, act' (and act''
// with `second`); returns the raw output z_L.
double network_forward(const ModelData& d, const Network& net, int element, const double* G, Workspace& ws,
                       bool second) {
  const double* mean = d.mean[element].data();
  const double* inv_std = d.inv_std[element].data();
  double* h0 = ws.H(0);
  for (int f = 0; f < d.n_features; ++f) h0[f] = (G[f] - mean[f]) * inv_std[f];
  const int L = d.n_layers;
  for (int l = 0; l < L; ++l) {
    const Layer& layer = net.layers[l];
    double* z = ws.Z(l);
    layer_forward(layer, ws.H(l), z);
    if (l == L - 1) break;
    double *h = ws.H(l + 1), *d1 = ws.D1(l), *d2 = ws.D2(l);
    double unused;
    for (int o = 0; o < layer.n_out; ++o) activation(d.activation, z[o], &h[o], &d1[o], second ? &d2[o] : &unused);
  }
  return ws.Z(L - 1)[0];
}

// Backward pass after network_forward: delta_l = dE_i/dz_l into ws.g (E_i = scale z_L + shift),
// and dE_i/dG into dEdG.
void network_backward(const ModelData& d, const Network& net, int element, double scale, Workspace& ws,
                      double* dEdG) {
  const int L = d.n_layers;
  ws.Gr(L - 1)[0] = scale;
  for (int l = L - 1; l >= 0; --l) {
    const Layer& layer = net.layers[l];
    layer_backward(layer, ws.Gr(l), ws.gh.data(), false);
    if (l == 0) break;
    const double* d1 = ws.D1(l - 1);
    double* g = ws.Gr(l - 1);
    for (int k = 0; k < layer.n_in; ++k) g[k] = d1[k] * ws.gh[k];
  }
  const double* inv_std = d.inv_std[element].data();
  for (int f = 0; f < d.n_features; ++f) dEdG[f] = ws.gh[f] * inv_std[f];
}

// The sketched gradient features of one atom (its element's block, L * k entries), from the
// deltas and layer inputs of member 0's passes in ws.
void sketch_features(const ModelData& d, int element, Workspace& ws, double* phi) {
  const double inv_sqrt_k = 1.0 / std::sqrt(static_cast<double>(d.k));
  const Network& net = d.members[0].networks[element];
  for (int l = 0; l < d.n_layers; ++l) {
    const Layer& layer = net.layers[l];
    const Sketch& s = d.sketches[element][l];
    const double* delta = ws.Gr(l);
    const double* a = ws.H(l);
    for (int p = 0; p < d.k; ++p) {
      const double* r1 = &s.R1[static_cast<size_t>(p) * layer.n_out];
      const double* r2 = &s.R2[static_cast<size_t>(p) * (layer.n_in + 1)];
      double x = 0.0, y = r2[layer.n_in];  // the bias column multiplies the appended 1
      for (int o = 0; o < layer.n_out; ++o) x += r1[o] * delta[o];
      for (int c = 0; c < layer.n_in; ++c) y += r2[c] * a[c];
      phi[l * d.k + p] = x * y * inv_sqrt_k;
    }
  }
}

// d/dG of (dE_i/dtheta . B) for member 0: the forward-mode tangent of network_forward and
// network_backward along the parameter direction B (one Layer per network layer holding
// dW in W/WT and db in b). Writes n_sf values to out.
void tangent_pass(const ModelData& d, int element, const std::vector<Layer>& B, const double* G, Workspace& ws,
                  double* out) {
  const Member& member = d.members[0];
  const Network& net = member.networks[element];
  const int L = d.n_layers;
  network_forward(d, net, element, G, ws, true);
  // Forward tangent: zdot_l = W_l hdot_l + dW_l h_l + db_l, hdot_(l+1) = act'(z_l) zdot_l, hdot_0 = 0.
  for (int l = 0; l < L; ++l) {
    const Layer& layer = net.layers[l];
    double* zdot = ws.Zdot(l);
    layer_forward(B[l], ws.H(l), zdot);
    if (l > 0) {
      const double* hdot = ws.Hdot(l);
      for (int k = 0; k < layer.n_in; ++k) {
        const double* w = &layer.WT[static_cast<size_t>(k) * layer.n_out];
        for (int o = 0; o < layer.n_out; ++o) zdot[o] += w[o] * hdot[k];
      }
    }
    if (l == L - 1) break;
    const double* d1 = ws.D1(l);
    double* hnext = ws.Hdot(l + 1);
    for (int o = 0; o < layer.n_out; ++o) hnext[o] = d1[o] * zdot[o];
  }
  // Backward with its tangent: gh = W^T g, ghdot = W^T gdot + dW^T g,
  // g_(l-1) = act' gh, gdot_(l-1) = act'' zdot gh + act' ghdot; the output scale is fixed.
  ws.Gr(L - 1)[0] = member.energy_scale;
  ws.Gdot(L - 1)[0] = 0.0;
  for (int l = L - 1; l >= 0; --l) {
    const Layer& layer = net.layers[l];
    layer_backward(layer, ws.Gr(l), ws.gh.data(), false);
    layer_backward(layer, ws.Gdot(l), ws.ghdot.data(), false);
    layer_backward(B[l], ws.Gr(l), ws.ghdot.data(), true);
    if (l == 0) break;
    const double *d1 = ws.D1(l - 1), *d2 = ws.D2(l - 1), *zdot = ws.Zdot(l - 1);
    double *g = ws.Gr(l - 1), *gdot = ws.Gdot(l - 1);
    for (int k = 0; k < layer.n_in; ++k) {
      g[k] = d1[k] * ws.gh[k];
      gdot[k] = d2[k] * zdot[k] * ws.gh[k] + d1[k] * ws.ghdot[k];
    }
  }
  const double* inv_std = d.inv_std[element].data();
  for (int f = 0; f < d.n_features; ++f) out[f] = ws.ghdot[f] * inv_std[f];
}

void add_outer(double* W, const double* D, const double* g, double sign) {
  W[0] += sign * D[0] * g[0];
  W[1] += sign * D[1] * g[1];
  W[2] += sign * D[2] * g[2];
  W[3] += sign * 0.5 * (D[0] * g[1] + D[1] * g[0]);
  W[4] += sign * 0.5 * (D[0] * g[2] + D[2] * g[0]);
  W[5] += sign * 0.5 * (D[1] * g[2] + D[2] * g[1]);
}

}  // namespace

// ------------------------------------------------------------------ state

struct Evaluator::Impl {
  std::shared_ptr<const ModelData> d;
  EvaluatorOptions opt;

  // Neighbours of the current evaluation as the descriptor sees them: the caller's arrays,
  // or a filtered copy without the pairs of atoms of species -1 (which become 0 there).
  NeighbourView nb;
  std::vector<int64_t> own_species, own_offsets, own_j;
  std::vector<double> own_D;
  std::vector<char> handled;  // [n_centers] species >= 0
  bool forward_done = false;

  std::vector<double> G;          // [n_centers][descriptor_width]: n_sf, or a GM-NN's n_sf per member
  std::vector<double> member_E;   // [n_centers][M] atomic energies
  std::vector<double> phi;        // [n_centers][L k] own-element block of the sketched features
  std::vector<double> atom_u;     // [n_centers] U_i of posterior and distance
  std::vector<double> sums;

  std::vector<std::vector<Layer>> direction;  // [n_elements][L]: B of the uncertainty gradient
  std::vector<double> v;                      // [K]
  int n_energy_rows = 1;            // pair-gradient rows of forward(): 1 (the mean) or M
  std::vector<double> pair_grad;    // [n_energy_rows][n_pairs][3] dE/dD_p of forward()
  std::vector<double> dUdG, u_pair_grad;  // gradient features: [n_centers][descriptor_width], [n_pairs][3]
  std::vector<double> dEdG;  // GM-NN: the energy rows [n_energy_rows][n_centers][descriptor_width]
  std::vector<Workspace> workspaces;
  std::vector<SymmetryFunctions::CentreWorkspace> sf_workspaces;
  std::vector<std::vector<double>> dE_rows;  // per thread [M][n_sf] dE_m/dG_i, then the mean

  bool gradient_features() const {
    return opt.uncertainty == Uncertainty::posterior || opt.uncertainty == Uncertainty::distance;
  }
  bool member_forces() const { return opt.uncertainty == Uncertainty::ensemble && opt.atom_uncertainty; }
  // Every member's pair gradients: for member forces, or for the ensemble's dU/dx.
  bool member_rows() const {
    return member_forces() || (opt.uncertainty == Uncertainty::ensemble && opt.uncertainty_gradient);
  }

  void check_options(const EvaluatorOptions& o) const;
  void prepare_neighbours(const NeighbourView& in);
  void forward_atoms();
  double uncertainty(const double* global, std::vector<double>& member_energies);
  void build_direction();

  // One workspace per OpenMP thread, allocated once.
  void ensure_workspaces() {
    const size_t threads = static_cast<size_t>(max_threads());
    if (workspaces.size() < threads) workspaces.resize(threads);
    if (sf_workspaces.size() < threads) sf_workspaces.resize(threads);
    if (dE_rows.size() < threads) dE_rows.resize(threads);
    for (auto& ws : workspaces)
      if (ws.width == 0) ws.resize(d->n_layers, d->max_width);
    for (auto& rows : dE_rows) rows.resize(static_cast<size_t>(d->n_members() + 1) * d->n_features);
  }
};

void Evaluator::Impl::check_options(const EvaluatorOptions& o) const {
  const std::string name = uncertainty_name(o.uncertainty);
  if (o.uncertainty == Uncertainty::none && (o.uncertainty_gradient || o.atom_uncertainty))
    throw Error("evaluator: the uncertainty gradient and per-atom uncertainties need an uncertainty method "
                "(ensemble, posterior or distance), got none");
  if (o.uncertainty == Uncertainty::ensemble && d->n_members() < 2)
    throw Error(d->path + ": uncertainty 'ensemble' needs at least 2 members, the model has " +
                std::to_string(d->n_members()));
  if (o.uncertainty != Uncertainty::none && o.uncertainty != Uncertainty::ensemble) {
    if (std::find(d->methods.begin(), d->methods.end(), name) == d->methods.end())
      throw Error(d->path + ": the model file has no data for uncertainty '" + name + "' (uq/methods lists: " +
                  [&] {
                    std::string s;
                    for (const auto& m : d->methods) s += (s.empty() ? "" : " ") + m;
                    return s.empty() ? std::string("nothing") : s;
                  }() +
                  ")");
  }
  if (!(o.min_distance >= 0) || !std::isfinite(o.min_distance))
    throw Error("evaluator: min_distance must be a finite number >= 0 (A), got " + fmt(o.min_distance));
}

void Evaluator::Impl::prepare_neighbours(const NeighbourView& in) {
  const int n_el = d->n_elements();
  if (in.n_centers < 0 || in.n_atoms < in.n_centers)
    throw Error("evaluator: n_centers = " + std::to_string(in.n_centers) + " must be in 0..n_atoms = " +
                std::to_string(in.n_atoms) + " (centres are the first atoms)");
  if (in.offsets[0] != 0) throw Error("evaluator: offsets[0] must be 0, got " + std::to_string(in.offsets[0]));
  bool any_unhandled = false;
  for (int64_t k = 0; k < in.n_atoms; ++k) {
    if (in.species[k] < -1 || in.species[k] >= n_el)
      throw Error("evaluator: atom " + std::to_string(k) + " has element index " + std::to_string(in.species[k]) +
                  ", expected -1 (not handled by this model) or 0.." + std::to_string(n_el - 1));
    any_unhandled |= in.species[k] < 0;
  }
  handled.resize(in.n_centers);
  for (int64_t i = 0; i < in.n_centers; ++i) {
    handled[i] = in.species[i] >= 0;
    if (in.offsets[i + 1] < in.offsets[i])
      throw Error("evaluator: offsets must be non-decreasing (pairs sorted by centre); offsets[" +
                  std::to_string(i + 1) + "] < offsets[" + std::to_string(i) + "]");
    for (int64_t p = in.offsets[i]; p < in.offsets[i + 1]; ++p)
      if (in.j[p] < 0 || in.j[p] >= in.n_atoms)
        throw Error("evaluator: pair " + std::to_string(p) + " has neighbour index " + std::to_string(in.j[p]) +
                    " outside 0.." + std::to_string(in.n_atoms - 1));
  }
  const double min2 = opt.min_distance * opt.min_distance;
  auto keep = [&](int64_t i, int64_t p) {
    const int64_t j = in.j[p];
    if (in.species[i] < 0 || in.species[j] < 0) return false;
    const double* D = in.D + 3 * p;
    const double r2 = dot3(D, D);
    if (r2 < min2) throw TooCloseError(i, j, std::sqrt(r2), opt.min_distance);
    return true;
  };
  if (!any_unhandled) {
    if (min2 > 0)
      for (int64_t i = 0; i < in.n_centers; ++i)
        for (int64_t p = in.offsets[i]; p < in.offsets[i + 1]; ++p) keep(i, p);
    nb = in;
    return;
  }
  own_species.assign(in.species, in.species + in.n_atoms);
  for (auto& s : own_species) s = std::max<int64_t>(s, 0);
  own_offsets.resize(in.n_centers + 1);
  own_offsets[0] = 0;
  own_j.clear();
  own_D.clear();
  for (int64_t i = 0; i < in.n_centers; ++i) {
    for (int64_t p = in.offsets[i]; p < in.offsets[i + 1]; ++p) {
      if (!keep(i, p)) continue;
      own_j.push_back(in.j[p]);
      own_D.insert(own_D.end(), in.D + 3 * p, in.D + 3 * p + 3);
    }
    own_offsets[i + 1] = static_cast<int64_t>(own_j.size());
  }
  nb = in;
  nb.species = own_species.data();
  nb.offsets = own_offsets.data();
  nb.j = own_j.data();
  nb.D = own_D.data();
}

void Evaluator::Impl::forward_atoms() {
  const ModelData& md = *d;
  const int64_t n = nb.n_centers;
  const int n_sf = md.n_features, M = md.n_members();
  const bool features = gradient_features();
  const bool atom_u_here = features && opt.atom_uncertainty;
  const int block = md.n_layers * md.k;
  const int64_t K = md.n_sketch;
  const int64_t n_pairs = nb.n_pairs();
  n_energy_rows = member_rows() ? M : 1;
  const bool gm = md.gaussian_moments != nullptr;
  const int n_g = md.descriptor_width();
  const size_t rows_stride = static_cast<size_t>(n) * n_g;
  G.resize(n * n_g);
  member_E.resize(n * M);
  pair_grad.resize(static_cast<size_t>(n_energy_rows) * n_pairs * 3);
  if (features) phi.resize(n * block);
  if (atom_u_here) atom_u.resize(n);

  if (gm) {
    md.gaussian_moments->compute(nb, G.data());  // checks nb
    dEdG.assign(n_energy_rows * rows_stride, 0.0);
  } else {
    md.descriptor.check(nb);
  }
  ensure_workspaces();

  const double c_F = md.force_calibration[static_cast<int>(opt.uncertainty)];
  // Dynamic: environments differ in cost. Results do not depend on the schedule (each centre
  // writes only its own rows and its own pairs).
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) {
    const int thread = thread_id();
    Workspace& ws = workspaces[thread];
    SymmetryFunctions::CentreWorkspace& sf_ws = sf_workspaces[thread];
    double* dE = dE_rows[thread].data();
    double* Gi = &G[i * n_g];
    if (!handled[i]) {
      std::fill(Gi, Gi + n_g, 0.0);
      for (int r = 0; r < n_energy_rows; ++r)
        for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p)
          std::fill_n(&pair_grad[(static_cast<size_t>(r) * n_pairs + p) * 3], 3, 0.0);
      std::fill(&member_E[i * M], &member_E[i * M] + M, 0.0);
      if (features) std::fill(&phi[i * block], &phi[i * block] + block, 0.0);
      if (atom_u_here) atom_u[i] = 0.0;
      continue;
    }
    const int e = static_cast<int>(nb.species[i]);
    if (!gm) md.descriptor.centre_values(nb, i, sf_ws, Gi);
    // Member 0 last, so that its deltas and layer inputs are still in ws for the sketch.
    for (int m = M - 1; m >= 0; --m) {
      const Member& member = md.members[m];
      const Network& net = member.networks[e];
      const double out = network_forward(md, net, e, Gi + md.member_block(m), ws, false);
      member_E[i * M + m] = member.energy_scale * out + member.energy_shift[e];
      network_backward(md, net, e, member.energy_scale, ws, dE + m * n_sf);
    }
    if (gm) {
      // Member m's row into its block (the mean row: every block, divided by M); the
      // Gaussian-moment vjp of all centres runs after this loop.
      for (int m = 0; m < M; ++m) {
        double* row = &dEdG[(n_energy_rows == 1 ? 0 : m * rows_stride) + i * n_g + md.member_block(m)];
        const double* dEm = dE + m * n_sf;
        if (n_energy_rows == 1)
          for (int f = 0; f < n_sf; ++f) row[f] = dEm[f] / M;
        else
          std::copy(dEm, dEm + n_sf, row);
      }
    } else {
      const double* rows = dE;
      if (n_energy_rows == 1) {  // the mean over members, in row M
        double* mean = dE + M * n_sf;
        std::fill(mean, mean + n_sf, 0.0);
        for (int m = 0; m < M; ++m)
          for (int f = 0; f < n_sf; ++f) mean[f] += dE[m * n_sf + f];
        for (int f = 0; f < n_sf; ++f) mean[f] /= M;
        rows = mean;
      }
      md.descriptor.centre_vjp(nb, i, sf_ws, n_energy_rows, rows, pair_grad.data(), 3 * n_pairs);
    }
    if (!features) continue;
    double* p = &phi[i * block];
    sketch_features(md, e, ws, p);
    if (!atom_u_here) continue;
    const int64_t off = md.sketch_offset(e, 0);
    if (opt.uncertainty == Uncertainty::posterior) {
      double q = 0.0;
      for (int a = 0; a < block; ++a) {
        const double* row = &md.precision_atom[(off + a) * K + off];
        double s = 0.0;
        for (int b = 0; b < block; ++b) s += row[b] * p[b];
        q += p[a] * s;
      }
      atom_u[i] = c_F * std::sqrt(std::max(q, 0.0));
    } else {
      double best = INFINITY;
      for (int64_t t = 0; t < md.n_train_atom; ++t) {
        const double* row = &md.train_atom[t * K + off];
        double s = md.train_atom_rest_norm2[e][t];
        for (int a = 0; a < block; ++a) {
          const double x = p[a] - row[a];
          s += x * x;
        }
        best = std::min(best, s);
      }
      atom_u[i] = c_F * std::sqrt(best);
    }
  }

  if (gm && n > 0) md.gaussian_moments->vjp(nb, n_energy_rows, dEdG.data(), pair_grad.data());

  // Local sums, serially in atom order.
  sums.assign(M + (features ? K : 0) + 1, 0.0);
  double count = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (!handled[i]) continue;
    for (int m = 0; m < M; ++m) sums[m] += member_E[i * M + m];
    if (features) {
      const int64_t off = md.sketch_offset(static_cast<int>(nb.species[i]), 0);
      for (int a = 0; a < block; ++a) sums[M + off + a] += phi[i * block + a];
    }
    count += 1.0;
  }
  sums.back() = count;
}

// U from the global sums; fills member_energies and, for the gradient, v or the member weights.
double Evaluator::Impl::uncertainty(const double* global, std::vector<double>& member_energies) {
  const ModelData& md = *d;
  const int M = md.n_members();
  const int64_t K = md.n_sketch;
  member_energies.assign(global, global + M);
  const double c_E = md.energy_calibration[static_cast<int>(opt.uncertainty)];
  switch (opt.uncertainty) {
    case Uncertainty::none:
      return 0.0;
    case Uncertainty::ensemble: {
      double mean = 0.0;
      for (int m = 0; m < M; ++m) mean += global[m];
      mean /= M;
      double s = 0.0;
      for (int m = 0; m < M; ++m) s += (global[m] - mean) * (global[m] - mean);
      const double U = c_E * std::sqrt(s / (M - 1));
      // dU/dE_m = c_E^2 (E_m - Ebar) / ((M - 1) U), stored in v.
      v.assign(M, 0.0);
      if (U > 0)
        for (int m = 0; m < M; ++m) v[m] = c_E * c_E * (global[m] - mean) / ((M - 1) * U);
      return U;
    }
    case Uncertainty::posterior: {
      const double* Phi = global + M;
      const double* A = md.precision_energy.data();
      v.assign(K, 0.0);
      double q = 0.0;
      for (int64_t a = 0; a < K; ++a) {
        double s = 0.0, t = 0.0;
        for (int64_t b = 0; b < K; ++b) {
          s += A[a * K + b] * Phi[b];
          t += A[b * K + a] * Phi[b];
        }
        v[a] = 0.5 * (s + t);  // (1/2) d(Phi^T A Phi)/dPhi
        q += Phi[a] * s;
      }
      const double U = c_E * std::sqrt(std::max(q, 0.0));
      for (auto& x : v) x = U > 0 ? x * c_E * c_E / U : 0.0;
      return U;
    }
    case Uncertainty::distance: {
      // c_E N min_s |Phi/N - pbar_s| = c_E min_s |Phi - N pbar_s|.
      const double* Phi = global + M;
      const double N = global[M + K];
      v.assign(K, 0.0);
      if (N <= 0) return 0.0;
      double best = INFINITY;
      int64_t best_s = 0;
      for (int64_t s = 0; s < md.n_train_energy; ++s) {
        const double* p = &md.train_energy[s * K];
        double q = 0.0;
        for (int64_t a = 0; a < K; ++a) {
          const double x = Phi[a] - N * p[a];
          q += x * x;
        }
        if (q < best) best = q, best_s = s;
      }
      const double U = c_E * std::sqrt(best);
      if (U > 0) {
        const double* p = &md.train_energy[best_s * K];
        for (int64_t a = 0; a < K; ++a) v[a] = (Phi[a] - N * p[a]) * c_E * c_E / U;
      }
      return U;
    }
  }
  return 0.0;
}

// B_l = R1_l^T diag(v_l) R2_l / sqrt(k) for every element and layer (member 0's shapes).
void Evaluator::Impl::build_direction() {
  const ModelData& md = *d;
  const double inv_sqrt_k = 1.0 / std::sqrt(static_cast<double>(md.k));
  direction.resize(md.n_elements());
  for (int e = 0; e < md.n_elements(); ++e) {
    direction[e].resize(md.n_layers);
    for (int l = 0; l < md.n_layers; ++l) {
      const Layer& layer = md.members[0].networks[e].layers[l];
      const Sketch& s = md.sketches[e][l];
      Layer& B = direction[e][l];
      const int n_in = layer.n_in, n_out = layer.n_out;
      B.n_in = n_in;
      B.n_out = n_out;
      B.W.assign(static_cast<size_t>(n_out) * n_in, 0.0);
      B.b.assign(n_out, 0.0);
      const double* vl = &v[md.sketch_offset(e, l)];
      for (int p = 0; p < md.k; ++p) {
        const double coef = vl[p] * inv_sqrt_k;
        if (coef == 0.0) continue;
        const double* r1 = &s.R1[static_cast<size_t>(p) * n_out];
        const double* r2 = &s.R2[static_cast<size_t>(p) * (n_in + 1)];
        for (int o = 0; o < n_out; ++o) {
          const double a = coef * r1[o];
          double* w = &B.W[static_cast<size_t>(o) * n_in];
          for (int c = 0; c < n_in; ++c) w[c] += a * r2[c];
          B.b[o] += a * r2[n_in];
        }
      }
      B.WT.resize(B.W.size());
      for (int o = 0; o < n_out; ++o)
        for (int c = 0; c < n_in; ++c) B.WT[static_cast<size_t>(c) * n_out + o] = B.W[static_cast<size_t>(o) * n_in + c];
    }
  }
}

// ------------------------------------------------------------------ Evaluator

Evaluator::Evaluator(const Model& model, const EvaluatorOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->d = model.data();
  impl_->check_options(options);
  impl_->opt = options;
}

Evaluator::~Evaluator() = default;
Evaluator::Evaluator(Evaluator&&) noexcept = default;
Evaluator& Evaluator::operator=(Evaluator&&) noexcept = default;

const EvaluatorOptions& Evaluator::options() const { return impl_->opt; }

void Evaluator::set_options(const EvaluatorOptions& options) {
  impl_->check_options(options);
  impl_->opt = options;
  impl_->forward_done = false;
}

void Evaluator::forward(const NeighbourView& neighbors) {
  Impl& s = *impl_;
  s.forward_done = false;
  s.prepare_neighbours(neighbors);
  s.forward_atoms();
  s.forward_done = true;
}

const std::vector<double>& Evaluator::local_sums() const {
  if (!impl_->forward_done) throw Error("evaluator: local_sums() before forward()");
  return impl_->sums;
}

void Evaluator::backward(const double* global_sums, EvaluationResult& result) {
  Impl& s = *impl_;
  if (!s.forward_done) throw Error("evaluator: backward() without a forward() for the current options");
  const ModelData& md = *s.d;
  const NeighbourView& nb = s.nb;
  const int64_t n = nb.n_centers, n_atoms = nb.n_atoms, n_pairs = nb.n_pairs();
  const int M = md.n_members();
  const EvaluatorOptions& opt = s.opt;

  // Energies.
  result.atom_energies.resize(n);
  result.energy = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double e = 0.0;
    for (int m = 0; m < M; ++m) e += s.member_E[i * M + m];
    result.atom_energies[i] = e / M;
    result.energy += result.atom_energies[i];
  }
  result.uncertainty = s.uncertainty(global_sums, result.member_energies);
  const bool gradient = opt.uncertainty_gradient && result.uncertainty > 0;

  // Pair gradients of U: for the ensemble from the member rows of forward(), for the
  // gradient features by one descriptor vjp of dU/dG_i (the tangent pass of each atom).
  const int n_energy_rows = s.n_energy_rows;
  const size_t rhs_stride = static_cast<size_t>(n_pairs) * 3;
  if (gradient) {
    s.u_pair_grad.assign(rhs_stride, 0.0);
    if (opt.uncertainty == Uncertainty::ensemble) {
      for (int m = 0; m < M; ++m) {
        const double* gm = &s.pair_grad[m * rhs_stride];
        for (size_t k = 0; k < rhs_stride; ++k) s.u_pair_grad[k] += s.v[m] * gm[k];
      }
    } else {
      s.build_direction();
      s.ensure_workspaces();
      // The features are member 0's: its block of G (a GM-NN's other blocks stay 0).
      const int n_g = md.descriptor_width();
      s.dUdG.assign(static_cast<size_t>(n) * n_g, 0.0);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        if (!s.handled[i]) continue;
        const int e = static_cast<int>(nb.species[i]);
        tangent_pass(md, e, s.direction[e], &s.G[i * n_g], s.workspaces[thread_id()], &s.dUdG[i * n_g]);
      }
      if (n > 0 && md.gaussian_moments)
        md.gaussian_moments->vjp(nb, 1, s.dUdG.data(), s.u_pair_grad.data());
      else if (n > 0)
        md.descriptor.vjp(nb, 1, s.dUdG.data(), s.u_pair_grad.data());
    }
  }

  // Scatter pair gradients g_p = dX/dD_p: D_p = x_j - x_i, so dX/dx_j += g_p, dX/dx_i -= g_p.
  result.forces.assign(3 * n_atoms, 0.0);
  std::fill(result.virial, result.virial + 6, 0.0);
  std::fill(result.uncertainty_virial, result.uncertainty_virial + 6, 0.0);
  if (s.member_forces())
    result.member_forces.assign(static_cast<size_t>(M) * n_atoms * 3, 0.0);
  else
    result.member_forces.clear();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) {
      const int64_t j = nb.j[p];
      double g[3] = {0.0, 0.0, 0.0};
      for (int r = 0; r < n_energy_rows; ++r) {
        const double* gr = &s.pair_grad[r * rhs_stride + 3 * p];
        for (int x = 0; x < 3; ++x) g[x] += gr[x];
        if (!result.member_forces.empty()) {
          double* Fm = &result.member_forces[static_cast<size_t>(r) * n_atoms * 3];
          for (int x = 0; x < 3; ++x) {
            Fm[3 * i + x] += gr[x];
            Fm[3 * j + x] -= gr[x];
          }
        }
      }
      for (int x = 0; x < 3; ++x) g[x] /= n_energy_rows;
      for (int x = 0; x < 3; ++x) {
        result.forces[3 * i + x] += g[x];
        result.forces[3 * j + x] -= g[x];
      }
      add_outer(result.virial, nb.D + 3 * p, g, -1.0);
    }
  }
  if (gradient) {
    result.uncertainty_gradient.assign(3 * n_atoms, 0.0);
    const double* gU = s.u_pair_grad.data();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) {
        const int64_t j = nb.j[p];
        for (int x = 0; x < 3; ++x) {
          result.uncertainty_gradient[3 * i + x] -= gU[3 * p + x];
          result.uncertainty_gradient[3 * j + x] += gU[3 * p + x];
        }
        add_outer(result.uncertainty_virial, nb.D + 3 * p, gU + 3 * p, 1.0);
      }
  } else if (opt.uncertainty_gradient) {
    result.uncertainty_gradient.assign(3 * n_atoms, 0.0);  // U = 0: the zero subgradient
  } else {
    result.uncertainty_gradient.clear();
  }

  // Per-atom uncertainties.
  if (!opt.atom_uncertainty) {
    result.atom_uncertainty.clear();
  } else if (opt.uncertainty == Uncertainty::ensemble) {
    result.atom_uncertainty.resize(n);
    ensemble_atom_uncertainty(result.member_forces.data(), M, n_atoms, n,
                              md.force_calibration[static_cast<int>(Uncertainty::ensemble)],
                              result.atom_uncertainty.data());
  } else {
    result.atom_uncertainty.assign(s.atom_u.begin(), s.atom_u.begin() + n);
  }
}

void Evaluator::evaluate(const NeighbourView& neighbors, EvaluationResult& result) {
  forward(neighbors);
  backward(impl_->sums.data(), result);  // backward() reads the sums and leaves them alone
}

}  // namespace mlipbias
