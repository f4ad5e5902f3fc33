// Symmetry functions: table validation, the fused pass of one centre and the OpenMP loops.
//
// A centre's values pass (centre_values) puts its angular neighbours in slots sorted by element
// and runs the triplet kernels of symmetry_functions_simd.inc on vectors of 2, 4 or 8 triplets
// (SSE2, AVX2, AVX-512, chosen at run time), recording per triplet what the contractions need
// again; centre_vjp (forces, virial, vjp) and centre_jvp (force training, jvp) read that record,
// with the angular functions that share a radial part contracted as one term. The full
// derivative array (compute_with_derivatives) keeps a scalar traversal of every term
// (visit_center), the reference the tests hold the kernels to. Each centre writes only its own
// row of G and its own pairs' entries, so results do not depend on the number of threads or on
// the schedule.
#if defined(__GNUC__) && !defined(__clang__)
// GCC notes (at the templates of the header, hence before it) that the shared templates
// (sf_ipow, ...) instantiated on AVX vectors would pass them differently out of line; they are
// always inlined into the kernel of their instruction set, so no call's ABI can differ.
#ifdef __x86_64__
#include <immintrin.h>  // the explicit fused multiply-adds of the contractions
#endif
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#include "symmetry_functions.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MLIPBIAS_SF_X86_DISPATCH 1  // GCC's target pragma builds the AVX2 and AVX-512 kernels
#endif
// The contractions are compiled without fused multiply-add contraction (see the .inc).
#if defined(__clang__)
#define MLIPBIAS_SF_NO_CONTRACT
#pragma clang fp contract(off)
#else
#define MLIPBIAS_SF_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#endif

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
  for (const auto& fns : radial_by_element_)
    for (const Radial& fn : fns)
      if (std::find(radial_cuts_.begin(), radial_cuts_.end(), fn.cut) == radial_cuts_.end())
        radial_cuts_.push_back(fn.cut);
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

// ------------------------------------------------------------------ SIMD kernels

// The triplet kernels (symmetry_functions_simd.inc) for 2 (SSE2), 4 (AVX2 + FMA) and 8 (AVX-512)
// doubles. The wider builds use GCC's target pragma (functions only, no global flags), so the
// library runs on any x86-64 and the first call picks what the CPU has, by its features.
namespace {
namespace simd2 {
constexpr int W = 2;
#include "symmetry_functions_simd.inc"
}  // namespace simd2
#ifdef MLIPBIAS_SF_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace simd4 {
constexpr int W = 4;
#include "symmetry_functions_simd.inc"
}  // namespace simd4
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace simd8 {
constexpr int W = 8;
#include "symmetry_functions_simd.inc"
}  // namespace simd8
#pragma GCC pop_options
#endif

using Tables = SymmetryFunctions::KernelTables;
using Workspace = SymmetryFunctions::CentreWorkspace;

struct Kernels {
  int width;
  void (*pair_cutoffs)(const double*, const int*, size_t, const double*, int64_t, double*, double*);
  void (*radial_values)(const SymmetryFunctions::Radial*, int64_t, const double*, const double*, const double*,
                        const double*, int64_t, int64_t, double*, double*);
  void (*radial_vjp)(const double*, int64_t, const double*, int64_t, double*);
  void (*radial_jvp)(const double*, int64_t, const double*, int64_t, double*);
  void (*slot_radial)(const Tables&, Workspace&);
  void (*values)(const Tables&, Workspace&, double*, bool);
  void (*vjp[4])(const Tables&, const Workspace&, const double*, double*);
  void (*jvp[4])(const Tables&, const Workspace&, const double*, double*);
};

#define MLIPBIAS_SF_KERNELS(NS) \
  Kernels {                                                                                  \
    NS::W, NS::pair_cutoffs, NS::radial_values, NS::radial_vjp, NS::radial_jvp, NS::slot_radial, NS::values, \
        {NS::vjp<1>, NS::vjp<2>, NS::vjp<3>, NS::vjp<4>}, {NS::jvp<1>, NS::jvp<2>, NS::jvp<3>, NS::jvp<4>} \
  }

int best_width() {
#ifdef MLIPBIAS_SF_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 8;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 4;
#endif
  return 2;
}

std::atomic<int> chosen_width{0};  // 0: not chosen yet

const Kernels& kernels() {
  static const Kernels k2 = MLIPBIAS_SF_KERNELS(simd2);
#ifdef MLIPBIAS_SF_X86_DISPATCH
  static const Kernels k4 = MLIPBIAS_SF_KERNELS(simd4);
  static const Kernels k8 = MLIPBIAS_SF_KERNELS(simd8);
  const int width = SymmetryFunctions::simd_width();
  if (width == 8) return k8;
  if (width == 4) return k4;
#endif
  return k2;
}
#undef MLIPBIAS_SF_KERNELS

}  // namespace

int SymmetryFunctions::simd_width() {
  int width = chosen_width.load();
  if (width == 0) {
    width = best_width();
    chosen_width.store(width);
  }
  return width;
}

int SymmetryFunctions::set_simd_width(int width) {
  if (width != 0 && width != 2 && width != 4 && width != 8)
    throw Error("symmetry functions: the SIMD width must be 0 (the CPU's best), 2, 4 or 8, got " +
                std::to_string(width));
  const int best = best_width();
  chosen_width.store(width == 0 ? best : std::min(width, best));
  return chosen_width.load();
}

// ------------------------------------------------------------------ the fused pass of one centre

void SymmetryFunctions::prepare_centre(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, double* G_i,
                                       int width) const {
  const Kernels& k = kernels();
  const size_t n_cut = cutoffs_.size(), n_keys = radial_keys_.size();
  const double cutoff2 = cutoff_ * cutoff_, beyond = 2.0 * cutoff_;  // a length beyond every cutoff
  // the neighbours inside the cutoff, written by index into arrays sized for every pair
  const int64_t p0 = nb.offsets[i], n_pairs = nb.offsets[i + 1] - p0;
  for (auto* v : {&ws.r, &ws.inv_r}) v->resize(n_pairs);
  ws.pair.resize(n_pairs);
  ws.z.resize(n_pairs);
  ws.d.resize(3 * n_pairs);
  size_t n = 0;
  for (int64_t p = p0; p < p0 + n_pairs; ++p) {
    const double* d = nb.D + 3 * p;
    const double r2 = dot3(d, d);
    if (r2 >= cutoff2) continue;
    ws.pair[n] = p;
    ws.z[n] = nb.species[nb.j[p]];
    std::copy(d, d + 3, &ws.d[3 * n]);
    ws.r[n] = std::sqrt(r2);
    ws.inv_r[n] = 1.0 / ws.r[n];
    ++n;
  }
  for (auto* v : {&ws.r, &ws.inv_r}) v->resize(n);
  ws.pair.resize(n);
  ws.z.resize(n);
  ws.d.resize(3 * n);

  // Radial functions: the neighbours in runs by element, each padded to a multiple of the width,
  // so that one exponential serves `width` neighbours of a function; (dG/dr) / r kept per
  // neighbour for the contractions.
  ws.rseg.assign(n_elements_ + 1, 0);
  for (size_t a = 0; a < n; ++a)
    if (!radial_by_element_[ws.z[a]].empty()) ws.rseg[ws.z[a] + 1]++;
  for (int64_t e = 0; e < n_elements_; ++e)
    ws.rseg[e + 1] = ws.rseg[e] + (ws.rseg[e + 1] + width - 1) / width * width;
  const int64_t n_run = ws.rseg[n_elements_];
  ws.rr.assign(n_run, beyond);
  ws.rinv.assign(n_run, 0.0);
  ws.ridx.assign(n_run, -1);
  ws.rnext.assign(ws.rseg.begin(), ws.rseg.end() - 1);
  for (size_t a = 0; a < n; ++a) {
    if (radial_by_element_[ws.z[a]].empty()) continue;
    const int64_t s = ws.rnext[ws.z[a]]++;
    ws.rr[s] = ws.r[a];
    ws.rinv[s] = ws.inv_r[a];
    ws.ridx[s] = static_cast<int>(a);
  }
  ws.pfc.resize(n_cut * n_run);
  ws.pdfc.resize(n_cut * n_run);
  k.pair_cutoffs(cutoffs_.data(), radial_cuts_.data(), radial_cuts_.size(), ws.rr.data(), n_run, ws.pfc.data(),
                 ws.pdfc.data());
  int64_t n_dg = 0;
  for (int64_t e = 0; e < n_elements_; ++e)
    n_dg += static_cast<int64_t>(radial_by_element_[e].size()) * (ws.rseg[e + 1] - ws.rseg[e]);
  ws.radial_dg.resize(n_dg);  // per element run: [function of the element][neighbour of the run]
  for (int64_t e = 0, off = 0; e < n_elements_; ++e) {
    const auto& fns = radial_by_element_[e];
    const int64_t begin = ws.rseg[e], len = ws.rseg[e + 1] - begin, n_fn = static_cast<int64_t>(fns.size());
    if (len == 0) continue;
    ws.g2.resize(n_fn);
    k.radial_values(fns.data(), n_fn, &ws.rr[begin], &ws.rinv[begin], &ws.pfc[begin], &ws.pdfc[begin], n_run,
                    len, ws.g2.data(), &ws.radial_dg[off]);
    if (G_i)
      for (int64_t m = 0; m < n_fn; ++m) G_i[fns[m].f] += ws.g2[m];
    off += n_fn * len;
  }

  // Angular neighbours in slots by element, each element's run followed by width - 1 zeros.
  ws.width = width;
  ws.n_slots = 0;
  if (n_keys == 0) return;
  ws.angular.clear();
  for (size_t a = 0; a < n; ++a)
    if (ws.r[a] < angular_cutoff_) ws.angular.push_back(static_cast<int>(a));
  ws.seg.assign(2 * n_elements_, 0);
  for (int a : ws.angular) ws.seg[2 * ws.z[a] + 1]++;
  int64_t next = 0;
  for (int64_t e = 0; e < n_elements_; ++e) {
    const int64_t count = ws.seg[2 * e + 1];
    ws.seg[2 * e] = next;
    ws.seg[2 * e + 1] = next;  // advanced to the end of the run below
    next += count + width - 1;
  }
  const int64_t ns = next;
  ws.n_slots = ns;
  for (auto* v : {&ws.sx, &ws.sy, &ws.sz, &ws.sinv}) v->assign(ns, 0.0);
  ws.sr.assign(ns + width, beyond);
  ws.sR.assign(n_keys * ns + width, 0.0);  // slot_radial's last vector may spill past the end
  ws.sdR.assign(n_keys * ns + width, 0.0);
  ws.sidx.assign(ns, -1);
  ws.selem.assign(ns, 0);
  for (int a : ws.angular) {
    const int64_t s = ws.seg[2 * ws.z[a] + 1]++;
    ws.sidx[s] = a;
    ws.selem[s] = static_cast<int>(ws.z[a]);
    ws.sx[s] = ws.d[3 * a];
    ws.sy[s] = ws.d[3 * a + 1];
    ws.sz[s] = ws.d[3 * a + 2];
    ws.sinv[s] = ws.inv_r[a];
    ws.sr[s] = ws.r[a];
  }
  k.slot_radial(kernel_tables(), ws);
}

void SymmetryFunctions::centre_values(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, double* G_i,
                                      bool record) const {
  const Kernels& k = kernels();
  if (G_i) std::fill(G_i, G_i + n_sf_, 0.0);
  prepare_centre(nb, i, ws, G_i, k.width);
  ws.recorded = record;
  if (ws.n_slots == 0) {
    ws.triplets.clear();
    return;
  }
  if (!G_i) return k.values(kernel_tables(), ws, nullptr, record);
  ws.acc.assign(n_sf_ * k.width, 0.0);
  k.values(kernel_tables(), ws, ws.acc.data(), record);
  for (int64_t f = 0; f < n_sf_; ++f)
    for (int l = 0; l < k.width; ++l) G_i[f] += ws.acc[f * k.width + l];
}

void SymmetryFunctions::centre_vjp(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, int64_t n_rhs,
                                   const double* w, double* out, int64_t out_stride) const {
  const Kernels& k = kernels();
  if (ws.width != k.width)  // the radial runs and the slots are laid out for ws.width
    throw Error("symmetry functions: the SIMD width changed between centre_values and centre_vjp");
  if (!ws.recorded) throw Error("symmetry functions: centre_vjp after centre_values without its record");
  const int64_t ns = ws.n_slots;
  for (int64_t r0 = 0; r0 < n_rhs; r0 += 4) {  // rows in chunks of up to 4, accumulators in registers
    const int64_t nr = std::min<int64_t>(4, n_rhs - r0);
    double* o = out + r0 * out_stride;
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) std::fill_n(o + r * out_stride + 3 * p, 3, 0.0);
    // Radial: g_p = (sum_f w_f (dG_f/dr) / r) D_p.
    for (int64_t e = 0, off = 0; e < n_elements_; ++e) {
      const auto& fns = radial_by_element_[e];
      const int64_t begin = ws.rseg[e], len = ws.rseg[e + 1] - begin, n_fn = static_cast<int64_t>(fns.size());
      if (len == 0) continue;
      ws.rrow.resize(n_fn + len);
      double *wm = ws.rrow.data(), *acc = wm + n_fn;
      for (int64_t r = 0; r < nr; ++r) {
        const double* wr = w + (r0 + r) * n_sf_;
        for (int64_t m = 0; m < n_fn; ++m) wm[m] = wr[fns[m].f];
        k.radial_vjp(wm, n_fn, &ws.radial_dg[off], len, acc);
        for (int64_t s = 0; s < len; ++s) {
          const int a = ws.ridx[begin + s];
          if (a < 0) continue;
          double* op = o + r * out_stride + 3 * ws.pair[a];
          for (int x = 0; x < 3; ++x) op[x] += acc[s] * ws.d[3 * a + x];
        }
      }
      off += n_fn * len;
    }
    if (ns == 0) continue;
    ws.wt.resize(n_sf_ * nr);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t f = 0; f < n_sf_; ++f) ws.wt[f * nr + r] = w[(r0 + r) * n_sf_ + f];
    ws.slot_rows.assign(nr * 3 * ns, 0.0);
    k.vjp[nr - 1](kernel_tables(), ws, ws.wt.data(), ws.slot_rows.data());
    for (int64_t s = 0; s < ns; ++s) {
      if (ws.sidx[s] < 0) continue;
      const int64_t p = ws.pair[ws.sidx[s]];
      for (int64_t r = 0; r < nr; ++r)
        for (int x = 0; x < 3; ++x) o[r * out_stride + 3 * p + x] += ws.slot_rows[(r * 3 + x) * ns + s];
    }
  }
}

void SymmetryFunctions::centre_jvp(const NeighbourView&, int64_t, CentreWorkspace& ws, int64_t n_rhs,
                                   const double* t, int64_t t_stride, double* out, int64_t out_stride) const {
  const Kernels& k = kernels();
  if (ws.width != k.width)  // the radial runs and the slots are laid out for ws.width
    throw Error("symmetry functions: the SIMD width changed between centre_values and centre_jvp");
  if (!ws.recorded) throw Error("symmetry functions: centre_jvp after centre_values without its record");
  const int64_t ns = ws.n_slots;
  const int W = k.width;
  for (int64_t r0 = 0; r0 < n_rhs; r0 += 4) {
    const int64_t nr = std::min<int64_t>(4, n_rhs - r0);
    double* o = out + r0 * out_stride;
    const double* tr0 = t + r0 * t_stride;
    for (int64_t r = 0; r < nr; ++r) std::fill_n(o + r * out_stride, n_sf_, 0.0);
    // Radial: dG_f . t_p = ((dG_f/dr) / r) D_p . t_p.
    for (int64_t e = 0, off = 0; e < n_elements_; ++e) {
      const auto& fns = radial_by_element_[e];
      const int64_t begin = ws.rseg[e], len = ws.rseg[e + 1] - begin, n_fn = static_cast<int64_t>(fns.size());
      if (len == 0) continue;
      ws.rrow.resize(n_fn + len);
      double *sum = ws.rrow.data(), *u = sum + n_fn;
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t s = 0; s < len; ++s) {
          const int a = ws.ridx[begin + s];
          u[s] = a < 0 ? 0.0 : dot3(&ws.d[3 * a], tr0 + r * t_stride + 3 * ws.pair[a]);
        }
        k.radial_jvp(u, n_fn, &ws.radial_dg[off], len, sum);
        for (int64_t m = 0; m < n_fn; ++m) o[r * out_stride + fns[m].f] += sum[m];
      }
      off += n_fn * len;
    }
    if (ns == 0) continue;
    ws.slot_rows.assign(nr * 3 * ns, 0.0);
    for (int64_t s = 0; s < ns; ++s) {
      if (ws.sidx[s] < 0) continue;
      const int64_t p = ws.pair[ws.sidx[s]];
      for (int64_t r = 0; r < nr; ++r)
        for (int x = 0; x < 3; ++x) ws.slot_rows[(r * 3 + x) * ns + s] = tr0[r * t_stride + 3 * p + x];
    }
    ws.acc.assign(n_sf_ * nr * W, 0.0);
    k.jvp[nr - 1](kernel_tables(), ws, ws.slot_rows.data(), ws.acc.data());
    for (int64_t f = 0; f < n_sf_; ++f)
      for (int64_t r = 0; r < nr; ++r)
        for (int l = 0; l < W; ++l) o[r * out_stride + f] += ws.acc[(f * nr + r) * W + l];
  }
}

// ------------------------------------------------------------------ full derivatives

// The reference traversal of compute_with_derivatives: every term of every function per pair
// and triplet, scalar, in the order of the neighbour list.
template <class Sink>
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
  for (size_t a = 0; a < n; ++a) {
    const auto& fns = radial_by_element_[ws.z[a]];
    if (fns.empty()) continue;
    const double r = ws.r[a];
    const double* fc = &ws.fc[a * n_cut];
    const double* dfc = &ws.dfc[a * n_cut];
    sink.pair_begin(ws.pair[a], &ws.d[3 * a]);
    for (const Radial& fn : fns) {
      if (fc[fn.cut] == 0.0) continue;  // beyond this function's cutoff
      double dg;
      const double g = sf_radial(fn.eta, fn.rs, r, fc[fn.cut], dfc[fn.cut], &dg);
      sink.value(fn.f, g);
      sink.pair_term(fn.f, dg / r);
    }
  }
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
      for (size_t s = 0; s < n_shapes; ++s) {
        const Shape& sh = shapes_[s];
        ws.A[s] = sf_angular(c, sh.zeta, sh.izeta, sh.lambda, sh.prefactor, &ws.dA[s]);
      }
      sink.triplet_begin(ws.pair[a], dij, ws.pair[b], dik);
      for (const Angular& fn : angular_by_pair_[element_pair]) {
        const double rij_part = Rij[fn.key], rik_part = Rik[fn.key];
        const double rjk_part = fn.g4 ? ws.S[fn.key] : 1.0;
        if (rij_part == 0.0 || rik_part == 0.0 || rjk_part == 0.0) continue;  // beyond the cutoff
        const double radial = rij_part * rik_part * rjk_part;
        const double A = ws.A[fn.shape];
        sink.value(fn.f, A * radial);
        const double f_c = ws.dA[fn.shape] * radial;
        const double f_rij = A * dRij[fn.key] * rik_part * rjk_part;
        const double f_rik = A * rij_part * dRik[fn.key] * rjk_part;
        const double f_rjk_over_rjk = fn.g4 ? A * rij_part * rik_part * ws.dS[fn.key] : 0.0;
        double alpha, beta, delta;
        sf_triplet_coefficients(f_c, f_rij, f_rik, f_rjk_over_rjk, c, inv_rij, inv_rik, &alpha, &beta, &delta);
        sink.triplet_term(fn.f, alpha, beta, delta);
      }
    }
  }
}

namespace {

// Values and the full derivative array dG [n_pairs][n_sf][3] of one centre.
struct DerivativeSink {
  double* G;  // the centre's row
  double* dG;
  int64_t n_sf;
  int64_t p = 0, q = 0;
  const double *dp = nullptr, *dq = nullptr;
  void value(int64_t f, double v) { G[f] += v; }
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

}  // namespace

// ------------------------------------------------------------------ entry points

void SymmetryFunctions::compute(const NeighbourView& nb, double* G) const {
  check(nb);
#pragma omp parallel
  {
    CentreWorkspace ws;
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < nb.n_centers; ++i) centre_values(nb, i, ws, G + i * n_sf_, false);
  }
}

void SymmetryFunctions::compute_with_derivatives(const NeighbourView& nb, double* G, double* dG) const {
  check(nb);
  std::fill(G, G + nb.n_centers * n_sf_, 0.0);
  std::fill(dG, dG + nb.n_pairs() * n_sf_ * 3, 0.0);
#pragma omp parallel
  {
    CentreWorkspace ws;
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < nb.n_centers; ++i) {
      DerivativeSink sink{G + i * n_sf_, dG, n_sf_};
      visit_center(nb, i, ws, sink);
    }
  }
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
      centre_values(nb, i, ws, nullptr);
      centre_vjp(nb, i, ws, n_rhs, w.data(), out, 3 * n_pairs);
    }
  }
}

void SymmetryFunctions::jvp(const NeighbourView& nb, int64_t n_rhs, const double* t, double* out) const {
  if (n_rhs < 1) throw Error("symmetry functions: jvp needs at least one right-hand side");
  check(nb);
  const int64_t n_pairs = nb.n_pairs();
#pragma omp parallel
  {
    CentreWorkspace ws;
#pragma omp for schedule(dynamic, 16)
    for (int64_t i = 0; i < nb.n_centers; ++i) {
      centre_values(nb, i, ws, nullptr);
      centre_jvp(nb, i, ws, n_rhs, t, 3 * n_pairs, out + i * n_sf_, nb.n_centers * n_sf_);
    }
  }
}

}  // namespace mlipbias
