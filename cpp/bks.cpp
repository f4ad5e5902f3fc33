#include "bks.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mlipbias {
namespace bks {

namespace {

std::string type_name(const Parameters& p, int a) {
  return a < static_cast<int>(p.names.size()) ? p.names[a] : "type " + std::to_string(a);
}

std::string pair_name(const Parameters& p, int a, int b) { return type_name(p, a) + "-" + type_name(p, b); }

[[noreturn]] void bad(const std::string& what, double value, const std::string& requirement) {
  std::ostringstream msg;
  msg.precision(12);
  msg << "BKS: " << what << " = " << value << " " << requirement;
  throw Error(msg.str());
}

}  // namespace

Table make_table(const Parameters& p) {
  const int n = static_cast<int>(p.charges.size());
  if (n < 1 || n > kMaxTypes) {
    throw Error("BKS: " + std::to_string(n) + " atom types given, between 1 and " + std::to_string(kMaxTypes) +
                " are supported");
  }
  const size_t n2 = static_cast<size_t>(n) * n;
  const std::pair<const char*, const std::vector<double>*> pair_arrays[] = {
      {"A", &p.A}, {"rho", &p.rho}, {"C", &p.C}, {"D", &p.D}};
  for (const auto& [name, values] : pair_arrays) {
    if (values->size() != n2) {
      throw Error(std::string("BKS: pair parameter ") + name + " has " + std::to_string(values->size()) +
                  " values, expected n_types^2 = " + std::to_string(n2));
    }
  }
  if (!(std::isfinite(p.cutoff_short) && p.cutoff_short > 0)) bad("cutoff_short", p.cutoff_short, "A must be > 0");
  if (!(std::isfinite(p.cutoff_coulomb) && p.cutoff_coulomb > 0)) {
    bad("cutoff_coulomb", p.cutoff_coulomb, "A must be > 0");
  }
  if (!(std::isfinite(p.alpha) && p.alpha >= 0)) bad("alpha", p.alpha, "1/A must be >= 0");
  if (!std::isfinite(p.coulomb_constant)) bad("coulomb_constant", p.coulomb_constant, "must be finite");

  Table t{};
  t.n_types = n;
  t.erfc_mode = static_cast<int>(p.erfc);
  t.cut_short_sq = p.cutoff_short * p.cutoff_short;
  t.cut_coul_sq = p.cutoff_coulomb * p.cutoff_coulomb;
  t.alpha = p.alpha;
  // The shifts use the exact erfc in both modes, as LAMMPS coul/dsf init_style() does.
  const double rc = p.cutoff_coulomb;
  t.f_shift = -(std::erfc(p.alpha * rc) / (rc * rc) + 2.0 / kSqrtPi * p.alpha * std::exp(-p.alpha * p.alpha * rc * rc) / rc);
  t.e_shift = std::erfc(p.alpha * rc) / rc - t.f_shift * rc;

  for (int a = 0; a < n; ++a) {
    const double q = p.charges[a];
    if (!std::isfinite(q)) bad("charge of " + type_name(p, a), q, "e must be finite");
    t.self_energy[a] = -(t.e_shift / 2.0 + p.alpha / kSqrtPi) * p.coulomb_constant * q * q;
    for (int b = 0; b < n; ++b) {
      const size_t ab = static_cast<size_t>(a) * n + b, ba = static_cast<size_t>(b) * n + a;
      const std::string pn = pair_name(p, a, b);
      for (const auto& [name, values] : pair_arrays) {
        const double v = (*values)[ab];
        if (!std::isfinite(v)) bad(std::string(name) + " of " + pn, v, "must be finite");
        if (v != (*values)[ba]) {
          bad(std::string(name) + " of " + pn, v, "differs from " + std::string(name) + " of " + pair_name(p, b, a) +
                                                      "; pair parameters must be symmetric");
        }
      }
      const double A = p.A[ab], rho = p.rho[ab], C = p.C[ab], D = p.D[ab];
      if (A != 0.0 && !(rho > 0.0)) bad("rho of " + pn, rho, "A must be > 0 where A != 0");
      if (D < 0.0) bad("D of " + pn, D, "eV A^24 must be >= 0 (it is the short-range wall)");
      const int k = a * kMaxTypes + b;
      t.qqk[k] = p.coulomb_constant * q * p.charges[b];
      t.A[k] = A;
      t.inv_rho[k] = A != 0.0 ? 1.0 / rho : 0.0;
      t.C[k] = C;
      t.D[k] = D;
      t.offset[k] = p.shift_short ? short_range_raw(A, t.inv_rho[k], C, D, p.cutoff_short) : 0.0;
    }
  }
  return t;
}

Totals compute(const Table& t, int64_t n_atoms, const int64_t* types, int64_t n_pairs, const int64_t* i,
               const int64_t* j, const double* D, double* energies, double* forces, int num_threads) {
  if (n_atoms < 0 || n_pairs < 0) throw Error("BKS: negative number of atoms or pairs");
  for (int64_t a = 0; a < n_atoms; ++a) {
    if (types[a] < 0 || types[a] >= t.n_types) {
      throw Error("BKS: atom " + std::to_string(a) + " has type index " + std::to_string(types[a]) +
                  ", expected 0.." + std::to_string(t.n_types - 1));
    }
  }
  // Small lists stay on one thread: below ~32768 pairs (~1 ms) a parallel region costs more than it saves.
  int n_threads = 1;
#ifdef _OPENMP
  n_threads = num_threads > 0 ? num_threads
                              : std::min<int>(omp_get_max_threads(), static_cast<int>(n_pairs / 32768 + 1));
#else
  (void)num_threads;
#endif

  // Index check first: the parallel loop below must not throw.
  int64_t bad_pair = -1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(n_threads) reduction(max : bad_pair)
#endif
  for (int64_t p = 0; p < n_pairs; ++p) {
    if (i[p] < 0 || i[p] >= n_atoms || j[p] < 0 || j[p] >= n_atoms) bad_pair = std::max(bad_pair, p);
  }
  if (bad_pair >= 0) {
    throw Error("BKS: pair " + std::to_string(bad_pair) + " = (" + std::to_string(i[bad_pair]) + ", " +
                std::to_string(j[bad_pair]) + ") has an atom index outside 0.." + std::to_string(n_atoms - 1));
  }

  const double max_cut_sq = std::max(t.cut_short_sq, t.cut_coul_sq);
  // Thread 0 accumulates into the outputs, the others into private copies summed at the end.
  const size_t n = static_cast<size_t>(n_atoms);
  std::vector<double> scratch_e(energies ? (n_threads - 1) * n : 0);
  std::vector<double> scratch_f(forces ? (n_threads - 1) * 3 * n : 0);
  struct Partial {
    double energy = 0.0;
    double w[6] = {0};  // xx yy zz xy xz yz
    int64_t closest = -1;
    double closest_rsq = std::numeric_limits<double>::infinity();
  };
  std::vector<Partial> partials(n_threads);

#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    double* e_out = energies ? (tid == 0 ? energies : scratch_e.data() + (tid - 1) * n) : nullptr;
    double* f_out = forces ? (tid == 0 ? forces : scratch_f.data() + (tid - 1) * 3 * n) : nullptr;
    if (e_out) std::fill(e_out, e_out + n, 0.0);
    if (f_out) std::fill(f_out, f_out + 3 * n, 0.0);
    Partial part;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t p = 0; p < n_pairs; ++p) {
      const double* d = D + 3 * p;
      const double rsq = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
      if (rsq < part.closest_rsq) {
        part.closest_rsq = rsq;
        part.closest = p;
      }
      if (!(rsq < max_cut_sq)) continue;
      const int64_t a = i[p], b = j[p];
      double fpair;
      const double e = pair_energy(t, static_cast<int>(types[a]), static_cast<int>(types[b]), rsq, &fpair);
      part.energy += e;
      if (e_out) {
        e_out[a] += 0.5 * e;
        e_out[b] += 0.5 * e;
      }
      const double fx = fpair * d[0], fy = fpair * d[1], fz = fpair * d[2];
      if (f_out) {
        f_out[3 * b] += fx;
        f_out[3 * b + 1] += fy;
        f_out[3 * b + 2] += fz;
        f_out[3 * a] -= fx;
        f_out[3 * a + 1] -= fy;
        f_out[3 * a + 2] -= fz;
      }
      part.w[0] += d[0] * fx;
      part.w[1] += d[1] * fy;
      part.w[2] += d[2] * fz;
      part.w[3] += d[0] * fy;
      part.w[4] += d[0] * fz;
      part.w[5] += d[1] * fz;
    }
    partials[tid] = part;
  }

  // Sum the private copies (fixed order, so results do not depend on scheduling).
  if (n_threads > 1) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(n_threads) schedule(static)
#endif
    for (int64_t a = 0; a < n_atoms; ++a) {
      for (int k = 0; k < n_threads - 1; ++k) {
        if (energies) energies[a] += scratch_e[k * n + a];
        if (forces) {
          for (int c = 0; c < 3; ++c) forces[3 * a + c] += scratch_f[(k * n + a) * 3 + c];
        }
      }
    }
  }

  Totals totals;
  double w[6] = {0};
  double closest_rsq = std::numeric_limits<double>::infinity();
  for (const Partial& part : partials) {
    totals.energy += part.energy;
    for (int c = 0; c < 6; ++c) w[c] += part.w[c];
    if (part.closest >= 0 && part.closest_rsq < closest_rsq) {
      closest_rsq = part.closest_rsq;
      totals.closest_pair = part.closest;
      totals.closest_distance = std::sqrt(closest_rsq);
    }
  }
  const double virial[9] = {w[0], w[3], w[4], w[3], w[1], w[5], w[4], w[5], w[2]};
  std::copy(virial, virial + 9, totals.virial);

  double self = 0.0;
  for (int64_t a = 0; a < n_atoms; ++a) {
    const double e = t.self_energy[types[a]];
    self += e;
    if (energies) energies[a] += e;
  }
  totals.energy += self;
  return totals;
}

}  // namespace bks
}  // namespace mlipbias
