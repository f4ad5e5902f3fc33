// Symmetry functions of one centre on host and device: the values G_i and the reverse pass
// (sum_f w_f dG_if/dD_p for every pair p of the centre), for the staged BP-NN evaluation
// (bpnn_stages.hpp) that cuda/bpnn.cu runs and the CPU tests hold to the C++ evaluator.
//
// The definitions are those of symmetry_functions.hpp (G2, G4, G5, the cosine cutoff per
// function, {Z_j, Z_k} = {a, b} for the angular ones, each unordered pair of neighbour entries
// once) and the per-pair and per-triplet math is its MLIPBIAS_HD functions (sf_cutoff,
// sf_radial, sf_angular, sf_triplet_coefficients). The traversal differs: no per-centre lists
// (a GPU thread has no heap), every function evaluated on its own per triplet, and the reverse
// pass walks the triplets again instead of reading a record. The last evaluated (eta, rc) is
// kept, so functions of one radial part in a row (zeta, lambda variants) share its exponentials,
// and functions of one rc their cutoff functions.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.hpp"
#include "symmetry_functions.hpp"  // sf_cutoff, sf_radial, sf_angular, sf_triplet_coefficients

namespace mlipbias {

// One packed function: kind, eta, rs, zeta, lambda, rc, 2^(1 - zeta), zeta as an integer or -1.
constexpr int kSfPackedColumns = 8;

// A symmetry-function table packed into a double array `params` and an index array `index`
// (pack_bpnn); the int64 members are offsets into them.
struct SfTable {
  int n_sf, n_elements;
  double cutoff;          // largest rc
  double angular_cutoff;  // largest rc of G4 and G5 (0 without)
  int64_t rows;           // params: [n_sf][kSfPackedColumns]
  int64_t radial_start;   // index: [n_el + 1] into radial_list, by neighbour element
  int64_t radial_list;    // index: G2 columns f
  int64_t angular_start;  // index: [n_el n_el + 1] into angular_list, by element pair (symmetric)
  int64_t angular_list;   // index: G4 and G5 columns f
};

namespace sf_detail {

// exp(-eta r^2) fc(r) and its d/dr at both legs and at r_jk, for the last (eta, rc) asked; the
// cutoff functions are kept while rc stays the same.
struct TripletRadial {
  double eta = -1.0, rc = -1.0;
  double fc[3] = {0.0, 0.0, 0.0}, dfc[3] = {0.0, 0.0, 0.0};  // at r_ij, r_ik, r_jk
  double Rij = 0.0, dRij = 0.0, Rik = 0.0, dRik = 0.0, S = 0.0, dS = 0.0;  // dS: (dS/dr_jk) / r_jk

  MLIPBIAS_HD void update(double eta_, double rc_, double rij, double rik, double rjk) {
    if (eta_ == eta && rc_ == rc) return;
    if (rc_ != rc) {
      sf_cutoff(rij, rc_, &fc[0], &dfc[0]);
      sf_cutoff(rik, rc_, &fc[1], &dfc[1]);
      sf_cutoff(rjk, rc_, &fc[2], &dfc[2]);
    }
    eta = eta_;
    rc = rc_;
    double e = std::exp(-eta * rij * rij);
    Rij = e * fc[0];
    dRij = e * (dfc[0] - 2.0 * eta * rij * fc[0]);
    e = std::exp(-eta * rik * rik);
    Rik = e * fc[1];
    dRik = e * (dfc[1] - 2.0 * eta * rik * fc[1]);
    if (fc[2] == 0.0) {
      S = dS = 0.0;
      return;
    }
    e = std::exp(-eta * rjk * rjk);
    S = e * fc[2];
    dS = e * (dfc[2] - 2.0 * eta * rjk * fc[2]) / rjk;
  }
};

MLIPBIAS_HD inline double sf_packed_angular(const double* row, double c, double* dA) {
  return sf_angular(c, row[3], static_cast<int>(row[7]), row[4], row[6], dA);
}

}  // namespace sf_detail

// Walks the centre's pairs [begin, end): radial(p, d, r, zj) for pairs inside the cutoff, then
// triplet(p, q, ...) for every unordered pair of them inside the angular cutoff with angular
// functions, in the order of the C++ evaluator (so that sums over terms run in its order).
template <class Radial, class Triplet>
MLIPBIAS_HD void sf_visit_centre(const SfTable& t, const int64_t* index, const int64_t* species, const int64_t* j,
                                 const double* D, int64_t begin, int64_t end, Radial radial, Triplet triplet) {
  const double cut2 = t.cutoff * t.cutoff, ang2 = t.angular_cutoff * t.angular_cutoff;
  const int64_t* radial_start = index + t.radial_start;
  for (int64_t p = begin; p < end; ++p) {
    const double* d = D + 3 * p;
    const double r2 = dot3(d, d);
    if (r2 >= cut2) continue;
    const int64_t z = species[j[p]];
    if (radial_start[z + 1] > radial_start[z]) radial(p, d, std::sqrt(r2), z);
  }
  if (t.angular_cutoff <= 0.0) return;
  const int64_t* angular_start = index + t.angular_start;
  for (int64_t p = begin; p < end; ++p) {
    const double* dij = D + 3 * p;
    const double rij2 = dot3(dij, dij);
    if (rij2 >= cut2 || rij2 >= ang2) continue;
    const double rij = std::sqrt(rij2), inv_rij = 1.0 / rij;
    const int64_t zj = species[j[p]];
    for (int64_t q = p + 1; q < end; ++q) {
      const double* dik = D + 3 * q;
      const double rik2 = dot3(dik, dik);
      if (rik2 >= cut2 || rik2 >= ang2) continue;
      const int64_t pair = zj * t.n_elements + species[j[q]];
      const int64_t first = angular_start[pair], last = angular_start[pair + 1];
      if (first == last) continue;
      const double rik = std::sqrt(rik2), inv_rik = 1.0 / rik;
      const double c = dot3(dij, dik) * inv_rij * inv_rik;
      const double djk[3] = {dik[0] - dij[0], dik[1] - dij[1], dik[2] - dij[2]};
      const double rjk = std::sqrt(dot3(djk, djk));
      triplet(p, q, dij, dik, rij, rik, rjk, inv_rij, inv_rik, c, first, last);
    }
  }
}

// G[f] += every function's value of the centre (G: n_sf entries, zeroed by the caller).
MLIPBIAS_HD inline void sf_centre_values(const SfTable& t, const double* params, const int64_t* index,
                                         const int64_t* species, const int64_t* j, const double* D, int64_t begin,
                                         int64_t end, double* G) {
  const double* rows = params + t.rows;
  const int64_t* radial_start = index + t.radial_start;
  const int64_t* radial_list = index + t.radial_list;
  const int64_t* angular_list = index + t.angular_list;
  sf_visit_centre(
      t, index, species, j, D, begin, end,
      [&](int64_t, const double*, double r, int64_t z) {
        for (int64_t a = radial_start[z]; a < radial_start[z + 1]; ++a) {
          const int64_t f = radial_list[a];
          const double* row = rows + kSfPackedColumns * f;
          double fc, dfc, dg;
          sf_cutoff(r, row[5], &fc, &dfc);
          if (fc == 0.0) continue;
          G[f] += sf_radial(row[1], row[2], r, fc, dfc, &dg);
        }
      },
      [&](int64_t, int64_t, const double*, const double*, double rij, double rik, double rjk, double, double,
          double c, int64_t first, int64_t last) {
        sf_detail::TripletRadial R;
        for (int64_t a = first; a < last; ++a) {
          const int64_t f = angular_list[a];
          const double* row = rows + kSfPackedColumns * f;
          const bool g4 = row[0] == 4.0;
          R.update(row[1], row[5], rij, rik, rjk);
          const double rjk_part = g4 ? R.S : 1.0;
          const double radial = R.Rij * R.Rik * rjk_part;
          if (radial == 0.0) continue;  // beyond the cutoff
          double dA;
          G[f] += sf_detail::sf_packed_angular(row, c, &dA) * radial;
        }
      });
}

// The reverse pass: out[3 p + x] = sum_f w[f] dG_if/dD_p,x for every pair p in [begin, end)
// (overwritten; 0 beyond the cutoff). Per triplet the four partial derivatives are summed over
// the functions first, then turned into pair-vector gradients once (sf_triplet_coefficients).
MLIPBIAS_HD inline void sf_centre_vjp(const SfTable& t, const double* params, const int64_t* index,
                                      const int64_t* species, const int64_t* j, const double* D, int64_t begin,
                                      int64_t end, const double* w, double* out) {
  const double* rows = params + t.rows;
  const int64_t* radial_start = index + t.radial_start;
  const int64_t* radial_list = index + t.radial_list;
  const int64_t* angular_list = index + t.angular_list;
  for (int64_t p = begin; p < end; ++p)
    for (int x = 0; x < 3; ++x) out[3 * p + x] = 0.0;
  sf_visit_centre(
      t, index, species, j, D, begin, end,
      [&](int64_t p, const double* d, double r, int64_t z) {
        double acc = 0.0;  // sum_f w_f (dG_f/dr) / r
        for (int64_t a = radial_start[z]; a < radial_start[z + 1]; ++a) {
          const int64_t f = radial_list[a];
          const double* row = rows + kSfPackedColumns * f;
          double fc, dfc, dg;
          sf_cutoff(r, row[5], &fc, &dfc);
          if (fc == 0.0) continue;
          sf_radial(row[1], row[2], r, fc, dfc, &dg);
          acc += w[f] * (dg / r);
        }
        for (int x = 0; x < 3; ++x) out[3 * p + x] += acc * d[x];
      },
      [&](int64_t p, int64_t q, const double* dij, const double* dik, double rij, double rik, double rjk,
          double inv_rij, double inv_rik, double c, int64_t first, int64_t last) {
        sf_detail::TripletRadial R;
        double f_c = 0.0, f_rij = 0.0, f_rik = 0.0, f_rjk = 0.0;  // d/dc, d/dr_ij, d/dr_ik, (d/dr_jk) / r_jk
        for (int64_t a = first; a < last; ++a) {
          const int64_t f = angular_list[a];
          const double* row = rows + kSfPackedColumns * f;
          const bool g4 = row[0] == 4.0;
          R.update(row[1], row[5], rij, rik, rjk);
          const double rjk_part = g4 ? R.S : 1.0;
          if (R.Rij == 0.0 || R.Rik == 0.0 || rjk_part == 0.0) continue;  // beyond the cutoff
          double dA;
          const double A = w[f] * sf_detail::sf_packed_angular(row, c, &dA);
          f_c += w[f] * dA * (R.Rij * R.Rik * rjk_part);
          f_rij += A * R.dRij * R.Rik * rjk_part;
          f_rik += A * R.Rij * R.dRik * rjk_part;
          if (g4) f_rjk += A * R.Rij * R.Rik * R.dS;
        }
        double alpha, beta, delta;
        sf_triplet_coefficients(f_c, f_rij, f_rik, f_rjk, c, inv_rij, inv_rik, &alpha, &beta, &delta);
        for (int x = 0; x < 3; ++x) {
          out[3 * p + x] += alpha * dij[x] + beta * dik[x];
          out[3 * q + x] += beta * dij[x] + delta * dik[x];
        }
      });
}

}  // namespace mlipbias
