// Symmetry functions: table validation and the OpenMP loops over centres.
//
// One traversal (visit_center) walks the pairs and triplets of a centre and hands every
// term to a "sink"; compute, compute_with_derivatives and jvp differ only in their sink. The
// vjp (forces) records the centre's geometry during its values traversal and contracts from
// that record (contract_center), grouping the angular functions that share a radial part.
// Each centre writes only its own row of G and its own pairs' entries, so results do not
// depend on the number of threads or on the schedule.
#include "symmetry_functions.hpp"

#include <algorithm>
#include <cstdio>
#include <string>
#include <type_traits>

namespace mlipbias {

namespace {

std::string fmt(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", x);
  return buffer;
}

// Index of `value` in `list`, appending it when absent.
template <class T, class Eq>
int intern(std::vector<T>& list, const T& value, Eq eq) {
  for (size_t k = 0; k < list.size(); ++k)
    if (eq(list[k], value)) return static_cast<int>(k);
  list.push_back(value);
  return static_cast<int>(list.size() - 1);
}

}  // namespace

SymmetryFunctions::SymmetryFunctions(const double* table, int64_t n_sf, int64_t n_elements)
    : n_sf_(n_sf), n_elements_(n_elements) {
  if (n_elements < 1) throw Error("symmetry functions: n_elements must be at least 1, got " + std::to_string(n_elements));
  if (n_sf < 1) throw Error("symmetry functions: the table is empty (no functions)");
  radial_by_element_.resize(n_elements);
  angular_by_pair_.resize(n_elements * n_elements);
  for (int64_t f = 0; f < n_sf; ++f) {
    const double* row = table + f * kColumns;
    const std::string where = "symmetry function " + std::to_string(f) + ": ";
    for (int c = 0; c < kColumns; ++c)
      if (!std::isfinite(row[c])) throw Error(where + "column " + std::to_string(c) + " is not finite");
    const double kind = row[0], a = row[1], b = row[2], eta = row[3], rs = row[4], zeta = row[5],
                 lambda = row[6], rc = row[7];
    if (kind != 2 && kind != 4 && kind != 5) throw Error(where + "kind must be 2, 4 or 5, got " + fmt(kind));
    auto check_element = [&](double e, const char* name) {
      if (e != std::floor(e) || e < 0 || e >= static_cast<double>(n_elements))
        throw Error(where + "element index " + name + " = " + fmt(e) + " is not in 0.." +
                    std::to_string(n_elements - 1));
    };
    check_element(a, "a");
    if (eta < 0) throw Error(where + "eta must be >= 0, got " + fmt(eta));
    if (!(rc > 0)) throw Error(where + "cutoff rc must be > 0, got " + fmt(rc));
    const int cut = intern(cutoffs_, rc, [](double x, double y) { return x == y; });
    cutoff_ = std::max(cutoff_, rc);
    if (kind == 2) {
      if (b != -1) throw Error(where + "G2 takes b = -1 (one neighbour element), got " + fmt(b));
      if (rs < 0) throw Error(where + "rs must be >= 0, got " + fmt(rs));
      if (zeta != 0 || lambda != 0) throw Error(where + "G2 has no zeta or lambda: set both columns to 0");
      radial_by_element_[static_cast<int64_t>(a)].push_back({f, eta, rs, cut});
      continue;
    }
    check_element(b, "b");
    if (rs != 0) throw Error(where + "G4 and G5 have no rs: set the column to 0, got " + fmt(rs));
    if (zeta < 1) throw Error(where + "zeta must be >= 1, got " + fmt(zeta));
    if (!(std::fabs(lambda) <= 1) || lambda == 0)
      throw Error(where + "lambda must be in [-1, 1] and not 0 (usually +1 or -1), got " + fmt(lambda));
    angular_cutoff_ = std::max(angular_cutoff_, rc);
    const int key = intern(radial_keys_, RadialKey{eta, cut, false},
                           [](const RadialKey& x, const RadialKey& y) { return x.eta == y.eta && x.cut == y.cut; });
    if (kind == 4) radial_keys_[key].at_rjk = true;
    const int izeta = (zeta == std::floor(zeta) && zeta <= 1024) ? static_cast<int>(zeta) : -1;
    const int shape = intern(shapes_, Shape{zeta, lambda, std::pow(2.0, 1.0 - zeta), izeta},
                             [](const Shape& x, const Shape& y) { return x.zeta == y.zeta && x.lambda == y.lambda; });
    const Angular fn{f, kind == 4, key, shape};
    const int64_t ia = static_cast<int64_t>(a), ib = static_cast<int64_t>(b);
    angular_by_pair_[ia * n_elements + ib].push_back(fn);
    if (ia != ib) angular_by_pair_[ib * n_elements + ia].push_back(fn);
  }
  rjk_slot_.assign(radial_keys_.size(), -1);
  for (size_t k = 0; k < radial_keys_.size(); ++k)
    if (radial_keys_[k].at_rjk) rjk_slot_[k] = n_rjk_keys_++;
  groups_by_pair_.resize(angular_by_pair_.size());
  for (size_t pair = 0; pair < angular_by_pair_.size(); ++pair) {
    auto& groups = groups_by_pair_[pair];
    for (const Angular& fn : angular_by_pair_[pair]) {
      auto it = std::find_if(groups.begin(), groups.end(),
                             [&](const AngularGroup& g) { return g.key == fn.key && g.g4 == fn.g4; });
      if (it == groups.end()) it = groups.insert(groups.end(), AngularGroup{fn.key, fn.g4, {}});
      it->terms.emplace_back(fn.f, fn.shape);
    }
  }
}

void SymmetryFunctions::check(const NeighbourView& nb) const {
  const std::string what = "symmetry functions: ";
  if (nb.n_centers < 0 || nb.n_atoms < nb.n_centers)
    throw Error(what + "n_centers = " + std::to_string(nb.n_centers) + " must be in 0..n_atoms = " +
                std::to_string(nb.n_atoms) + " (centres are the first atoms)");
  if (nb.offsets[0] != 0) throw Error(what + "offsets[0] must be 0, got " + std::to_string(nb.offsets[0]));
  for (int64_t i = 0; i < nb.n_centers; ++i)
    if (nb.offsets[i + 1] < nb.offsets[i])
      throw Error(what + "offsets must be non-decreasing (pairs sorted by centre); offsets[" + std::to_string(i + 1) +
                  "] < offsets[" + std::to_string(i) + "]");
  for (int64_t k = 0; k < nb.n_atoms; ++k)
    if (nb.species[k] < 0 || nb.species[k] >= n_elements_)
      throw Error(what + "atom " + std::to_string(k) + " has element index " + std::to_string(nb.species[k]) +
                  ", the model has " + std::to_string(n_elements_) + " elements");
  for (int64_t i = 0; i < nb.n_centers; ++i) {
    for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) {
      if (nb.j[p] < 0 || nb.j[p] >= nb.n_atoms)
        throw Error(what + "pair " + std::to_string(p) + " has neighbour index " + std::to_string(nb.j[p]) +
                    " outside 0.." + std::to_string(nb.n_atoms - 1));
      const double* d = nb.D + 3 * p;
      if (!std::isfinite(d[0]) || !std::isfinite(d[1]) || !std::isfinite(d[2]))
        throw Error(what + "pair " + std::to_string(p) + " (centre " + std::to_string(i) + ") has a non-finite vector");
      if (dot3(d, d) == 0.0)
        throw Error(what + "pair " + std::to_string(p) + " (centre " + std::to_string(i) + ", neighbour " +
                    std::to_string(nb.j[p]) + ") has zero length: two atoms at the same position, or a self pair");
    }
  }
}

// ------------------------------------------------------------------ traversal


// kRecord keeps in ws what centre_vjp needs again (radial derivatives, per-triplet geometry).
template <bool kGrad, bool kRecord, class Sink>
void SymmetryFunctions::visit_center(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, Sink& sink) const {
  const size_t n_cut = cutoffs_.size(), n_keys = radial_keys_.size(), n_shapes = shapes_.size();
  const double cutoff2 = cutoff_ * cutoff_;
  ws.pair.clear();
  ws.z.clear();
  ws.d.clear();
  ws.r.clear();
  for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) {
    const double* d = nb.D + 3 * p;
    const double r2 = dot3(d, d);
    if (r2 >= cutoff2) continue;
    ws.pair.push_back(p);
    ws.z.push_back(nb.species[nb.j[p]]);
    ws.d.insert(ws.d.end(), d, d + 3);
    ws.r.push_back(std::sqrt(r2));
  }
  ws.inv_r.resize(ws.r.size());
  for (size_t a = 0; a < ws.r.size(); ++a) ws.inv_r[a] = 1.0 / ws.r[a];
  const size_t n = ws.r.size();
  ws.fc.resize(n * n_cut);
  ws.dfc.resize(n * n_cut);
  for (size_t a = 0; a < n; ++a)
    for (size_t c = 0; c < n_cut; ++c) sf_cutoff(ws.r[a], cutoffs_[c], &ws.fc[a * n_cut + c], &ws.dfc[a * n_cut + c]);

  // Radial functions: one term per pair.
  if (kRecord) ws.radial_dg.clear();
  for (size_t a = 0; a < n; ++a) {
    const auto& fns = radial_by_element_[ws.z[a]];
    if (fns.empty()) continue;
    const double r = ws.r[a];
    const double* fc = &ws.fc[a * n_cut];
    const double* dfc = &ws.dfc[a * n_cut];
    if (kGrad) sink.pair_begin(ws.pair[a], &ws.d[3 * a]);
    for (const Radial& fn : fns) {
      if (fc[fn.cut] == 0.0) {  // beyond this function's cutoff
        if (kRecord) ws.radial_dg.push_back(0.0);
        continue;
      }
      double dg;
      const double g = sf_radial(fn.eta, fn.rs, r, fc[fn.cut], dfc[fn.cut], &dg);
      sink.value(fn.f, g);
      if (kRecord) ws.radial_dg.push_back(dg / r);
      if (kGrad) sink.pair_term(fn.f, dg / r);
    }
    if (kGrad) sink.pair_end();
  }
  if (kRecord) ws.triplets.clear();
  if (n_keys == 0) return;

  // Angular functions: one term per unordered pair of neighbours {a, b}, a < b.
  ws.angular.clear();
  ws.R.resize(n * n_keys);
  ws.dR.resize(n * n_keys);
  for (size_t a = 0; a < n; ++a) {
    if (ws.r[a] >= angular_cutoff_) continue;
    ws.angular.push_back(static_cast<int>(a));
    const double r = ws.r[a];
    for (size_t k = 0; k < n_keys; ++k) {
      const RadialKey& key = radial_keys_[k];
      const double e = std::exp(-key.eta * r * r);
      const double fc = ws.fc[a * n_cut + key.cut], dfc = ws.dfc[a * n_cut + key.cut];
      ws.R[a * n_keys + k] = e * fc;
      ws.dR[a * n_keys + k] = e * (dfc - 2.0 * key.eta * r * fc);
    }
  }
  ws.S.resize(n_keys);
  ws.dS.resize(n_keys);
  ws.fc_jk.resize(n_cut);
  ws.dfc_jk.resize(n_cut);
  ws.A.resize(n_shapes);
  ws.dA.resize(n_shapes);
  const size_t n_ang = ws.angular.size();
  const size_t stride = record_stride();
  if (kRecord) ws.triplets.resize(n_ang * (n_ang - (n_ang > 0)) / 2 * stride);  // at most every pair
  double* record = ws.triplets.data();
  for (size_t ia = 0; ia < n_ang; ++ia) {
    const int a = ws.angular[ia];
    const double* dij = &ws.d[3 * a];
    const double inv_rij = ws.inv_r[a];
    const double* Rij = &ws.R[a * n_keys];
    const double* dRij = &ws.dR[a * n_keys];
    for (size_t ib = ia + 1; ib < n_ang; ++ib) {
      const int b = ws.angular[ib];
      const size_t element_pair = ws.z[a] * n_elements_ + ws.z[b];
      if (angular_by_pair_[element_pair].empty()) continue;
      const double* dik = &ws.d[3 * b];
      const double inv_rik = ws.inv_r[b];
      const double* Rik = &ws.R[b * n_keys];
      const double* dRik = &ws.dR[b * n_keys];
      const double c = dot3(dij, dik) * inv_rij * inv_rik;
      const double djk[3] = {dik[0] - dij[0], dik[1] - dij[1], dik[2] - dij[2]};
      const double rjk = std::sqrt(dot3(djk, djk));
      for (size_t cut = 0; cut < n_cut; ++cut) sf_cutoff(rjk, cutoffs_[cut], &ws.fc_jk[cut], &ws.dfc_jk[cut]);
      for (size_t k = 0; k < n_keys; ++k) {
        const RadialKey& key = radial_keys_[k];
        const double fc = ws.fc_jk[key.cut], dfc = ws.dfc_jk[key.cut];
        if (!key.at_rjk || fc == 0.0) {
          ws.S[k] = ws.dS[k] = 0.0;
          continue;
        }
        const double e = std::exp(-key.eta * rjk * rjk);
        ws.S[k] = e * fc;
        ws.dS[k] = e * (dfc - 2.0 * key.eta * rjk * fc) / rjk;
      }
      double* A = ws.A.data();
      double* dA = ws.dA.data();
      if (kRecord) {  // c, S and dS of the keys at r_jk, then A and dA of every shape
        record[0] = c;
        for (size_t k = 0; k < n_keys; ++k)
          if (rjk_slot_[k] >= 0) {
            record[1 + 2 * rjk_slot_[k]] = ws.S[k];
            record[2 + 2 * rjk_slot_[k]] = ws.dS[k];
          }
        A = record + 1 + 2 * n_rjk_keys_;
        dA = A + n_shapes;
        record += stride;
      }
      for (size_t s = 0; s < n_shapes; ++s) {
        const Shape& sh = shapes_[s];
        A[s] = sf_angular(c, sh.zeta, sh.izeta, sh.lambda, sh.prefactor, &dA[s]);
      }
      if (!Sink::kTerms) continue;  // recording only
      if (!kGrad) {  // values: the radial part once per group of functions
        for (const AngularGroup& g : groups_by_pair_[element_pair]) {
          const double rjk_part = g.g4 ? ws.S[g.key] : 1.0;
          const double radial = Rij[g.key] * Rik[g.key] * rjk_part;
          if (radial == 0.0) continue;  // beyond the cutoff
          for (const auto& [f, shape] : g.terms) sink.value(f, A[shape] * radial);
        }
        continue;
      }
      sink.triplet_begin(ws.pair[a], dij, ws.pair[b], dik);
      for (const Angular& fn : angular_by_pair_[element_pair]) {
        const double rij_part = Rij[fn.key], rik_part = Rik[fn.key];
        const double rjk_part = fn.g4 ? ws.S[fn.key] : 1.0;
        if (rij_part == 0.0 || rik_part == 0.0 || rjk_part == 0.0) continue;  // beyond the cutoff
        const double radial = rij_part * rik_part * rjk_part;
        sink.value(fn.f, A[fn.shape] * radial);
        const double f_c = dA[fn.shape] * radial;
        const double f_rij = A[fn.shape] * dRij[fn.key] * rik_part * rjk_part;
        const double f_rik = A[fn.shape] * rij_part * dRik[fn.key] * rjk_part;
        const double f_rjk_over_rjk = fn.g4 ? A[fn.shape] * rij_part * rik_part * ws.dS[fn.key] : 0.0;
        double alpha, beta, delta;
        sf_triplet_coefficients(f_c, f_rij, f_rik, f_rjk_over_rjk, c, inv_rij, inv_rik, &alpha, &beta, &delta);
        sink.triplet_term(fn.f, alpha, beta, delta);
      }
      sink.triplet_end();
    }
  }
}

template <bool kGrad, class MakeSink>
void SymmetryFunctions::for_each_center(const NeighbourView& nb, MakeSink make_sink) const {
  check(nb);
#pragma omp parallel
  {
    CentreWorkspace ws;
    auto sink = make_sink();
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < nb.n_centers; ++i) {
      sink.start(i);
      visit_center<kGrad, false>(nb, i, ws, sink);
      sink.finish();
    }
  }
}

// ------------------------------------------------------------------ sinks

namespace {

// Adds values to row i of G; ignores derivatives.
struct ValueSink {
  static constexpr bool kTerms = true;  // false: the traversal only records (RecordSink)
  double* G;
  int64_t n_sf;
  double* row = nullptr;
  void start(int64_t i) { row = G + i * n_sf; }
  void finish() {}
  void value(int64_t f, double v) { row[f] += v; }
  void pair_begin(int64_t, const double*) {}
  void pair_term(int64_t, double) {}
  void pair_end() {}
  void triplet_begin(int64_t, const double*, int64_t, const double*) {}
  void triplet_term(int64_t, double, double, double) {}
  void triplet_end() {}
};

// Nothing: the traversal records the geometry for contract_center.
struct RecordSink : ValueSink {
  static constexpr bool kTerms = false;
  void value(int64_t, double) {}
};

// Values and the full derivative array dG [n_pairs][n_sf][3].
struct DerivativeSink : ValueSink {
  double* dG;
  int64_t p = 0, q = 0;
  const double *dp = nullptr, *dq = nullptr;
  DerivativeSink(double* G_, int64_t n_sf_, double* dG_) : ValueSink{G_, n_sf_}, dG(dG_) {}
  void pair_begin(int64_t p_, const double* d) { p = p_, dp = d; }
  void pair_term(int64_t f, double coef) {
    double* out = dG + (p * n_sf + f) * 3;
    for (int x = 0; x < 3; ++x) out[x] += coef * dp[x];
  }
  void triplet_begin(int64_t p_, const double* dp_, int64_t q_, const double* dq_) { p = p_, dp = dp_, q = q_, dq = dq_; }
  void triplet_term(int64_t f, double alpha, double beta, double delta) {
    double* out_p = dG + (p * n_sf + f) * 3;
    double* out_q = dG + (q * n_sf + f) * 3;
    for (int x = 0; x < 3; ++x) {
      out_p[x] += alpha * dp[x] + beta * dq[x];
      out_q[x] += beta * dp[x] + delta * dq[x];
    }
  }
};

// out[r][i][f] = sum_p dG_if/dD_p . t[r][p], via the dot products of t with D_p and D_q.
template <int kRhs>
struct JvpSink {
  static constexpr bool kTerms = true;
  int64_t n_rhs, n_centers, n_sf, n_pairs;
  const double* t;
  double* out;
  int64_t i = 0;
  std::vector<double> oi;    // [n_sf][n_rhs] results of the current centre, rhs innermost
  std::vector<double> dots;  // [n_rhs][3]
  int64_t rhs() const { return kRhs > 0 ? kRhs : n_rhs; }
  void start(int64_t i_) {
    i = i_;
    std::fill(oi.begin(), oi.end(), 0.0);
  }
  void finish() {
    const int64_t nr = rhs();
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t f = 0; f < n_sf; ++f) out[(r * n_centers + i) * n_sf + f] = oi[f * nr + r];
  }
  void value(int64_t, double) {}
  const double* tangent(int64_t r, int64_t pair) const { return t + (r * n_pairs + pair) * 3; }
  void pair_begin(int64_t p, const double* d) {
    for (int64_t r = 0; r < rhs(); ++r) dots[3 * r] = dot3(d, tangent(r, p));
  }
  void pair_term(int64_t f, double coef) {
    const int64_t nr = rhs();
    for (int64_t r = 0; r < nr; ++r) oi[f * nr + r] += coef * dots[3 * r];
  }
  void pair_end() {}
  void triplet_begin(int64_t p, const double* dp, int64_t q, const double* dq) {
    for (int64_t r = 0; r < rhs(); ++r) {
      const double* tp = tangent(r, p);
      const double* tq = tangent(r, q);
      dots[3 * r] = dot3(dp, tp);                      // D_p . t_p
      dots[3 * r + 1] = dot3(dq, tp) + dot3(dp, tq);  // cross terms
      dots[3 * r + 2] = dot3(dq, tq);                  // D_q . t_q
    }
  }
  void triplet_term(int64_t f, double alpha, double beta, double delta) {
    const int64_t nr = rhs();
    for (int64_t r = 0; r < nr; ++r)
      oi[f * nr + r] += alpha * dots[3 * r] + beta * dots[3 * r + 1] + delta * dots[3 * r + 2];
  }
  void triplet_end() {}
};

}  // namespace

// ------------------------------------------------------------------ the fused pass of one centre

void SymmetryFunctions::centre_values(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, double* G_i) const {
  std::fill(G_i, G_i + n_sf_, 0.0);
  ValueSink sink{G_i, n_sf_};
  sink.start(0);
  visit_center<false, true>(nb, i, ws, sink);
}

void SymmetryFunctions::centre_record(const NeighbourView& nb, int64_t i, CentreWorkspace& ws) const {
  RecordSink sink{{nullptr, n_sf_}};
  visit_center<false, true>(nb, i, ws, sink);
}

void SymmetryFunctions::centre_vjp(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, int64_t n_rhs,
                                   const double* w, double* out, int64_t out_stride) const {
  // Rows in chunks of up to 4, each with its accumulators in registers.
  for (int64_t r0 = 0; r0 < n_rhs; r0 += 4) {
    const int64_t nr = std::min<int64_t>(4, n_rhs - r0);
    ws.wt.resize(n_sf_ * nr);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t f = 0; f < n_sf_; ++f) ws.wt[f * nr + r] = w[(r0 + r) * n_sf_ + f];
    double* o = out + r0 * out_stride;
    if (nr == 1) contract_center<1>(nb, i, ws, o, out_stride);
    else if (nr == 2) contract_center<2>(nb, i, ws, o, out_stride);
    else if (nr == 3) contract_center<3>(nb, i, ws, o, out_stride);
    else contract_center<4>(nb, i, ws, o, out_stride);
  }
}

// Walks the neighbours and triplets in visit_center's order, reading what it recorded. Per
// triplet and group of angular functions (same element pair, radial key and kind):
//   sum_f w_f dG_f = (sum_f w_f A_f) d(radial) + (sum_f w_f dA_f/dc) radial dc,
// so the per-function work is two multiply-adds; the pair-vector algebra runs once per triplet.
template <int kRhs>
void SymmetryFunctions::contract_center(const NeighbourView& nb, int64_t i, const CentreWorkspace& ws, double* out,
                                        int64_t out_stride) const {
  const double* wt = ws.wt.data();
  for (int r = 0; r < kRhs; ++r)
    for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) std::fill_n(out + r * out_stride + 3 * p, 3, 0.0);

  // Radial: g_p = (sum_f w_f (dG_f/dr) / r) D_p.
  const size_t n = ws.r.size();
  const double* dg = ws.radial_dg.data();
  for (size_t a = 0; a < n; ++a) {
    const auto& fns = radial_by_element_[ws.z[a]];
    if (fns.empty()) continue;
    double acc[kRhs] = {};
    for (const Radial& fn : fns) {
      const double coef = *dg++;
      const double* wf = wt + fn.f * kRhs;
      for (int r = 0; r < kRhs; ++r) acc[r] += wf[r] * coef;
    }
    const double* d = &ws.d[3 * a];
    for (int r = 0; r < kRhs; ++r) {
      double* o = out + r * out_stride + 3 * ws.pair[a];
      for (int x = 0; x < 3; ++x) o[x] += acc[r] * d[x];
    }
  }
  const size_t n_keys = radial_keys_.size(), n_shapes = shapes_.size();
  if (n_keys == 0) return;

  const size_t stride = record_stride();
  const double* record = ws.triplets.data();
  const size_t n_ang = ws.angular.size();
  for (size_t ia = 0; ia < n_ang; ++ia) {
    const int a = ws.angular[ia];
    const double* dij = &ws.d[3 * a];
    const double inv_rij = ws.inv_r[a];
    const double* Rij = &ws.R[a * n_keys];
    const double* dRij = &ws.dR[a * n_keys];
    double* op[kRhs];
    for (int r = 0; r < kRhs; ++r) op[r] = out + r * out_stride + 3 * ws.pair[a];
    for (size_t ib = ia + 1; ib < n_ang; ++ib) {
      const int b = ws.angular[ib];
      const auto& groups = groups_by_pair_[ws.z[a] * n_elements_ + ws.z[b]];
      if (groups.empty()) continue;
      const double c = record[0];
      const double* rjk_terms = record + 1;
      const double* A = record + 1 + 2 * n_rjk_keys_;
      const double* dA = A + n_shapes;
      record += stride;
      const double* dik = &ws.d[3 * b];
      const double inv_rik = ws.inv_r[b];
      const double* Rik = &ws.R[b * n_keys];
      const double* dRik = &ws.dR[b * n_keys];
      // derivative sums over the groups: d/dc, d/dr_ij, d/dr_ik, (d/dr_jk) / r_jk
      double f_c[kRhs] = {}, f_rij[kRhs] = {}, f_rik[kRhs] = {}, f_rjk[kRhs] = {};
      for (const AngularGroup& g : groups) {
        const double rij_part = Rij[g.key], rik_part = Rik[g.key];
        const double rjk_part = g.g4 ? rjk_terms[2 * rjk_slot_[g.key]] : 1.0;
        if (rij_part == 0.0 || rik_part == 0.0 || rjk_part == 0.0) continue;  // beyond the cutoff
        const double radial = rij_part * rik_part * rjk_part;
        const double c_rij = dRij[g.key] * rik_part * rjk_part;
        const double c_rik = rij_part * dRik[g.key] * rjk_part;
        const double c_rjk = g.g4 ? rij_part * rik_part * rjk_terms[2 * rjk_slot_[g.key] + 1] : 0.0;
        double P[kRhs] = {}, dP[kRhs] = {};
        for (const auto& [f, shape] : g.terms) {
          const double* wf = wt + f * kRhs;
          const double As = A[shape], dAs = dA[shape];
          for (int r = 0; r < kRhs; ++r) {
            P[r] += wf[r] * As;
            dP[r] += wf[r] * dAs;
          }
        }
        for (int r = 0; r < kRhs; ++r) {
          f_c[r] += dP[r] * radial;
          f_rij[r] += P[r] * c_rij;
          f_rik[r] += P[r] * c_rik;
          f_rjk[r] += P[r] * c_rjk;
        }
      }
      const int64_t q = ws.pair[b];
      for (int r = 0; r < kRhs; ++r) {
        double alpha, beta, delta;
        sf_triplet_coefficients(f_c[r], f_rij[r], f_rik[r], f_rjk[r], c, inv_rij, inv_rik, &alpha, &beta, &delta);
        double* oq = out + r * out_stride + 3 * q;
        for (int x = 0; x < 3; ++x) {
          op[r][x] += alpha * dij[x] + beta * dik[x];
          oq[x] += beta * dij[x] + delta * dik[x];
        }
      }
    }
  }
}

// ------------------------------------------------------------------ entry points

void SymmetryFunctions::compute(const NeighbourView& nb, double* G) const {
  std::fill(G, G + nb.n_centers * n_sf_, 0.0);
  for_each_center<false>(nb, [&] { return ValueSink{G, n_sf_}; });
}

void SymmetryFunctions::compute_with_derivatives(const NeighbourView& nb, double* G, double* dG) const {
  std::fill(G, G + nb.n_centers * n_sf_, 0.0);
  std::fill(dG, dG + nb.n_pairs() * n_sf_ * 3, 0.0);
  for_each_center<true>(nb, [&] { return DerivativeSink(G, n_sf_, dG); });
}

void SymmetryFunctions::vjp(const NeighbourView& nb, int64_t n_rhs, const double* dLdG, double* out) const {
  if (n_rhs < 1) throw Error("symmetry functions: vjp needs at least one right-hand side");
  check(nb);
  const int64_t n_pairs = nb.n_pairs();
#pragma omp parallel
  {
    CentreWorkspace ws;
    std::vector<double> w(n_rhs * n_sf_);
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < nb.n_centers; ++i) {
      for (int64_t r = 0; r < n_rhs; ++r)
        std::copy(dLdG + (r * nb.n_centers + i) * n_sf_, dLdG + (r * nb.n_centers + i + 1) * n_sf_, &w[r * n_sf_]);
      centre_record(nb, i, ws);
      centre_vjp(nb, i, ws, n_rhs, w.data(), out, 3 * n_pairs);
    }
  }
}

void SymmetryFunctions::jvp(const NeighbourView& nb, int64_t n_rhs, const double* t, double* out) const {
  if (n_rhs < 1) throw Error("symmetry functions: jvp needs at least one right-hand side");
  auto run = [&](auto rhs_tag) {
    constexpr int kRhs = decltype(rhs_tag)::value;
    for_each_center<true>(nb, [&] {
      return JvpSink<kRhs>{n_rhs, nb.n_centers, n_sf_, nb.n_pairs(), t, out, 0,
                           std::vector<double>(n_sf_ * n_rhs), std::vector<double>(3 * n_rhs)};
    });
  };
  if (n_rhs == 1) run(std::integral_constant<int, 1>());
  else if (n_rhs == 2) run(std::integral_constant<int, 2>());
  else run(std::integral_constant<int, 0>());
}

}  // namespace mlipbias
