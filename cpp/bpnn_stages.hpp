// BP-NN evaluation in the stages of gmnn_stages.hpp (host and CUDA device): energies, forces,
// virial, the posterior uncertainty U, dU/dx, its virial and the bias forces. Only the two
// per-centre stages differ from GM-NN: the descriptor is the symmetry functions of
// symmetry_functions_math.hpp, shared by every member, so G_i is computed once and the mean
// energy row dE/dG_i = (1/M) sum_m dE_m/dG_i goes through one reverse pass (as
// cpp/evaluator.cpp). bpnn_packed.cpp runs the stages on the host (held to the C++ evaluator by
// the CPU tests), cuda/bpnn.cu on the device.
#pragma once

#include <cstdint>

#include "gmnn_stages.hpp"
#include "network_math.hpp"
#include "symmetry_functions_math.hpp"

namespace mlipbias {

// The networks (the GM-NN fields gm and beta unused) and the packed symmetry functions, in one
// params and one index array.
struct BpnnView {
  GmnnView net;
  SfTable sf;
};

// Per centre: G_i (into member 0's block of the layout's G), every member's network passes and
// energy, the mean energy row, its pair gradients, and member 0's sketched features (with
// `features`).
struct BpnnAtomForward {
  BpnnView v;
  GmnnNeighbours nb;
  GmnnBuffers b;
  bool features;

  MLIPBIAS_HD void operator()(int64_t i, Strided scratch) const {
    const GmnnView& n = v.net;
    const NetRows rows = NetRows::carve(scratch, n.n_layers, n.width);
    const int e = static_cast<int>(nb.species[i]);
    const int M = n.n_members, F = n.n_features;
    const double* mean = n.params + n.mean + static_cast<int64_t>(e) * F;
    const double* inv_std = n.params + n.inv_std + static_cast<int64_t>(e) * F;
    const int64_t begin = nb.offsets[i], end = nb.offsets[i + 1];
    double* G = b.G + i * M * F;
    for (int f = 0; f < F; ++f) G[f] = 0.0;
    sf_centre_values(v.sf, n.params, n.index, nb.species, nb.j, nb.D, begin, end, G);
    const Strided h0 = rows.H(0);
    for (int f = 0; f < F; ++f) h0[f] = (G[f] - mean[f]) * inv_std[f];
    double* dEdG = b.row + i * F;
    for (int f = 0; f < F; ++f) dEdG[f] = 0.0;
    // Member 0 last, so that its deltas and layer inputs are still in the rows for the sketch;
    // the passes leave h_0 as it is.
    for (int m = M - 1; m >= 0; --m) {
      const int64_t* net = n.net(m, e);
      const double scale = n.params[n.scale + m];
      const double out = nn_forward(n.params, net, n.n_layers, n.activation, rows, false);
      b.member_E[i * M + m] = scale * out + n.params[n.shift + static_cast<int64_t>(m) * n.n_elements + e];
      nn_backward(n.params, net, n.n_layers, scale, rows);
      for (int f = 0; f < F; ++f) dEdG[f] += rows.gh[f] * inv_std[f];
    }
    for (int f = 0; f < F; ++f) dEdG[f] /= M;
    sf_centre_vjp(v.sf, n.params, n.index, nb.species, nb.j, nb.D, begin, end, dEdG, b.pair_grad);
    if (features)
      nn_sketch_features(n.params, n.net(0, e), n.sketches(e), n.n_layers, n.k, rows, b.phi + i * n.block());
  }
};

// Per centre, when U > 0: dU/dG_i of member 0 by the tangent pass, then dU/dD_p by the reverse
// pass of the symmetry functions.
struct BpnnAtomBias {
  BpnnView v;
  GmnnNeighbours nb;
  GmnnBuffers b;

  MLIPBIAS_HD void operator()(int64_t i, Strided scratch) const {
    if (!(b.scalars[0] > 0.0)) return;
    const GmnnView& n = v.net;
    const NetRows rows = NetRows::carve(scratch, n.n_layers, n.width);
    const int e = static_cast<int>(nb.species[i]);
    const int F = n.n_features;
    const double* mean = n.params + n.mean + static_cast<int64_t>(e) * F;
    const double* inv_std = n.params + n.inv_std + static_cast<int64_t>(e) * F;
    const double* G = b.G + i * n.n_members * F;
    const Strided h0 = rows.H(0);
    for (int f = 0; f < F; ++f) h0[f] = (G[f] - mean[f]) * inv_std[f];
    const int64_t* net = n.net(0, e);
    nn_forward(n.params, net, n.n_layers, n.activation, rows, true);
    const double* coef = b.v + static_cast<int64_t>(e) * n.block();
    nn_tangent(n.params, net, n.sketches(e), n.n_layers, n.k, n.params[n.scale], coef, rows);
    double* dUdG = b.row + i * F;
    for (int f = 0; f < F; ++f) dUdG[f] = rows.ghdot[f] * inv_std[f];
    sf_centre_vjp(v.sf, n.params, n.index, nb.species, nb.j, nb.D, nb.offsets[i], nb.offsets[i + 1], dUdG,
                  b.u_pair_grad);
  }
};

// One evaluation (as gmnn_run; the layout is gmnn_layout of v.net).
template <class Exec>
void bpnn_run(Exec& ex, const BpnnView& v, const GmnnNeighbours& nb, const GmnnBuffers& b, bool posterior,
              bool gradient) {
  staged_run(ex, v.net, nb, b, posterior, gradient, BpnnAtomForward{v, nb, b, posterior}, BpnnAtomBias{v, nb, b});
}

}  // namespace mlipbias
