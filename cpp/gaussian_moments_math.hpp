// Gaussian moments of GM-NN (Zaverkin & Kastner, JCTC 2020 and 2021; seed 002 Eqs. 11-13): values and
// their vector-Jacobian product, linear in the number of neighbours (moments are sums over pairs,
// the invariants are contractions per atom; no triplets).
//
// Definitions (docs/model_file.md, "GM-NN"), for a pair with D = x_j - x_i, r = |D|, u = D / r:
//   phi_k(r) = (2 b / pi)^(1/4) exp(-b (r - mu_k)^2),  b = K^2 / rc^2,  mu_k = r_min + k (rc - r_min) / K
//   R_s(r)   = fc(r) / sqrt(K) sum_k beta[Z_i][Z_j][s][k] phi_k(r)
//   Psi0_s = sum_j R_s,  Psi1_s,a = sum_j R_s u_a,  Psi2_s,ab = ... u_a u_b,  Psi3_s,abc = ... u_a u_b u_c
// and eight groups of full contractions (the published generating graphs), the first
// n_contractions of them concatenated:
//   0 Psi0_s;  1 Psi1_r.Psi1_s;  2 Psi2_r:Psi2_s;  3 Psi3_r.Psi3_s        (r <= s)
//   4 Psi2_r,ab Psi2_s,ac Psi2_t,bc                                        (r <= s <= t)
//   5 Psi1_r,a Psi1_s,b Psi2_t,ab;  6 Psi3_r,abc Psi3_s,abd Psi2_t,cd      (r <= s, then t)
//   7 Psi3_r,abc Psi2_s,ab Psi1_t,c                                        (all r, s, t)
// Every ensemble member has its own beta, so the features of all members are computed together:
// G has n_members blocks of n_features per centre.
//
// This header holds the per-pair and per-atom math, MLIPBIAS_HD: the OpenMP loops of
// gaussian_moments.cpp and the kernels of cuda/gmnn.cu call the same functions.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.hpp"
#include "symmetry_functions.hpp"  // sf_cutoff, kPi

namespace mlipbias {

// Sizes of the moments of one radial function: 1 + 3 + 9 + 27 entries (full Cartesian tensors).
constexpr int kMomentSize = 40;

struct GaussianMomentSettings {
  double cutoff = 6.0;
  double r_min = 0.5;
  int n_basis = 7;
  int n_radial = 5;
  int n_contractions = 8;
};

// Features of each group for n_radial radial functions.
MLIPBIAS_HD inline int gm_group_size(int group, int n) {
  const int pairs = n * (n + 1) / 2;
  switch (group) {
    case 0: return n;
    case 1: case 2: case 3: return pairs;
    case 4: return n * (n + 1) * (n + 2) / 6;
    case 5: case 6: return pairs * n;
    default: return n * n * n;
  }
}

MLIPBIAS_HD inline int gm_n_features(const GaussianMomentSettings& s) {
  int total = 0;
  for (int g = 0; g < s.n_contractions; ++g) total += gm_group_size(g, s.n_radial);
  return total;
}

// R_s(r) and dR_s/dr for s = 0..n_radial-1 from beta of the pair's species [n_radial][n_basis].
// r must be below the cutoff.
MLIPBIAS_HD inline void gm_radial(const GaussianMomentSettings& s, const double* beta, double r, double* R,
                                  double* dR) {
  const double b = s.n_basis * s.n_basis / (s.cutoff * s.cutoff);
  const double norm = std::sqrt(std::sqrt(2.0 * b / kPi) / s.n_basis);  // (2 b / pi)^(1/4) / sqrt(K); pow is slow
  double fc, dfc;
  sf_cutoff(r, s.cutoff, &fc, &dfc);
  for (int q = 0; q < s.n_radial; ++q) R[q] = dR[q] = 0.0;
  const double step = (s.cutoff - s.r_min) / s.n_basis;
  for (int k = 0; k < s.n_basis; ++k) {
    const double x = r - (s.r_min + k * step);
    const double phi = norm * std::exp(-b * x * x);
    const double dphi = -2.0 * b * x * phi;
    const double value = phi * fc, slope = dphi * fc + phi * dfc;
    for (int q = 0; q < s.n_radial; ++q) {
      R[q] += beta[q * s.n_basis + k] * value;
      dR[q] += beta[q * s.n_basis + k] * slope;
    }
  }
}

// Adds one pair's terms to the moments P [n_radial][kMomentSize] (layout per s: Psi0, Psi1[3],
// Psi2[3][3], Psi3[3][3][3]).
MLIPBIAS_HD inline void gm_add_pair(int n_radial, const double* R, const double* u, double* P) {
  double uu[9], uuu[27];
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) {
      uu[3 * a + b] = u[a] * u[b];
      for (int c = 0; c < 3; ++c) uuu[9 * a + 3 * b + c] = u[a] * u[b] * u[c];
    }
  for (int q = 0; q < n_radial; ++q) {
    double* p = P + q * kMomentSize;
    const double w = R[q];
    p[0] += w;
    for (int a = 0; a < 3; ++a) p[1 + a] += w * u[a];
    for (int a = 0; a < 9; ++a) p[4 + a] += w * uu[a];
    for (int a = 0; a < 27; ++a) p[13 + a] += w * uuu[a];
  }
}

// The invariants G [n_features] of one atom from its moments P.
MLIPBIAS_HD inline void gm_contract(const GaussianMomentSettings& s, const double* P, double* G) {
  const int n = s.n_radial, groups = s.n_contractions;
  auto P1 = [&](int q) { return P + q * kMomentSize + 1; };
  auto P2 = [&](int q) { return P + q * kMomentSize + 4; };
  auto P3 = [&](int q) { return P + q * kMomentSize + 13; };
  int f = 0;
  for (int q = 0; q < n; ++q) G[f++] = P[q * kMomentSize];
  for (int g = 1; g <= 3 && g < groups; ++g) {
    const int len = g == 1 ? 3 : (g == 2 ? 9 : 27);
    const int off = g == 1 ? 1 : (g == 2 ? 4 : 13);
    for (int r = 0; r < n; ++r)
      for (int t = r; t < n; ++t) {
        const double* x = P + r * kMomentSize + off;
        const double* y = P + t * kMomentSize + off;
        double v = 0.0;
        for (int a = 0; a < len; ++a) v += x[a] * y[a];
        G[f++] = v;
      }
  }
  if (groups > 4)
    for (int r = 0; r < n; ++r)
      for (int q = r; q < n; ++q)
        for (int t = q; t < n; ++t) {
          const double *A = P2(r), *B = P2(q), *C = P2(t);
          double v = 0.0;
          for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b)
              for (int c = 0; c < 3; ++c) v += A[3 * a + b] * B[3 * a + c] * C[3 * b + c];
          G[f++] = v;
        }
  if (groups > 5)
    for (int r = 0; r < n; ++r)
      for (int q = r; q < n; ++q)
        for (int t = 0; t < n; ++t) {
          const double *x = P1(r), *y = P1(q), *C = P2(t);
          double v = 0.0;
          for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) v += x[a] * y[b] * C[3 * a + b];
          G[f++] = v;
        }
  if (groups > 6)
    for (int r = 0; r < n; ++r)
      for (int q = r; q < n; ++q)
        for (int t = 0; t < n; ++t) {
          const double *A = P3(r), *B = P3(q), *C = P2(t);
          double v = 0.0;
          for (int ab = 0; ab < 9; ++ab)
            for (int c = 0; c < 3; ++c)
              for (int d = 0; d < 3; ++d) v += A[3 * ab + c] * B[3 * ab + d] * C[3 * c + d];
          G[f++] = v;
        }
  if (groups > 7)
    for (int r = 0; r < n; ++r)
      for (int q = 0; q < n; ++q)
        for (int t = 0; t < n; ++t) {
          const double *A = P3(r), *B = P2(q), *x = P1(t);
          double v = 0.0;
          for (int ab = 0; ab < 9; ++ab)
            for (int c = 0; c < 3; ++c) v += A[3 * ab + c] * B[ab] * x[c];
          G[f++] = v;
        }
}

// dL/dP [n_radial][kMomentSize] (accumulated) from dL/dG [n_features] of one atom, for R rows at
// once (dG[r] -> dP[r]): the products of the moments are formed once for all rows.
template <int R>
MLIPBIAS_HD inline void gm_contract_backward_rows(const GaussianMomentSettings& s, const double* P,
                                                  const double* const* dG, double* const* dP) {
  const int n = s.n_radial, groups = s.n_contractions;
  auto P1 = [&](int q) { return P + q * kMomentSize + 1; };
  auto P2 = [&](int q) { return P + q * kMomentSize + 4; };
  auto P3 = [&](int q) { return P + q * kMomentSize + 13; };
  double w[R];
  // The weights of feature f; false when all are 0 (the rows are often sparse).
  auto weights = [&](int f) {
    bool any = false;
    for (int r = 0; r < R; ++r) {
      w[r] = dG[r][f];
      any |= w[r] != 0.0;
    }
    return any;
  };
  int f = 0;
  for (int q = 0; q < n; ++q, ++f)
    for (int r = 0; r < R; ++r) dP[r][q * kMomentSize] += dG[r][f];
  for (int g = 1; g <= 3 && g < groups; ++g) {
    const int len = g == 1 ? 3 : (g == 2 ? 9 : 27);
    const int off = g == 1 ? 1 : (g == 2 ? 4 : 13);
    for (int a = 0; a < n; ++a)
      for (int t = a; t < n; ++t) {
        if (!weights(f++)) continue;
        const double* x = P + a * kMomentSize + off;
        const double* y = P + t * kMomentSize + off;
        for (int r = 0; r < R; ++r) {
          double* dx = dP[r] + a * kMomentSize + off;
          double* dy = dP[r] + t * kMomentSize + off;
          for (int c = 0; c < len; ++c) {
            dx[c] += w[r] * y[c];
            dy[c] += w[r] * x[c];
          }
        }
      }
  }
  // Groups 4-7 are f_pqt = F(X_p, Y_q) . Z_t, linear in the last tensor Z_t: per (p, q) the
  // product M = F(X_p, Y_q) gives dZ_t += w_pqt M, and with W = sum_t w_pqt Z_t (over the t of
  // the group) dX_p and dY_q follow from W once instead of once per t.
  // The weights of the features f..f+count-1 of a (p, q); false when all are 0.
  double wt[R][64];
  auto weights_t = [&](int f0, int count) {
    bool any = false;
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < count; ++t) {
        wt[r][t] = dG[r][f0 + t];
        any |= wt[r][t] != 0.0;
      }
    return any;
  };
  // dZ_t += w_pqt M (len entries) and W = sum_t w_pqt Z_t for t = t0..n-1 of one row.
  auto through_t = [&](int r, int t0, int z_off, int len, const double* M, double* W) {
    for (int c = 0; c < len; ++c) W[c] = 0.0;
    for (int t = t0; t < n; ++t) {
      const double wv = wt[r][t - t0];
      if (wv == 0.0) continue;
      const double* Z = P + t * kMomentSize + z_off;
      double* dZ = dP[r] + t * kMomentSize + z_off;
      for (int c = 0; c < len; ++c) {
        dZ[c] += wv * M[c];
        W[c] += wv * Z[c];
      }
    }
  };
  double M[27], W[27];
  if (groups > 4)  // f = A_ab B_ac C_bc, p <= q <= t: M_bc = A_ab B_ac
    for (int p = 0; p < n; ++p)
      for (int q = p; q < n; ++q) {
        const int count = n - q, f0 = f;
        f += count;
        if (!weights_t(f0, count)) continue;
        const double *A = P2(p), *B = P2(q);
        for (int b = 0; b < 3; ++b)
          for (int c = 0; c < 3; ++c) M[3 * b + c] = A[b] * B[c] + A[3 + b] * B[3 + c] + A[6 + b] * B[6 + c];
        for (int r = 0; r < R; ++r) {
          through_t(r, q, 4, 9, M, W);
          double *dA = dP[r] + p * kMomentSize + 4, *dB = dP[r] + q * kMomentSize + 4;
          for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b)
              for (int c = 0; c < 3; ++c) {
                dA[3 * a + b] += B[3 * a + c] * W[3 * b + c];
                dB[3 * a + c] += A[3 * a + b] * W[3 * b + c];
              }
        }
      }
  if (groups > 5)  // f = x_a y_b C_ab, p <= q, all t: M_ab = x_a y_b
    for (int p = 0; p < n; ++p)
      for (int q = p; q < n; ++q) {
        const int f0 = f;
        f += n;
        if (!weights_t(f0, n)) continue;
        const double *x = P1(p), *y = P1(q);
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b) M[3 * a + b] = x[a] * y[b];
        for (int r = 0; r < R; ++r) {
          through_t(r, 0, 4, 9, M, W);
          double *dx = dP[r] + p * kMomentSize + 1, *dy = dP[r] + q * kMomentSize + 1;
          for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) {
              dx[a] += W[3 * a + b] * y[b];
              dy[b] += x[a] * W[3 * a + b];
            }
        }
      }
  if (groups > 6)  // f = A_abc B_abd C_cd, p <= q, all t: M_cd = A_abc B_abd
    for (int p = 0; p < n; ++p)
      for (int q = p; q < n; ++q) {
        const int f0 = f;
        f += n;
        if (!weights_t(f0, n)) continue;
        const double *A = P3(p), *B = P3(q);
        for (int c = 0; c < 9; ++c) M[c] = 0.0;
        for (int ab = 0; ab < 9; ++ab)
          for (int c = 0; c < 3; ++c)
            for (int d = 0; d < 3; ++d) M[3 * c + d] += A[3 * ab + c] * B[3 * ab + d];
        for (int r = 0; r < R; ++r) {
          through_t(r, 0, 4, 9, M, W);
          double *dA = dP[r] + p * kMomentSize + 13, *dB = dP[r] + q * kMomentSize + 13;
          for (int ab = 0; ab < 9; ++ab)
            for (int c = 0; c < 3; ++c)
              for (int d = 0; d < 3; ++d) {
                dA[3 * ab + c] += B[3 * ab + d] * W[3 * c + d];
                dB[3 * ab + d] += A[3 * ab + c] * W[3 * c + d];
              }
        }
      }
  if (groups > 7)  // f = A_abc B_ab x_c, all p, q, t: M_c = A_abc B_ab
    for (int p = 0; p < n; ++p)
      for (int q = 0; q < n; ++q) {
        const int f0 = f;
        f += n;
        if (!weights_t(f0, n)) continue;
        const double *A = P3(p), *B = P2(q);
        for (int c = 0; c < 3; ++c) M[c] = 0.0;
        for (int ab = 0; ab < 9; ++ab)
          for (int c = 0; c < 3; ++c) M[c] += A[3 * ab + c] * B[ab];
        for (int r = 0; r < R; ++r) {
          through_t(r, 0, 1, 3, M, W);
          double *dA = dP[r] + p * kMomentSize + 13, *dB = dP[r] + q * kMomentSize + 4;
          for (int ab = 0; ab < 9; ++ab)
            for (int c = 0; c < 3; ++c) {
              dA[3 * ab + c] += B[ab] * W[c];
              dB[ab] += A[3 * ab + c] * W[c];
            }
        }
      }
}

// One row of gm_contract_backward_rows.
MLIPBIAS_HD inline void gm_contract_backward(const GaussianMomentSettings& s, const double* P, const double* dG,
                                             double* dP) {
  gm_contract_backward_rows<1>(s, P, &dG, &dP);
}

// dL/dD of one pair from dL/dP of its centre: through R_s(r) (radially) and u = D / r. With the
// moment-shaped sums A = sum_s dR_s dL/dP_s and B = sum_s R_s dL/dP_s and m(u) = (1, u, uu, uuu),
// dL/dr = A . m(u) and dL/du = d(B . m(u))/du: the radial functions are summed first, so the
// products of u are formed once per pair instead of once per radial function.
MLIPBIAS_HD inline void gm_pair_gradient(int n_radial, const double* R, const double* dR, const double* D,
                                         double r, const double* dP, double* out) {
  double A[kMomentSize], B[kMomentSize];
  for (int a = 0; a < kMomentSize; ++a) A[a] = B[a] = 0.0;
  for (int q = 0; q < n_radial; ++q) {
    const double* g = dP + q * kMomentSize;
    for (int a = 0; a < kMomentSize; ++a) {
      A[a] += dR[q] * g[a];
      B[a] += R[q] * g[a];
    }
  }
  const double u[3] = {D[0] / r, D[1] / r, D[2] / r};
  double uu[9];
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) uu[3 * a + b] = u[a] * u[b];
  // dL/dr = A0 + A1.u + A2:uu + A3:uuu; dL/du_a = B1_a + (B2_ab + B2_ba) u_b
  // + (B3_abc + B3_bac + B3_bca) u_b u_c.
  double dLdr = A[0], dLdu[3];
  for (int a = 0; a < 3; ++a) {
    dLdr += A[1 + a] * u[a];
    dLdu[a] = B[1 + a];
    for (int b = 0; b < 3; ++b) {
      dLdr += A[4 + 3 * a + b] * uu[3 * a + b];
      dLdu[a] += (B[4 + 3 * a + b] + B[4 + 3 * b + a]) * u[b];
      for (int c = 0; c < 3; ++c) {
        dLdr += A[13 + 9 * a + 3 * b + c] * uu[3 * a + b] * u[c];
        dLdu[a] += (B[13 + 9 * a + 3 * b + c] + B[13 + 9 * b + 3 * a + c] + B[13 + 9 * b + 3 * c + a]) * uu[3 * b + c];
      }
    }
  }
  // du/dD = (I - u u^T) / r, dr/dD = u.
  const double radial = dLdu[0] * u[0] + dLdu[1] * u[1] + dLdu[2] * u[2];
  for (int a = 0; a < 3; ++a) out[a] += dLdr * u[a] + (dLdu[a] - radial * u[a]) / r;
}

// ------------------------------------------------------------------ one centre

// beta of the pair (ei, ej) in one member's block [n_elements][n_elements][n_radial][n_basis].
MLIPBIAS_HD inline const double* gm_pair_beta(const GaussianMomentSettings& s, const double* beta, int64_t n_elements,
                                              int64_t ei, int64_t ej) {
  return beta + (ei * n_elements + ej) * s.n_radial * s.n_basis;
}

// The moments P [n_radial][kMomentSize] of a centre of element ei from its pairs begin..end-1
// (neighbour atom j[p], pair vector D[p]; pairs at or beyond the cutoff add nothing), for one
// member's beta. R, dR: scratch of n_radial entries.
MLIPBIAS_HD inline void gm_centre_moments(const GaussianMomentSettings& s, const double* beta, int64_t n_elements,
                                          int64_t ei, const int64_t* species, const int64_t* j, const double* D,
                                          int64_t begin, int64_t end, double* P, double* R, double* dR) {
  for (int a = 0; a < s.n_radial * kMomentSize; ++a) P[a] = 0.0;
  for (int64_t p = begin; p < end; ++p) {
    const double* Dp = D + 3 * p;
    const double r = std::sqrt(dot3(Dp, Dp));
    if (r >= s.cutoff) continue;
    gm_radial(s, gm_pair_beta(s, beta, n_elements, ei, species[j[p]]), r, R, dR);
    const double u[3] = {Dp[0] / r, Dp[1] / r, Dp[2] / r};
    gm_add_pair(s.n_radial, R, u, P);
  }
}

// Adds dL/dD_p of the centre's pairs begin..end-1 to out[3 p..3 p + 2] from dL/dP of the centre
// (one member's beta, as gm_centre_moments).
MLIPBIAS_HD inline void gm_centre_pair_gradients(const GaussianMomentSettings& s, const double* beta,
                                                 int64_t n_elements, int64_t ei, const int64_t* species,
                                                 const int64_t* j, const double* D, int64_t begin, int64_t end,
                                                 const double* dP, double* out, double* R, double* dR) {
  for (int64_t p = begin; p < end; ++p) {
    const double* Dp = D + 3 * p;
    const double r = std::sqrt(dot3(Dp, Dp));
    if (r >= s.cutoff) continue;
    gm_radial(s, gm_pair_beta(s, beta, n_elements, ei, species[j[p]]), r, R, dR);
    gm_pair_gradient(s.n_radial, R, dR, Dp, r, dP, out + 3 * p);
  }
}

}  // namespace mlipbias
