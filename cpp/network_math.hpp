// Dense networks of one atom (the element networks of BP-NN and GM-NN files) on host and device:
// activation, forward pass, backward pass (dE/dinput), the sketched gradient features and the
// forward-mode tangent of the backward pass used by the gradient-feature uncertainty gradient.
// The same formulas as cpp/evaluator.cpp (see the comment at its top for the tangent), written
// over packed weights so that a CUDA kernel runs them: the staged GM-NN evaluation
// (gmnn_stages.hpp) calls them on the host in tests and in cuda/gmnn.cu on the device.
//
// Packed layout: every weight lives in one double array `params`; `layers` holds, per layer l of
// one network, {offset of W [n_out][n_in] (row-major), offset of b [n_out], n_in, n_out} and
// `sketch` per layer {offset of R1 [k][n_out], offset of R2 [k][n_in + 1]}.
//
// Per-atom rows (activations and their tangents) live in a Strided scratch: entry x of a row is
// p[x * s], so that on the device thread t of T uses p = base + t, s = T and neighbouring threads
// touch neighbouring words (coalesced); on the host s = 1.
#pragma once

#include <cmath>
#include <cstdint>

#include "common.hpp"

namespace mlipbias {

enum class Activation { tanh, silu };

// act(z), act'(z) and act''(z). SiLU: z s(z) with the logistic s; s' = s (1 - s).
MLIPBIAS_HD inline void activation(Activation kind, double z, double* value, double* d1, double* d2) {
  if (kind == Activation::tanh) {
    const double t = std::tanh(z);
    const double dt = 1.0 - t * t;
    *value = t;
    *d1 = dt;
    *d2 = -2.0 * t * dt;
    return;
  }
  const double s = 1.0 / (1.0 + std::exp(-z));
  const double ds = s * (1.0 - s);
  *value = z * s;
  *d1 = s + z * ds;
  *d2 = ds * (2.0 + z * (1.0 - 2.0 * s));
}

// A vector with stride s (see the top of this file).
struct Strided {
  double* p;
  int64_t s;
  MLIPBIAS_HD double& operator[](int64_t x) const { return p[x * s]; }
  MLIPBIAS_HD Strided operator+(int64_t x) const { return Strided{p + x * s, s}; }
};

constexpr int kLayerIndexSize = 4;   // W offset, b offset, n_in, n_out
constexpr int kSketchIndexSize = 2;  // R1 offset, R2 offset

// Rows of one atom's passes, each `width` (the widest layer) long.
struct NetRows {
  Strided h, z, d1, d2, g, hdot, zdot, gdot;  // h, hdot: L + 1 rows; the others L
  Strided gh, ghdot, proj;                    // one row each; proj needs k entries
  int width;

  // Carves the rows out of `scratch`, which must hold nn_scratch_size(L, width, k) entries (proj last).
  MLIPBIAS_HD static NetRows carve(Strided scratch, int L, int width) {
    NetRows r;
    r.width = width;
    int64_t at = 0;
    Strided* rows[] = {&r.h, &r.hdot};
    for (Strided* row : rows) {
      *row = scratch + at;
      at += static_cast<int64_t>(L + 1) * width;
    }
    Strided* layer_rows[] = {&r.z, &r.d1, &r.d2, &r.g, &r.zdot, &r.gdot};
    for (Strided* row : layer_rows) {
      *row = scratch + at;
      at += static_cast<int64_t>(L) * width;
    }
    r.gh = scratch + at;
    r.ghdot = scratch + at + width;
    r.proj = scratch + at + 2 * width;
    return r;
  }
  MLIPBIAS_HD Strided H(int l) const { return h + static_cast<int64_t>(l) * width; }
  MLIPBIAS_HD Strided Z(int l) const { return z + static_cast<int64_t>(l) * width; }
  MLIPBIAS_HD Strided D1(int l) const { return d1 + static_cast<int64_t>(l) * width; }
  MLIPBIAS_HD Strided D2(int l) const { return d2 + static_cast<int64_t>(l) * width; }
  MLIPBIAS_HD Strided G(int l) const { return g + static_cast<int64_t>(l) * width; }
  MLIPBIAS_HD Strided Hdot(int l) const { return hdot + static_cast<int64_t>(l) * width; }
  MLIPBIAS_HD Strided Zdot(int l) const { return zdot + static_cast<int64_t>(l) * width; }
  MLIPBIAS_HD Strided Gdot(int l) const { return gdot + static_cast<int64_t>(l) * width; }
};

MLIPBIAS_HD inline int64_t nn_scratch_size(int L, int width, int k) {
  return static_cast<int64_t>(2 * (L + 1) + 6 * L + 2) * width + k;
}

// Outputs (forward) or inputs (backward) per register tile: each entry of x (or g) is read once
// per tile instead of once per output, which on the device is the traffic that counts. The
// order of every sum is that of the plain loop, so the numbers do not depend on the tile.
constexpr int kNnTile = 8;

// z = bias + W x for W [n_out][n_in] (bias may be null: 0).
MLIPBIAS_HD inline void nn_matvec(const double* W, const double* bias, int n_in, int n_out, Strided x, Strided z) {
  int o0 = 0;
  for (; o0 + kNnTile <= n_out; o0 += kNnTile) {
    double acc[kNnTile];
    for (int t = 0; t < kNnTile; ++t) acc[t] = bias ? bias[o0 + t] : 0.0;
    const double* w = W + static_cast<int64_t>(o0) * n_in;
    for (int c = 0; c < n_in; ++c) {
      const double xc = x[c];
      for (int t = 0; t < kNnTile; ++t) acc[t] += w[static_cast<int64_t>(t) * n_in + c] * xc;
    }
    for (int t = 0; t < kNnTile; ++t) z[o0 + t] = acc[t];
  }
  for (int o = o0; o < n_out; ++o) {
    const double* w = W + static_cast<int64_t>(o) * n_in;
    double acc = bias ? bias[o] : 0.0;
    for (int c = 0; c < n_in; ++c) acc += w[c] * x[c];
    z[o] = acc;
  }
}

// y = W^T g for W [n_out][n_in] (y of length n_in).
MLIPBIAS_HD inline void nn_matvec_transposed(const double* W, int n_in, int n_out, Strided g, Strided y) {
  int c0 = 0;
  for (; c0 + kNnTile <= n_in; c0 += kNnTile) {
    double acc[kNnTile];
    for (int t = 0; t < kNnTile; ++t) acc[t] = 0.0;
    for (int o = 0; o < n_out; ++o) {
      const double go = g[o];
      const double* w = W + static_cast<int64_t>(o) * n_in + c0;
      for (int t = 0; t < kNnTile; ++t) acc[t] += w[t] * go;
    }
    for (int t = 0; t < kNnTile; ++t) y[c0 + t] = acc[t];
  }
  for (int c = c0; c < n_in; ++c) {
    double acc = 0.0;
    for (int o = 0; o < n_out; ++o) acc += W[static_cast<int64_t>(o) * n_in + c] * g[o];
    y[c] = acc;
  }
}

// z = b + W x of one packed layer.
MLIPBIAS_HD inline void nn_layer_forward(const double* params, const int64_t* layer, Strided x, Strided z) {
  nn_matvec(params + layer[0], params + layer[1], static_cast<int>(layer[2]), static_cast<int>(layer[3]), x, z);
}

// y = W^T g of one packed layer.
MLIPBIAS_HD inline void nn_layer_backward(const double* params, const int64_t* layer, Strided g, Strided y) {
  nn_matvec_transposed(params + layer[0], static_cast<int>(layer[2]), static_cast<int>(layer[3]), g, y);
}

// Forward pass from the scaled input in r.H(0): fills h, z, act' (and act'' with `second`);
// returns the raw output z_L.
MLIPBIAS_HD inline double nn_forward(const double* params, const int64_t* layers, int L, Activation act,
                                     const NetRows& r, bool second) {
  for (int l = 0; l < L; ++l) {
    const int64_t* layer = layers + kLayerIndexSize * l;
    const Strided z = r.Z(l);
    nn_layer_forward(params, layer, r.H(l), z);
    if (l == L - 1) break;
    const Strided h = r.H(l + 1), d1 = r.D1(l), d2 = r.D2(l);
    for (int o = 0; o < static_cast<int>(layer[3]); ++o) {
      double value, first, curvature;
      activation(act, z[o], &value, &first, &curvature);
      h[o] = value;
      d1[o] = first;
      if (second) d2[o] = curvature;
    }
  }
  return r.Z(L - 1)[0];
}

// Backward pass after nn_forward with E = scale z_L + shift: delta_l = dE/dz_l into r.G(l) and
// dE/dh_0 into r.gh.
MLIPBIAS_HD inline void nn_backward(const double* params, const int64_t* layers, int L, double scale,
                                    const NetRows& r) {
  r.G(L - 1)[0] = scale;
  for (int l = L - 1; l >= 0; --l) {
    const int64_t* layer = layers + kLayerIndexSize * l;
    nn_layer_backward(params, layer, r.G(l), r.gh);
    if (l == 0) break;
    const Strided d1 = r.D1(l - 1), g = r.G(l - 1);
    for (int c = 0; c < static_cast<int>(layer[2]); ++c) g[c] = d1[c] * r.gh[c];
  }
}

// The sketched gradient features phi[l k + p] = (R1_l,p . delta_l) (R2_l,p . [h_l, 1]) / sqrt(k)
// of one atom (its element's block of L k entries), after nn_forward and nn_backward.
MLIPBIAS_HD inline void nn_sketch_features(const double* params, const int64_t* layers, const int64_t* sketch, int L,
                                           int k, const NetRows& r, double* phi) {
  const double inv_sqrt_k = 1.0 / std::sqrt(static_cast<double>(k));
  for (int l = 0; l < L; ++l) {
    const int64_t* layer = layers + kLayerIndexSize * l;
    const int n_in = static_cast<int>(layer[2]), n_out = static_cast<int>(layer[3]);
    const double* R1 = params + sketch[kSketchIndexSize * l];
    const double* R2 = params + sketch[kSketchIndexSize * l + 1];
    const Strided delta = r.G(l), a = r.H(l);
    for (int p = 0; p < k; ++p) {
      const double* r1 = R1 + static_cast<int64_t>(p) * n_out;
      const double* r2 = R2 + static_cast<int64_t>(p) * (n_in + 1);
      double x = 0.0, y = r2[n_in];  // the bias column multiplies the appended 1
      for (int o = 0; o < n_out; ++o) x += r1[o] * delta[o];
      for (int c = 0; c < n_in; ++c) y += r2[c] * a[c];
      phi[l * k + p] = x * y * inv_sqrt_k;
    }
  }
}

// d/dh_0 of (dE/dtheta . B) into r.ghdot, after nn_forward(second = true): the tangent of the
// forward and backward passes along the parameter direction B_l = R1_l^T diag(c_l) R2_l, applied
// through the sketches without forming B (k (n_in + n_out) per layer instead of n_in n_out):
//   B_l [h, 1] = R1_l^T (c_l * (R2_l [h, 1])),   B_l^T g (weights only) = R2_l^T (c_l * (R1_l g)).
// coef [L k]: c_l,p = v_l,p / sqrt(k) of the atom's element.
MLIPBIAS_HD inline void nn_tangent(const double* params, const int64_t* layers, const int64_t* sketch, int L, int k,
                                   double scale, const double* coef, const NetRows& r) {
  // Forward tangent: zdot_l = W_l hdot_l + B_l [h_l, 1], hdot_(l+1) = act'(z_l) zdot_l, hdot_0 = 0.
  for (int l = 0; l < L; ++l) {
    const int64_t* layer = layers + kLayerIndexSize * l;
    const int n_in = static_cast<int>(layer[2]), n_out = static_cast<int>(layer[3]);
    const double* R1 = params + sketch[kSketchIndexSize * l];
    const double* R2 = params + sketch[kSketchIndexSize * l + 1];
    const Strided zdot = r.Zdot(l), h = r.H(l);
    for (int p = 0; p < k; ++p) {
      const double* r2 = R2 + static_cast<int64_t>(p) * (n_in + 1);
      double y = r2[n_in];
      for (int c = 0; c < n_in; ++c) y += r2[c] * h[c];
      r.proj[p] = coef[l * k + p] * y;
    }
    if (l > 0) {
      nn_matvec(params + layer[0], nullptr, n_in, n_out, r.Hdot(l), zdot);
    } else {
      for (int o = 0; o < n_out; ++o) zdot[o] = 0.0;
    }
    for (int p = 0; p < k; ++p) {
      const double* r1 = R1 + static_cast<int64_t>(p) * n_out;
      const double w = r.proj[p];
      for (int o = 0; o < n_out; ++o) zdot[o] += r1[o] * w;
    }
    if (l == L - 1) break;
    const Strided d1 = r.D1(l), hnext = r.Hdot(l + 1);
    for (int o = 0; o < n_out; ++o) hnext[o] = d1[o] * zdot[o];
  }
  // Backward with its tangent: gh = W^T g, ghdot = W^T gdot + B_w^T g,
  // g_(l-1) = act' gh, gdot_(l-1) = act'' zdot gh + act' ghdot; the output scale is fixed.
  r.G(L - 1)[0] = scale;
  r.Gdot(L - 1)[0] = 0.0;
  for (int l = L - 1; l >= 0; --l) {
    const int64_t* layer = layers + kLayerIndexSize * l;
    const int n_in = static_cast<int>(layer[2]), n_out = static_cast<int>(layer[3]);
    const double* R1 = params + sketch[kSketchIndexSize * l];
    const double* R2 = params + sketch[kSketchIndexSize * l + 1];
    const Strided g = r.G(l);
    nn_layer_backward(params, layer, g, r.gh);
    nn_layer_backward(params, layer, r.Gdot(l), r.ghdot);
    for (int p = 0; p < k; ++p) {
      const double* r1 = R1 + static_cast<int64_t>(p) * n_out;
      double x = 0.0;
      for (int o = 0; o < n_out; ++o) x += r1[o] * g[o];
      const double w = coef[l * k + p] * x;
      const double* r2 = R2 + static_cast<int64_t>(p) * (n_in + 1);
      for (int c = 0; c < n_in; ++c) r.ghdot[c] += r2[c] * w;
    }
    if (l == 0) break;
    const Strided d1 = r.D1(l - 1), d2 = r.D2(l - 1), zdot = r.Zdot(l - 1), gdot = r.Gdot(l - 1),
                  gprev = r.G(l - 1);
    for (int c = 0; c < n_in; ++c) {
      gprev[c] = d1[c] * r.gh[c];
      gdot[c] = d2[c] * zdot[c] * r.gh[c] + d1[c] * r.ghdot[c];
    }
  }
}

}  // namespace mlipbias
