// GM-NN evaluation in stages that run on the host and on a CUDA device: energies, forces, virial,
// the posterior (gradient-feature) uncertainty U, dU/dx, its virial and the bias forces.
//
// Each stage is a functor called once per item (a centre, a column of a sum, ...) with the item's
// strided scratch (network_math.hpp). gmnn_run() strings the stages together over an executor:
// gmnn_stages.cpp's host executor loops over the items in order (the CPU tests hold it to the
// C++ evaluator, cpp/evaluator.cpp, to 1e-10), cuda/gmnn.cu launches one kernel per stage. So the
// tests on every machine check the math the GPU runs; the kernels add only launches and memory.
//
// The formulas are those of the evaluator (see the top of cpp/evaluator.cpp): member m's Gaussian
// moments with its own beta, its network forward and backward, the mean row dE/dG / M through the
// moments' reverse pass into pair gradients; member 0's sketched features phi_i summed into Phi;
// U = c_E sqrt(Phi^T A Phi) and v = (c_E^2 / U) (1/2) d(Phi^T A Phi)/dPhi; per centre the tangent
// pass along v (nn_tangent) gives dU/dG_i and the reverse pass of member 0's moments dU/dD_p.
// Differences: sums over centres run in chunks (atomic on the device: order and so the last bits
// vary there), and only the methods "none" and "posterior" are staged.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.hpp"
#include "gaussian_moments_math.hpp"
#include "network_math.hpp"

namespace mlipbias {

// Local arrays of the moments per centre: n_radial is limited so that they fit a GPU thread.
constexpr int kGmStagedMaxRadial = 8;
// Rows per item of the chunked column sums.
constexpr int64_t kGmSumChunk = 256;

// Adds x to *p: atomically on the device, where several threads add to one place.
MLIPBIAS_HD inline void hd_add(double* p, double x) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, x);
#else
  *p += x;
#endif
}

// A GM-NN file packed into one double array `params` and one index array `index` (pack_gmnn,
// gmnn_stages.cpp); the int64 members are offsets into them. The pointers are host or device memory.
struct GmnnView {
  const double* params;
  const int64_t* index;
  GaussianMomentSettings gm;
  int n_elements, n_members, n_layers, n_features, width, k;
  Activation activation;
  int64_t n_sketch;   // K = n_elements n_layers k; 0 without posterior data
  int64_t beta;       // [M][n_el][n_el][n_radial][n_basis]
  int64_t mean;       // [n_el][F]
  int64_t inv_std;    // [n_el][F]
  int64_t scale;      // [M]
  int64_t shift;      // [M][n_el]
  int64_t precision;  // [K][K] precision_energy (posterior)
  int64_t layers;     // index: [M][n_el][L][kLayerIndexSize]
  int64_t sketch;     // index: [n_el][L][kSketchIndexSize] (member 0's shapes)
  double c_E;         // energy calibration of the posterior

  MLIPBIAS_HD const int64_t* net(int m, int e) const {
    return index + layers + (static_cast<int64_t>(m) * n_elements + e) * n_layers * kLayerIndexSize;
  }
  MLIPBIAS_HD const int64_t* sketches(int e) const {
    return index + sketch + static_cast<int64_t>(e) * n_layers * kSketchIndexSize;
  }
  MLIPBIAS_HD const double* member_beta(int m) const {
    return params + beta + static_cast<int64_t>(m) * n_elements * n_elements * gm.n_radial * gm.n_basis;
  }
  MLIPBIAS_HD int block() const { return n_layers * k; }  // sketched features of one element
  MLIPBIAS_HD int64_t scratch_size() const { return nn_scratch_size(n_layers, width, k); }
};

// Neighbours as in NeighbourView (symmetry_functions.hpp); every species must be 0..n_el-1.
struct GmnnNeighbours {
  int64_t n_centers, n_atoms, n_pairs;
  const int64_t* species;  // [n_atoms]
  const int64_t* offsets;  // [n_centers + 1]
  const int64_t* j;        // [n_pairs]
  const double* D;         // [n_pairs][3]
};

// Where everything lives in one double arena (gmnn_layout). The outputs come first, so that a
// device copies back one contiguous prefix of `n_outputs` doubles; tau follows (the one input).
struct GmnnBuffers {
  double* sums;         // [M + K]: E_m, then Phi
  double* scalars;      // [2]: U, then c_E^2 / U (0 when U = 0)
  double* virial;       // [9] -sum_p D_p (x) dE/dD_p
  double* u_virial;     // [9] +sum_p D_p (x) dU/dD_p
  double* member_E;     // [n_centers][M]
  double* forces;       // [n_atoms][3] -dE/dx
  double* u_gradient;   // [n_atoms][3] dU/dx
  double* bias_forces;  // [n_atoms][3] tau_(Z) dU/dx
  double* tau;          // [n_elements]
  double* G;            // [n_centers][M F]
  double* row;          // [n_centers][F]: dE/dG or dU/dG of one member
  double* phi;          // [n_centers][L k]
  double* pair_grad;    // [n_pairs][3] dE/dD_p (ensemble mean)
  double* u_pair_grad;  // [n_pairs][3] dU/dD_p
  double* v;            // [K]: (1/2) d(Phi^T A Phi)/dPhi, then the tangent coefficients
  double* qparts;       // [K]: Phi_a (A Phi)_a
  double* atom_virial;  // [n_centers][18]: each centre's part of virial and u_virial
  int64_t n_outputs;    // doubles before tau
  int64_t n_total;
};

// Lays the buffers out from `arena` (nullptr: only the sizes).
inline GmnnBuffers gmnn_layout(const GmnnView& v, const GmnnNeighbours& nb, double* arena) {
  GmnnBuffers b;
  int64_t at = 0;
  auto take = [&](int64_t n) {
    double* p = arena ? arena + at : nullptr;
    at += n;
    return p;
  };
  const int64_t M = v.n_members, K = v.n_sketch, n = nb.n_centers;
  b.sums = take(M + K);
  b.scalars = take(2);
  b.virial = take(9);
  b.u_virial = take(9);
  b.member_E = take(n * M);
  b.forces = take(3 * nb.n_atoms);
  b.u_gradient = take(3 * nb.n_atoms);
  b.bias_forces = take(3 * nb.n_atoms);
  b.n_outputs = at;
  b.tau = take(v.n_elements);
  b.G = take(n * M * v.n_features);
  b.row = take(n * v.n_features);
  b.phi = take(n * v.block());
  b.pair_grad = take(3 * nb.n_pairs);
  b.u_pair_grad = take(3 * nb.n_pairs);
  b.v = take(K);
  b.qparts = take(K);
  b.atom_virial = take(18 * n);
  b.n_total = at;
  return b;
}

// ------------------------------------------------------------------ stages

// Per centre: every member's moments, G, network passes and energy, the mean energy row's pair
// gradients, and member 0's sketched features (with `features`).
struct GmnnAtomForward {
  GmnnView v;
  GmnnNeighbours nb;
  GmnnBuffers b;
  bool features;

  MLIPBIAS_HD void operator()(int64_t i, Strided scratch) const {
    const NetRows rows = NetRows::carve(scratch, v.n_layers, v.width);
    const int e = static_cast<int>(nb.species[i]);
    const int M = v.n_members, F = v.n_features;
    const double* mean = v.params + v.mean + static_cast<int64_t>(e) * F;
    const double* inv_std = v.params + v.inv_std + static_cast<int64_t>(e) * F;
    double P[kGmStagedMaxRadial * kMomentSize], dP[kGmStagedMaxRadial * kMomentSize];
    double R[kGmStagedMaxRadial], dR[kGmStagedMaxRadial];
    const int64_t begin = nb.offsets[i], end = nb.offsets[i + 1];
    double* dEdG = b.row + i * F;
    // Member 0 last, so that its deltas and layer inputs are still in the rows for the sketch.
    for (int m = M - 1; m >= 0; --m) {
      const double* beta = v.member_beta(m);
      gm_centre_moments(v.gm, beta, v.n_elements, e, nb.species, nb.j, nb.D, begin, end, P, R, dR);
      double* G = b.G + (i * M + m) * F;
      gm_contract(v.gm, P, G);
      const Strided h0 = rows.H(0);
      for (int f = 0; f < F; ++f) h0[f] = (G[f] - mean[f]) * inv_std[f];
      const int64_t* net = v.net(m, e);
      const double scale = v.params[v.scale + m];
      const double out = nn_forward(v.params, net, v.n_layers, v.activation, rows, false);
      b.member_E[i * M + m] = scale * out + v.params[v.shift + static_cast<int64_t>(m) * v.n_elements + e];
      nn_backward(v.params, net, v.n_layers, scale, rows);
      for (int f = 0; f < F; ++f) dEdG[f] = rows.gh[f] * inv_std[f] / M;
      for (int a = 0; a < v.gm.n_radial * kMomentSize; ++a) dP[a] = 0.0;
      gm_contract_backward(v.gm, P, dEdG, dP);
      gm_centre_pair_gradients(v.gm, beta, v.n_elements, e, nb.species, nb.j, nb.D, begin, end, dP, b.pair_grad, R,
                               dR);
    }
    if (features)
      nn_sketch_features(v.params, v.net(0, e), v.sketches(e), v.n_layers, v.k, rows, b.phi + i * v.block());
  }
};

// Column sums over centres in chunks of kGmSumChunk: item = column * n_chunks + chunk. Columns
// 0..M-1 are the member energies, M + (e L k + a) the element-e block of Phi.
struct GmnnSums {
  GmnnView v;
  GmnnNeighbours nb;
  GmnnBuffers b;
  int64_t n_chunks;

  MLIPBIAS_HD void operator()(int64_t item, Strided) const {
    const int64_t column = item / n_chunks, chunk = item % n_chunks;
    const int64_t first = chunk * kGmSumChunk;
    const int64_t last = first + kGmSumChunk < nb.n_centers ? first + kGmSumChunk : nb.n_centers;
    const int M = v.n_members, block = v.block();
    double s = 0.0;
    if (column < M) {
      for (int64_t i = first; i < last; ++i) s += b.member_E[i * M + column];
    } else {
      const int64_t e = (column - M) / block, a = (column - M) % block;
      for (int64_t i = first; i < last; ++i)
        if (nb.species[i] == e) s += b.phi[i * block + a];
    }
    hd_add(b.sums + column, s);
  }
};

// Per row a of the precision: v_a = (1/2) ((A Phi)_a + (A^T Phi)_a) and Phi_a (A Phi)_a.
struct GmnnPosteriorRows {
  GmnnView v;
  GmnnBuffers b;

  MLIPBIAS_HD void operator()(int64_t a, Strided) const {
    const int64_t K = v.n_sketch;
    const double* A = v.params + v.precision;
    const double* Phi = b.sums + v.n_members;
    double s = 0.0, t = 0.0;
    for (int64_t c = 0; c < K; ++c) {
      s += A[a * K + c] * Phi[c];
      t += A[c * K + a] * Phi[c];
    }
    b.v[a] = 0.5 * (s + t);
    b.qparts[a] = Phi[a] * s;
  }
};

// One item: U = c_E sqrt(Phi^T A Phi) and the factor c_E^2 / U of dU/dPhi = (c_E^2 / U) v.
struct GmnnPosteriorTotal {
  GmnnView v;
  GmnnBuffers b;

  MLIPBIAS_HD void operator()(int64_t, Strided) const {
    double q = 0.0;
    for (int64_t a = 0; a < v.n_sketch; ++a) q += b.qparts[a];
    const double U = v.c_E * std::sqrt(q > 0.0 ? q : 0.0);
    b.scalars[0] = U;
    b.scalars[1] = U > 0.0 ? v.c_E * v.c_E / U : 0.0;
  }
};

// Per entry a: the tangent coefficient dU/dPhi_a / sqrt(k) (nn_tangent's c).
struct GmnnCoefficients {
  GmnnView v;
  GmnnBuffers b;

  MLIPBIAS_HD void operator()(int64_t a, Strided) const {
    b.v[a] *= b.scalars[1] / std::sqrt(static_cast<double>(v.k));
  }
};

// Per centre, when U > 0: dU/dG_i of member 0 by the tangent pass, then dU/dD_p through member
// 0's moments.
struct GmnnAtomBias {
  GmnnView v;
  GmnnNeighbours nb;
  GmnnBuffers b;

  MLIPBIAS_HD void operator()(int64_t i, Strided scratch) const {
    if (!(b.scalars[0] > 0.0)) return;
    const NetRows rows = NetRows::carve(scratch, v.n_layers, v.width);
    const int e = static_cast<int>(nb.species[i]);
    const int F = v.n_features;
    const double* mean = v.params + v.mean + static_cast<int64_t>(e) * F;
    const double* inv_std = v.params + v.inv_std + static_cast<int64_t>(e) * F;
    const double* G = b.G + i * v.n_members * F;  // member 0's block
    const Strided h0 = rows.H(0);
    for (int f = 0; f < F; ++f) h0[f] = (G[f] - mean[f]) * inv_std[f];
    const int64_t* net = v.net(0, e);
    nn_forward(v.params, net, v.n_layers, v.activation, rows, true);
    const double* coef = b.v + static_cast<int64_t>(e) * v.block();
    nn_tangent(v.params, net, v.sketches(e), v.n_layers, v.k, v.params[v.scale], coef, rows);
    double* dUdG = b.row + i * F;
    for (int f = 0; f < F; ++f) dUdG[f] = rows.ghdot[f] * inv_std[f];
    double P[kGmStagedMaxRadial * kMomentSize], dP[kGmStagedMaxRadial * kMomentSize];
    double R[kGmStagedMaxRadial], dR[kGmStagedMaxRadial];
    const int64_t begin = nb.offsets[i], end = nb.offsets[i + 1];
    const double* beta = v.member_beta(0);
    gm_centre_moments(v.gm, beta, v.n_elements, e, nb.species, nb.j, nb.D, begin, end, P, R, dR);
    for (int a = 0; a < v.gm.n_radial * kMomentSize; ++a) dP[a] = 0.0;
    gm_contract_backward(v.gm, P, dUdG, dP);
    gm_centre_pair_gradients(v.gm, beta, v.n_elements, e, nb.species, nb.j, nb.D, begin, end, dP, b.u_pair_grad, R,
                             dR);
  }
};

// Per centre: pair gradients g_p = dX/dD_p to atoms (dX/dx_j += g_p, dX/dx_i -= g_p) and the
// centre's part of the virials into atom_virial.
struct GmnnScatter {
  GmnnNeighbours nb;
  GmnnBuffers b;
  bool gradient;

  MLIPBIAS_HD void operator()(int64_t i, Strided) const {
    double fi[3] = {0.0, 0.0, 0.0}, ui[3] = {0.0, 0.0, 0.0};
    double* W = b.atom_virial + 18 * i;
    for (int c = 0; c < 18; ++c) W[c] = 0.0;
    for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) {
      const int64_t j = nb.j[p];
      const double* D = nb.D + 3 * p;
      const double* g = b.pair_grad + 3 * p;
      for (int x = 0; x < 3; ++x) {
        fi[x] += g[x];
        hd_add(b.forces + 3 * j + x, -g[x]);
        for (int y = 0; y < 3; ++y) W[3 * x + y] -= D[x] * g[y];
      }
      if (!gradient) continue;
      const double* gu = b.u_pair_grad + 3 * p;
      for (int x = 0; x < 3; ++x) {
        ui[x] -= gu[x];
        hd_add(b.u_gradient + 3 * j + x, gu[x]);
        for (int y = 0; y < 3; ++y) W[9 + 3 * x + y] += D[x] * gu[y];
      }
    }
    for (int x = 0; x < 3; ++x) {
      hd_add(b.forces + 3 * i + x, fi[x]);
      if (gradient) hd_add(b.u_gradient + 3 * i + x, ui[x]);
    }
  }
};

// The virials from atom_virial, chunked like GmnnSums: item = component (0..17) * n_chunks + chunk.
struct GmnnVirialSums {
  GmnnNeighbours nb;
  GmnnBuffers b;
  int64_t n_chunks;

  MLIPBIAS_HD void operator()(int64_t item, Strided) const {
    const int64_t c = item / n_chunks, chunk = item % n_chunks;
    const int64_t first = chunk * kGmSumChunk;
    const int64_t last = first + kGmSumChunk < nb.n_centers ? first + kGmSumChunk : nb.n_centers;
    double s = 0.0;
    for (int64_t i = first; i < last; ++i) s += b.atom_virial[18 * i + c];
    hd_add(c < 9 ? b.virial + c : b.u_virial + (c - 9), s);
  }
};

// Per atom: F_bias = tau_(Z) dU/dx.
struct GmnnBiasForces {
  GmnnNeighbours nb;
  GmnnBuffers b;

  MLIPBIAS_HD void operator()(int64_t a, Strided) const {
    const double t = b.tau[nb.species[a]];
    for (int x = 0; x < 3; ++x) b.bias_forces[3 * a + x] = t * b.u_gradient[3 * a + x];
  }
};

// One evaluation. The executor provides zero(double* p, int64_t n) and for_each(n_items, functor)
// (each item gets its own scratch of v.scratch_size() doubles); outputs are zeroed here, tau must
// be in place. posterior: U and Phi (needs the file's posterior data); gradient: dU/dx, its virial
// and the bias forces (needs posterior).
template <class Exec>
void gmnn_run(Exec& ex, const GmnnView& v, const GmnnNeighbours& nb, const GmnnBuffers& b, bool posterior,
              bool gradient) {
  const int64_t n = nb.n_centers, K = posterior ? v.n_sketch : 0;
  const int64_t n_chunks = (n + kGmSumChunk - 1) / kGmSumChunk;
  ex.zero(b.sums, b.n_outputs);  // every output
  ex.zero(b.pair_grad, 3 * nb.n_pairs);
  ex.for_each(n, GmnnAtomForward{v, nb, b, posterior});
  ex.for_each((v.n_members + K) * n_chunks, GmnnSums{v, nb, b, n_chunks});
  if (posterior) {
    ex.for_each(K, GmnnPosteriorRows{v, b});
    ex.for_each(1, GmnnPosteriorTotal{v, b});
  }
  if (gradient) {
    ex.for_each(K, GmnnCoefficients{v, b});
    ex.zero(b.u_pair_grad, 3 * nb.n_pairs);
    ex.for_each(n, GmnnAtomBias{v, nb, b});
  }
  ex.for_each(n, GmnnScatter{nb, b, gradient});
  ex.for_each(18 * n_chunks, GmnnVirialSums{nb, b, n_chunks});
  if (gradient) ex.for_each(nb.n_atoms, GmnnBiasForces{nb, b});
}

}  // namespace mlipbias
