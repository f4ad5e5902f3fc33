// Two-phase evaluation of a BP-NN model with its uncertainty and the uncertainty gradient.
//
// forward(), one fused pass per atom while its neighbourhood is in cache: descriptors G_i
// (recording the geometry), for every member the network forward and backward pass (atomic
// energies and dE_i/dG_i), at once the descriptor vector-Jacobian product of the energy rows
// (the mean, or every member when member forces or the ensemble gradient are wanted) into
// pair gradients; the sketched gradient features phi_i of member 0; local sums.
// backward(): U from the global sums; the ensemble's dU/dx is the v-weighted sum of the member
// pair gradients (no descriptor work); the gradient-feature methods need dU/dG_i, known only
// after the global sums, and one more descriptor vjp for it: when that gradient is wanted,
// forward() keeps its energy rows instead of contracting them, and backward() contracts both in
// one traversal (a vjp of two rows costs little more than one); scatter to atoms.
//
// dU/dG for the gradient-feature methods: with U^2 = c^2 q(Phi) and v = (1/2) dq/dPhi,
// dU = (c^2 / U) v . dPhi, and v . phi_i = sum_l delta_l^T B_l a_l with the weight-shaped
// matrix B_l = R1_l^T diag(v_l) R2_l / sqrt(k): the derivative of E_i along B in parameter
// space (docs/model_file.md). Its gradient with respect to G_i is the forward-mode tangent
// (along B) of the network's own backward pass, computed exactly below (batch_tangent). B_l has
// rank k, so its products go through the k sketch values (Factors) instead of a dense matrix.
// forward() keeps what the tangent needs of member 0's passes per centre (keep_passes: the hidden
// pre-activations and W^T delta, 2 (L - 1) rows of the widest hidden layer, 16 kB for 512-wide float64),
// so backward() runs only the tangent products, not the network forward and backward again: for
// hidden width w, about 3 of the plain passes' 4 w-by-w products (benchmarks/RESULTS.md, "Bias
// overheads").
//
// The networks run as matrix products (dense.hpp) over the atoms of one element in a fixed
// block of consecutive centres (32; one in the fused BP-NN pass, see kFusedBlock): a weight
// matrix is read once per block instead of once per atom.
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
#include <type_traits>

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

// A layer's weights in the precision T of an evaluation: the model's own (double) or float
// copies (EvaluatorOptions::single_precision). fwd and bwd are packed for gemm_accumulate.
template <class T>
struct LayerView {
  int n_in = 0, n_out = 0;
  const T* fwd = nullptr;
  const T* bwd = nullptr;
  const T* b = nullptr;
};

// Float copies of layers (the views point into them), packed for float (strips of 16 values).
struct FloatLayer {
  std::vector<float> fwd, bwd, b;
  explicit FloatLayer(const Layer& l) : b(l.b.begin(), l.b.end()) {
    std::vector<float> W(l.W.begin(), l.W.end()), WT(W.size());
    for (int o = 0; o < l.n_out; ++o)
      for (int k = 0; k < l.n_in; ++k) WT[static_cast<size_t>(k) * l.n_out + o] = W[static_cast<size_t>(o) * l.n_in + k];
    pack_b(l.n_in, l.n_out, WT.data(), l.n_out, fwd);
    pack_b(l.n_out, l.n_in, W.data(), l.n_in, bwd);
  }
};

LayerView<double> view_of(const Layer& l) { return {l.n_in, l.n_out, l.fwd.data(), l.bwd.data(), l.b.data()}; }
LayerView<float> view_of(const Layer& l, const FloatLayer& f) {
  return {l.n_in, l.n_out, f.fwd.data(), f.bwd.data(), f.b.data()};
}

// One element's layer of the uncertainty gradient's direction B_l = R1^T diag(c) [R2 | r] / sqrt(k)
// (c = v_l): rank k, so a product with B is two thin products through k values per atom.
template <class T>
struct Factors {
  int k = 0, n_in = 0, n_out = 0;
  std::vector<T> r2t;   // R2 without its bias column, transposed, packed (n_in x k)
  std::vector<T> r1;    // R1 packed (k x n_out)
  std::vector<T> r1t;   // R1^T packed (n_out x k)
  std::vector<T> r2;    // R2 without its bias column, packed (k x n_in)
  std::vector<T> bias;  // the bias column r (k)
  std::vector<T> c;     // v_l / sqrt(k) of the current evaluation (k)

  Factors(const Sketch& s, int k_, int n_in_, int n_out_) : k(k_), n_in(n_in_), n_out(n_out_), bias(k_), c(k_) {
    std::vector<T> R1(s.R1.begin(), s.R1.end()), R2(static_cast<size_t>(k) * n_in), R1T(R1.size()), R2T(R2.size());
    for (int p = 0; p < k; ++p) {
      bias[p] = static_cast<T>(s.R2[static_cast<size_t>(p) * (n_in + 1) + n_in]);
      for (int i = 0; i < n_in; ++i) {
        R2[static_cast<size_t>(p) * n_in + i] = static_cast<T>(s.R2[static_cast<size_t>(p) * (n_in + 1) + i]);
        R2T[static_cast<size_t>(i) * k + p] = R2[static_cast<size_t>(p) * n_in + i];
      }
      for (int o = 0; o < n_out; ++o) R1T[static_cast<size_t>(o) * k + p] = R1[static_cast<size_t>(p) * n_out + o];
    }
    pack_b(n_in, k, R2T.data(), k, r2t);
    pack_b(k, n_out, R1.data(), n_out, r1);
    pack_b(n_out, k, R1T.data(), k, r1t);
    pack_b(k, n_in, R2.data(), n_in, r2);
  }
};

// Per-thread scratch for the network passes of a block of up to `rows` atoms of one element:
// per layer a [rows][width] matrix (width = the widest layer).
template <class T>
struct Batch {
  int rows = 0, width = 0;
  std::vector<T> h, z, d1, d2, g, gh;  // h: L + 1 layers, the others L; gh_l = W_l^T g_l
  std::vector<T> hdot, zdot, gdot;     // tangents (gradient-feature uncertainty gradient)
  std::vector<T> ghdot;                // one layer
  std::vector<T> t;                    // [rows][k]: the k values through a low-rank direction
  std::vector<double> sketch, wide;    // batch_sketch's scratch

  void resize(int n_layers, int max_width, int max_rows, int k) {
    t.resize(std::max(t.size(), static_cast<size_t>(std::max(rows, max_rows)) * k));
    if (rows >= max_rows && width >= max_width) return;
    rows = std::max(rows, max_rows);
    width = std::max(width, max_width);
    const size_t layer = static_cast<size_t>(rows) * width;
    h.resize((n_layers + 1) * layer);
    hdot.resize((n_layers + 1) * layer);
    for (auto* v : {&z, &d1, &d2, &g, &gh, &zdot, &gdot}) v->resize(n_layers * layer);
    ghdot.resize(layer);
  }
  size_t at(int l) const { return static_cast<size_t>(l) * rows * width; }
  T* H(int l) { return &h[at(l)]; }
  T* Z(int l) { return &z[at(l)]; }
  T* D1(int l) { return &d1[at(l)]; }
  T* D2(int l) { return &d2[at(l)]; }
  T* Gr(int l) { return &g[at(l)]; }
  T* GH(int l) { return &gh[at(l)]; }
  T* Hdot(int l) { return &hdot[at(l)]; }
  T* Zdot(int l) { return &zdot[at(l)]; }
  T* Gdot(int l) { return &gdot[at(l)]; }
};

// Rows 0..n-1 of a [rows][width] matrix C (n_out columns) set to the bias b (or 0).
template <class T>
void fill_rows(T* C, int width, int n, int n_out, const T* b) {
  for (int r = 0; r < n; ++r) {
    T* c = C + static_cast<size_t>(r) * width;
    if (b)
      std::copy(b, b + n_out, c);
    else
      std::fill(c, c + n_out, T(0));
  }
}

// act, act' and (d2 non-null) act'' of one row of n pre-activations (activation_rows, in double
// whatever T: float32 rows go through a small widened copy).
template <class T>
void activate(Activation kind, int n, const T* z, T* h, T* d1, T* d2) {
  if constexpr (std::is_same_v<T, double>) {
    activation_rows(kind, n, z, h, d1, d2);
  } else {
    constexpr int chunk = 64;
    double zw[chunk], hw[chunk], d1w[chunk], d2w[chunk];
    for (int a = 0; a < n; a += chunk) {
      const int m = std::min(chunk, n - a);
      std::copy(z + a, z + a + m, zw);
      activation_rows(kind, m, zw, hw, d1w, d2 ? d2w : nullptr);
      std::copy(hw, hw + m, h + a);
      std::copy(d1w, d1w + m, d1 + a);
      if (d2) std::copy(d2w, d2w + m, d2 + a);
    }
  }
}

// Forward pass of one network for n atoms of its element, whose descriptors start at G[r]:
// fills h, z, act' (and act'' with `second`). The raw outputs are Z(L-1)[r * width].
template <class T>
void batch_forward(const ModelData& d, const LayerView<T>* net, int element, int n, const double* const* G,
                   Batch<T>& ws, bool second) {
  const double* mean = d.mean[element].data();
  const double* inv_std = d.inv_std[element].data();
  const int W = ws.width, L = d.n_layers;
  for (int r = 0; r < n; ++r) {
    T* h0 = ws.H(0) + static_cast<size_t>(r) * W;
    for (int f = 0; f < d.n_features; ++f) h0[f] = static_cast<T>((G[r][f] - mean[f]) * inv_std[f]);
  }
  for (int l = 0; l < L; ++l) {
    const LayerView<T>& layer = net[l];
    T* z = ws.Z(l);
    fill_rows(z, W, n, layer.n_out, layer.b);
    gemm_accumulate(n, layer.n_out, layer.n_in, ws.H(l), W, layer.fwd, z, W);
    if (l == L - 1) break;
    for (int r = 0; r < n; ++r) {
      const size_t row = static_cast<size_t>(r) * W;
      activate(d.activation, layer.n_out, z + row, ws.H(l + 1) + row, ws.D1(l) + row,
               second ? ws.D2(l) + row : nullptr);
    }
  }
}

// Backward pass after batch_forward: delta_l = dE_r/dz_l into ws.g (E = scale z_L + shift),
// W_l^T delta_l into ws.gh, and dE_r/dG into dEdG[r].
template <class T>
void batch_backward(const ModelData& d, const LayerView<T>* net, int element, double scale, int n, Batch<T>& ws,
                    double* const* dEdG) {
  const int W = ws.width, L = d.n_layers;
  for (int r = 0; r < n; ++r) ws.Gr(L - 1)[static_cast<size_t>(r) * W] = static_cast<T>(scale);
  for (int l = L - 1; l >= 0; --l) {
    const LayerView<T>& layer = net[l];
    fill_rows<T>(ws.GH(l), W, n, layer.n_in, nullptr);
    gemm_accumulate(n, layer.n_in, layer.n_out, ws.Gr(l), W, layer.bwd, ws.GH(l), W);
    if (l == 0) break;
    for (int r = 0; r < n; ++r) {
      const size_t row = static_cast<size_t>(r) * W;
      const T *d1 = ws.D1(l - 1) + row, *gh = ws.GH(l) + row;
      T* g = ws.Gr(l - 1) + row;
      for (int k = 0; k < layer.n_in; ++k) g[k] = d1[k] * gh[k];
    }
  }
  const double* inv_std = d.inv_std[element].data();
  for (int r = 0; r < n; ++r) {
    const T* gh = ws.GH(0) + static_cast<size_t>(r) * W;
    for (int f = 0; f < d.n_features; ++f) dEdG[r][f] = gh[f] * inv_std[f];
  }
}

// What the tangent pass needs of member 0's passes, kept per centre across the global reduction
// instead of running the network forward and backward again: for every hidden layer l its
// pre-activation z_l and W_(l+1)^T delta_(l+1); the activations, act', act'' and the deltas follow
// from them elementwise. 2 (L - 1) rows of the widest hidden layer (GM-NN 512: 16 kB in float64).
inline int kept_width(const ModelData& d) {
  int w = 0;
  for (const Network& net : d.members[0].networks)
    for (int l = 0; l + 1 < d.n_layers; ++l) w = std::max(w, net.layers[l].n_out);
  return w;
}
inline int kept_size(const ModelData& d) { return 2 * (d.n_layers - 1) * kept_width(d); }

template <class T>
void keep_passes(const ModelData& d, const LayerView<T>* net, Batch<T>& ws, int n, T* const* out) {
  const int W = ws.width, L = d.n_layers, w = kept_width(d);
  for (int r = 0; r < n; ++r) {
    const size_t row = static_cast<size_t>(r) * W;
    for (int l = 0; l + 1 < L; ++l) {
      const int n_out = net[l].n_out;
      std::copy(ws.Z(l) + row, ws.Z(l) + row + n_out, out[r] + static_cast<size_t>(l) * w);
      std::copy(ws.GH(l + 1) + row, ws.GH(l + 1) + row + n_out, out[r] + static_cast<size_t>(L - 1 + l) * w);
    }
  }
}

// The inverse of keep_passes: fills h (with the descriptors G[r]), act', act'' and the deltas of the
// hidden layers as batch_forward (with `second`) and batch_backward left them; gh stays in `kept`.
template <class T>
void restore_passes(const ModelData& d, const LayerView<T>* net, int element, double scale, int n,
                    const double* const* G, const T* const* kept, Batch<T>& ws) {
  const double* mean = d.mean[element].data();
  const double* inv_std = d.inv_std[element].data();
  const int W = ws.width, L = d.n_layers, w = kept_width(d);
  for (int r = 0; r < n; ++r) {
    const size_t row = static_cast<size_t>(r) * W;
    T* h0 = ws.H(0) + row;
    for (int f = 0; f < d.n_features; ++f) h0[f] = static_cast<T>((G[r][f] - mean[f]) * inv_std[f]);
    for (int l = 0; l + 1 < L; ++l) {
      const int n_out = net[l].n_out;
      const T* z = kept[r] + static_cast<size_t>(l) * w;
      const T* gh = kept[r] + static_cast<size_t>(L - 1 + l) * w;
      T *h = ws.H(l + 1) + row, *d1 = ws.D1(l) + row, *d2 = ws.D2(l) + row, *g = ws.Gr(l) + row;
      activate(d.activation, n_out, z, h, d1, d2);
      for (int o = 0; o < n_out; ++o) g[o] = d1[o] * gh[o];
    }
    ws.Gr(L - 1)[row] = static_cast<T>(scale);
  }
}

// The sketched gradient features of the n rows of a batch (each into its element's block at
// phi[r], L * k entries), from the deltas and layer inputs of member 0's passes in ws: per layer
// (R1 delta_l) * (R2 [a_l; 1]) / sqrt(k), as two thin matrix products over the rows, in float64
// whatever the networks' precision (float32 rows are widened first): the distance uncertainty
// subtracts nearly equal sums of these features.
template <class T>
void batch_sketch(const ModelData& d, const Factors<double>* F, int n, Batch<T>& ws, double* const* phi) {
  const double inv_sqrt_k = 1.0 / std::sqrt(static_cast<double>(d.k));
  const int W = ws.width, k = d.k;
  auto rows = [&](const T* X, int columns) -> const double* {
    if constexpr (std::is_same_v<T, double>) {
      return X;
    } else {
      ws.wide.resize(static_cast<size_t>(ws.rows) * W);
      for (int r = 0; r < n; ++r) {
        const T* x = X + static_cast<size_t>(r) * W;
        std::copy(x, x + columns, &ws.wide[static_cast<size_t>(r) * W]);
      }
      return ws.wide.data();
    }
  };
  std::vector<double>& xy = ws.sketch;
  xy.resize(2 * static_cast<size_t>(ws.rows) * k);
  double *x = xy.data(), *y = x + static_cast<size_t>(ws.rows) * k;
  for (int l = 0; l < d.n_layers; ++l) {
    const Factors<double>& f = F[l];
    std::fill(x, x + static_cast<size_t>(n) * k, 0.0);
    for (int r = 0; r < n; ++r) std::copy(f.bias.begin(), f.bias.end(), y + static_cast<size_t>(r) * k);
    gemm_accumulate(n, k, f.n_out, rows(ws.Gr(l), f.n_out), W, f.r1t.data(), x, k);
    gemm_accumulate(n, k, f.n_in, rows(ws.H(l), f.n_in), W, f.r2t.data(), y, k);
    for (int r = 0; r < n; ++r)
      for (int p = 0; p < k; ++p) {
        const size_t at = static_cast<size_t>(r) * k + p;
        phi[r][l * k + p] = x[at] * y[at] * inv_sqrt_k;
      }
  }
}

// d/dG of (dE_r/dtheta . B) for member 0 and n atoms of one element: the forward-mode tangent of
// batch_forward and batch_backward along the parameter direction B (its factors F per layer),
// after restore_passes put the primal passes into ws (gh from `kept`). Writes n_sf values to out[r].
template <class T>
void batch_tangent(const ModelData& d, const LayerView<T>* net, const Factors<T>* F, int element, int n,
                   const T* const* kept, Batch<T>& ws, double* const* out) {
  const int W = ws.width, L = d.n_layers, k = d.k, w = kept_width(d);
  T* t = ws.t.data();
  // t = c (R2 x + r) for the rows x of X [n][W] (the k values of B x), or t = c (R1 x) with `back`.
  auto through = [&](const Factors<T>& f, int n_x, const T* X, bool back) {
    std::fill(t, t + static_cast<size_t>(n) * k, T(0));
    gemm_accumulate(n, k, n_x, X, W, back ? f.r1t.data() : f.r2t.data(), t, k);
    for (int r = 0; r < n; ++r)
      for (int p = 0; p < k; ++p) {
        T& x = t[static_cast<size_t>(r) * k + p];
        x = f.c[p] * (back ? x : x + f.bias[p]);
      }
  };
  // Forward tangent: zdot_l = W_l hdot_l + dW_l h_l + db_l, hdot_(l+1) = act'(z_l) zdot_l, hdot_0 = 0.
  for (int l = 0; l < L; ++l) {
    const LayerView<T>& layer = net[l];
    T* zdot = ws.Zdot(l);
    fill_rows<T>(zdot, W, n, layer.n_out, nullptr);
    through(F[l], layer.n_in, ws.H(l), false);
    gemm_accumulate(n, layer.n_out, k, t, k, F[l].r1.data(), zdot, W);
    if (l > 0) gemm_accumulate(n, layer.n_out, layer.n_in, ws.Hdot(l), W, layer.fwd, zdot, W);
    if (l == L - 1) break;
    for (int r = 0; r < n; ++r) {
      const size_t row = static_cast<size_t>(r) * W;
      const T *d1 = ws.D1(l) + row, *zr = zdot + row;
      T* hnext = ws.Hdot(l + 1) + row;
      for (int o = 0; o < layer.n_out; ++o) hnext[o] = d1[o] * zr[o];
    }
  }
  // The tangent of the backward pass (gh = W^T g and g_(l-1) = act' gh are the primal's):
  // ghdot = W^T gdot + dW^T g, gdot_(l-1) = act'' zdot gh + act' ghdot; the output scale is fixed.
  for (int r = 0; r < n; ++r) ws.Gdot(L - 1)[static_cast<size_t>(r) * W] = T(0);
  for (int l = L - 1; l >= 0; --l) {
    const LayerView<T>& layer = net[l];
    fill_rows<T>(ws.ghdot.data(), W, n, layer.n_in, nullptr);
    if (l < L - 1) gemm_accumulate(n, layer.n_in, layer.n_out, ws.Gdot(l), W, layer.bwd, ws.ghdot.data(), W);
    through(F[l], layer.n_out, ws.Gr(l), true);
    gemm_accumulate(n, layer.n_in, k, t, k, F[l].r2.data(), ws.ghdot.data(), W);
    if (l == 0) break;
    for (int r = 0; r < n; ++r) {
      const size_t row = static_cast<size_t>(r) * W;
      const T *d1 = ws.D1(l - 1) + row, *d2 = ws.D2(l - 1) + row, *zdot = ws.Zdot(l - 1) + row;
      const T *gh = kept[r] + static_cast<size_t>(L - 2 + l) * w, *ghdot = ws.ghdot.data() + row;
      T* gdot = ws.Gdot(l - 1) + row;
      for (int j = 0; j < layer.n_in; ++j) gdot[j] = d2[j] * zdot[j] * gh[j] + d1[j] * ghdot[j];
    }
  }
  const double* inv_std = d.inv_std[element].data();
  for (int r = 0; r < n; ++r) {
    const T* ghdot = ws.ghdot.data() + static_cast<size_t>(r) * W;
    for (int f = 0; f < d.n_features; ++f) out[r][f] = ghdot[f] * inv_std[f];
  }
}

// Centres per block of network products (GM-NN and the tangent passes), and per block of the
// fused BP-NN pass, whose centres each keep their recorded geometry (~250 kB at 6 A) from values
// to contraction: in LAMMPS (2,592 SiO2 atoms, 52-30-30-1) blocks of 8 cost 4-9 % more than
// single centres, as 8 recorded neighbourhoods overflow L2 while the networks are ~3 us of ~120
// per atom (benchmarks/RESULTS.md, "Batched networks"); so one centre at a time.
constexpr int kBlock = 32;
constexpr int kFusedBlock = 1;

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
  std::vector<double> moments;    // a GM-NN's moments [n_centers][moments_size()], for its vjp
  std::vector<double> member_E;   // [n_centers][M] atomic energies
  std::vector<double> phi;        // [n_centers][L k] own-element block of the sketched features
  std::vector<double> atom_u;     // [n_centers] U_i of posterior and distance
  std::vector<double> sums;

  std::vector<double> v;                      // [K]
  int n_energy_rows = 1;            // pair-gradient rows of forward(): 1 (the mean) or M
  std::vector<double> pair_grad;    // [n_energy_rows][n_pairs][3] dE/dD_p of forward()
  std::vector<double> u_pair_grad;  // [n_pairs][3] dU/dD_p
  // The energy rows [n_energy_rows][n_centers][descriptor_width] for a GM-NN's vjp after the
  // loop over centres, or (deferred) for backward(), with one more row for dU/dG.
  std::vector<double> dEdG;
  bool deferred = false;
  std::vector<SymmetryFunctions::CentreWorkspace> sf_workspaces;  // [thread][slot of the block]
  std::vector<std::vector<double>> dE_rows;  // per thread [block slot][M + 1][n_sf]: dE_m/dG_i, then the mean

  // The networks in the evaluation's precision, [member][element][layer], and the factors of
  // the uncertainty gradient's direction B, [element][layer]; float copies only when
  // single_precision.
  std::vector<LayerView<double>> nets64;
  std::vector<FloatLayer> float_layers;
  std::vector<LayerView<float>> nets32;
  std::vector<Factors<double>> dir64;
  std::vector<Factors<float>> dir32;
  std::vector<Batch<double>> batches64;
  std::vector<Batch<float>> batches32;
  // Member 0's passes per centre (keep_passes), from forward() to the tangents of backward().
  std::vector<double> kept64;
  std::vector<float> kept32;

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
  void prepare_networks();
  void forward_atoms();
  template <class T>
  void forward_atoms_in();
  template <class T>
  void tangents_in(double* dUdG);
  double uncertainty(const double* global, std::vector<double>& member_energies);

  template <class T>
  const LayerView<T>* net(int m, int e) const {
    const size_t at = (static_cast<size_t>(m) * d->n_elements() + e) * d->n_layers;
    if constexpr (std::is_same_v<T, float>)
      return &nets32[at];
    else
      return &nets64[at];
  }
  template <class T>
  std::vector<Factors<T>>& dir_all() {
    if constexpr (std::is_same_v<T, float>)
      return dir32;
    else
      return dir64;
  }
  template <class T>
  std::vector<T>& kept() {
    if constexpr (std::is_same_v<T, float>)
      return kept32;
    else
      return kept64;
  }
  template <class T>
  void ensure_factors();
  template <class T>
  void set_direction();
  template <class T>
  const Factors<T>* dir(int e) const {
    const size_t at = static_cast<size_t>(e) * d->n_layers;
    if constexpr (std::is_same_v<T, float>)
      return &dir32[at];
    else
      return &dir64[at];
  }
  template <class T>
  std::vector<Batch<T>>& batches() {
    if constexpr (std::is_same_v<T, float>)
      return batches32;
    else
      return batches64;
  }

  // Scratch per OpenMP thread, allocated once.
  template <class T>
  void ensure_workspaces() {
    const size_t threads = static_cast<size_t>(max_threads());
    auto& b = batches<T>();
    if (b.size() < threads) b.resize(threads);
    for (auto& ws : b) ws.resize(d->n_layers, d->max_width, kBlock, d->k);
    if (sf_workspaces.size() < threads * kFusedBlock) sf_workspaces.resize(threads * kFusedBlock);
    if (dE_rows.size() < threads) dE_rows.resize(threads);
    for (auto& rows : dE_rows) rows.resize(static_cast<size_t>(kBlock) * (d->n_members() + 1) * d->n_features);
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

void Evaluator::Impl::prepare_networks() {
  const ModelData& md = *d;
  if (nets64.empty()) {
    for (const Member& member : md.members)
      for (const Network& network : member.networks)
        for (const Layer& layer : network.layers) nets64.push_back(view_of(layer));
  }
  if (opt.single_precision && nets32.empty()) {
    float_layers.reserve(nets64.size());
    for (const Member& member : md.members)
      for (const Network& network : member.networks)
        for (const Layer& layer : network.layers) float_layers.emplace_back(layer);
    size_t at = 0;
    for (const Member& member : md.members)
      for (const Network& network : member.networks)
        for (const Layer& layer : network.layers) nets32.push_back(view_of(layer, float_layers[at++]));
  }
}

void Evaluator::Impl::forward_atoms() {
  prepare_networks();
  if (opt.single_precision)
    forward_atoms_in<float>();
  else
    forward_atoms_in<double>();
}

template <class T>
void Evaluator::Impl::forward_atoms_in() {
  const ModelData& md = *d;
  const int64_t n = nb.n_centers;
  const int n_sf = md.n_features, M = md.n_members(), n_el = md.n_elements();
  const bool features = gradient_features();
  const bool atom_u_here = features && opt.atom_uncertainty;
  const int n_phi = md.n_layers * md.k;
  const int64_t K = md.n_sketch;
  const int64_t n_pairs = nb.n_pairs();
  n_energy_rows = member_rows() ? M : 1;
  const bool gm = md.gaussian_moments != nullptr;
  const int n_g = md.descriptor_width();
  const size_t rows_stride = static_cast<size_t>(n) * n_g;
  G.resize(n * n_g);
  member_E.resize(n * M);
  pair_grad.resize(static_cast<size_t>(n_energy_rows) * n_pairs * 3);
  if (features) phi.resize(n * n_phi);
  if (atom_u_here) atom_u.resize(n);

  // With the gradient-feature uncertainty gradient, dU/dG is known only after the global sums
  // and needs a second descriptor vjp: the energy rows wait for it in dEdG (one more row kept
  // for dU/dG), so that backward() contracts both in one traversal.
  deferred = features && opt.uncertainty_gradient;
  if (gm) {
    moments.resize(static_cast<size_t>(n) * md.gaussian_moments->moments_size());
    md.gaussian_moments->compute(nb, G.data(), moments.data());  // checks nb
  } else {
    md.descriptor.check(nb);
  }
  if (gm || deferred) dEdG.assign((n_energy_rows + (deferred ? 1 : 0)) * rows_stride, 0.0);
  ensure_workspaces<T>();
  if (features) ensure_factors<double>();
  const int64_t kept_n = kept_size(md);
  if (deferred) kept<T>().resize(static_cast<size_t>(n) * kept_n);

  const double c_F = md.force_calibration[static_cast<int>(opt.uncertainty)];
  auto atom_uncertainty = [&](int e, const double* p) {
    const int64_t off = md.sketch_offset(e, 0);
    if (opt.uncertainty == Uncertainty::posterior) {
      double q = 0.0;
      for (int a = 0; a < n_phi; ++a) {
        const double* row = &md.precision_atom[(off + a) * K + off];
        double s = 0.0;
        for (int b = 0; b < n_phi; ++b) s += row[b] * p[b];
        q += p[a] * s;
      }
      return c_F * std::sqrt(std::max(q, 0.0));
    }
    double best = INFINITY;
    for (int64_t t = 0; t < md.n_train_atom; ++t) {
      const double* row = &md.train_atom[t * K + off];
      double s = md.train_atom_rest_norm2[e][t];
      for (int a = 0; a < n_phi; ++a) {
        const double x = p[a] - row[a];
        s += x * x;
      }
      best = std::min(best, s);
    }
    return c_F * std::sqrt(best);
  };

  // Fixed blocks of consecutive centres: the networks run as matrix products over the atoms of
  // one element in a block. A BP-NN block is small, as every centre's recorded geometry stays
  // in cache from its values to its contraction (the fused pass). Blocks and the order within
  // them do not depend on the schedule, so neither do the results.
  const int block = gm ? kBlock : kFusedBlock;
  const int64_t n_blocks = (n + block - 1) / block;
  const size_t dE_stride = static_cast<size_t>(M + 1) * n_sf;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bi = 0; bi < n_blocks; ++bi) {
    const int thread = thread_id();
    Batch<T>& ws = batches<T>()[thread];
    SymmetryFunctions::CentreWorkspace* sf_ws = &sf_workspaces[static_cast<size_t>(thread) * kFusedBlock];
    double* dE = dE_rows[thread].data();
    const int64_t i0 = bi * block, i1 = std::min(n, i0 + block);
    for (int64_t i = i0; i < i1; ++i) {
      double* Gi = &G[i * n_g];
      if (handled[i]) {
        if (!gm) md.descriptor.centre_values(nb, i, sf_ws[i - i0], Gi, !deferred);  // deferred: contracted later
        continue;
      }
      std::fill(Gi, Gi + n_g, 0.0);
      for (int r = 0; r < n_energy_rows; ++r)
        for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p)
          std::fill_n(&pair_grad[(static_cast<size_t>(r) * n_pairs + p) * 3], 3, 0.0);
      std::fill(&member_E[i * M], &member_E[i * M] + M, 0.0);
      if (features) std::fill(&phi[i * n_phi], &phi[i * n_phi] + n_phi, 0.0);
      if (atom_u_here) atom_u[i] = 0.0;
    }
    // The networks, element by element, member 0 last so that its deltas and layer inputs are
    // still in ws for the sketch.
    for (int e = 0; e < n_el; ++e) {
      int64_t atoms[kBlock];
      int c = 0;
      for (int64_t i = i0; i < i1; ++i)
        if (handled[i] && nb.species[i] == e) atoms[c++] = i;
      if (c == 0) continue;
      const double* Gr[kBlock];
      double* dEr[kBlock];
      for (int m = M - 1; m >= 0; --m) {
        const Member& member = md.members[m];
        for (int r = 0; r < c; ++r) {
          Gr[r] = &G[atoms[r] * n_g + md.member_block(m)];
          dEr[r] = dE + (atoms[r] - i0) * dE_stride + m * n_sf;
        }
        batch_forward(md, net<T>(m, e), e, c, Gr, ws, false);
        const T* out = ws.Z(md.n_layers - 1);
        for (int r = 0; r < c; ++r)
          member_E[atoms[r] * M + m] = member.energy_scale * static_cast<double>(out[static_cast<size_t>(r) * ws.width]) +
                                       member.energy_shift[e];
        batch_backward(md, net<T>(m, e), e, member.energy_scale, c, ws, dEr);
      }
      if (!features) continue;
      double* phir[kBlock];
      for (int r = 0; r < c; ++r) phir[r] = &phi[atoms[r] * n_phi];
      batch_sketch(md, dir<double>(e), c, ws, phir);
      if (atom_u_here)
        for (int r = 0; r < c; ++r) atom_u[atoms[r]] = atom_uncertainty(e, phir[r]);
      if (!deferred) continue;
      T* keep[kBlock];
      for (int r = 0; r < c; ++r) keep[r] = kept<T>().data() + atoms[r] * kept_n;
      keep_passes(md, net<T>(0, e), ws, c, keep);
    }
    // The energy rows: into the GM-NN's blocks, or contracted with each centre's recorded geometry.
    for (int64_t i = i0; i < i1; ++i) {
      if (!handled[i]) continue;
      double* dEi = dE + (i - i0) * dE_stride;
      if (gm) {
        // Member m's row into its block (the mean row: every block, divided by M); the
        // Gaussian-moment vjp of all centres runs after this loop.
        for (int m = 0; m < M; ++m) {
          double* row = &dEdG[(n_energy_rows == 1 ? 0 : m * rows_stride) + i * n_g + md.member_block(m)];
          const double* dEm = dEi + m * n_sf;
          if (n_energy_rows == 1)
            for (int f = 0; f < n_sf; ++f) row[f] = dEm[f] / M;
          else
            std::copy(dEm, dEm + n_sf, row);
        }
        continue;
      }
      const double* rows = dEi;
      if (n_energy_rows == 1) {  // the mean over members, in row M
        double* mean = dEi + M * n_sf;
        std::fill(mean, mean + n_sf, 0.0);
        for (int m = 0; m < M; ++m)
          for (int f = 0; f < n_sf; ++f) mean[f] += dEi[m * n_sf + f];
        for (int f = 0; f < n_sf; ++f) mean[f] /= M;
        rows = mean;
      }
      if (deferred)
        for (int r = 0; r < n_energy_rows; ++r)
          std::copy(rows + r * n_sf, rows + (r + 1) * n_sf, &dEdG[r * rows_stride + i * n_g]);
      else
        md.descriptor.centre_vjp(nb, i, sf_ws[i - i0], n_energy_rows, rows, pair_grad.data(), 3 * n_pairs);
    }
  }

  if (gm && !deferred && n > 0)
    md.gaussian_moments->vjp(nb, n_energy_rows, dEdG.data(), pair_grad.data(), moments.data());

  // Local sums, serially in atom order.
  sums.assign(M + (features ? K : 0) + 1, 0.0);
  double count = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (!handled[i]) continue;
    for (int m = 0; m < M; ++m) sums[m] += member_E[i * M + m];
    if (features) {
      const int64_t off = md.sketch_offset(static_cast<int>(nb.species[i]), 0);
      for (int a = 0; a < n_phi; ++a) sums[M + off + a] += phi[i * n_phi + a];
    }
    count += 1.0;
  }
  sums.back() = count;
}

// dU/dG_i of every centre (member 0's block of G) into dUdG [n_centers][descriptor_width]: the
// tangent passes, blocked like forward().
template <class T>
void Evaluator::Impl::tangents_in(double* dUdG) {
  const ModelData& md = *d;
  const int64_t n = nb.n_centers;
  const int n_g = md.descriptor_width(), n_el = md.n_elements();
  const int64_t kept_n = kept_size(md);
  ensure_workspaces<T>();
  set_direction<T>();
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bi = 0; bi < n_blocks; ++bi) {
    Batch<T>& ws = batches<T>()[thread_id()];
    const int64_t i0 = bi * kBlock, i1 = std::min(n, i0 + kBlock);
    for (int e = 0; e < n_el; ++e) {
      const double* Gr[kBlock];
      const T* keep[kBlock];
      double* out[kBlock];
      int c = 0;
      for (int64_t i = i0; i < i1; ++i)
        if (handled[i] && nb.species[i] == e) {
          Gr[c] = &G[i * n_g];
          keep[c] = kept<T>().data() + i * kept_n;
          out[c++] = dUdG + i * n_g;
        }
      if (c == 0) continue;
      restore_passes(md, net<T>(0, e), e, md.members[0].energy_scale, c, Gr, keep, ws);
      batch_tangent(md, net<T>(0, e), dir<T>(e), e, c, keep, ws, out);
    }
  }
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

// The factors of B_l = R1_l^T diag(v_l) R2_l / sqrt(k) for every element and layer (member 0's
// shapes): the sketches once, c = v_l / sqrt(k) every evaluation.
template <class T>
void Evaluator::Impl::ensure_factors() {
  const ModelData& md = *d;
  auto& all = dir_all<T>();
  if (all.empty())
    for (int e = 0; e < md.n_elements(); ++e)
      for (int l = 0; l < md.n_layers; ++l) {
        const Layer& layer = md.members[0].networks[e].layers[l];
        all.emplace_back(md.sketches[e][l], md.k, layer.n_in, layer.n_out);
      }
}

template <class T>
void Evaluator::Impl::set_direction() {
  const ModelData& md = *d;
  auto& all = dir_all<T>();
  ensure_factors<T>();
  const double inv_sqrt_k = 1.0 / std::sqrt(static_cast<double>(md.k));
  for (int e = 0; e < md.n_elements(); ++e)
    for (int l = 0; l < md.n_layers; ++l) {
      const double* vl = &v[md.sketch_offset(e, l)];
      Factors<T>& f = all[static_cast<size_t>(e) * md.n_layers + l];
      for (int p = 0; p < md.k; ++p) f.c[p] = static_cast<T>(vl[p] * inv_sqrt_k);
    }
}

// ------------------------------------------------------------------ Evaluator

int evaluator_threads() { return max_threads(); }

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
  if (s.deferred) {
    // The energy rows of forward() and, with a gradient, dU/dG_i in the last row (the features
    // are member 0's: its block of G; a GM-NN's other blocks stay 0), in one descriptor vjp.
    const size_t rows_stride = static_cast<size_t>(n) * md.descriptor_width();
    double* dUdG = &s.dEdG[n_energy_rows * rows_stride];
    if (gradient) {
      std::fill(dUdG, dUdG + rows_stride, 0.0);
      if (opt.single_precision)
        s.tangents_in<float>(dUdG);
      else
        s.tangents_in<double>(dUdG);
    }
    const int rows = n_energy_rows + (gradient ? 1 : 0);
    s.pair_grad.resize(rows * rhs_stride);
    if (n > 0 && md.gaussian_moments)
      md.gaussian_moments->vjp(nb, rows, s.dEdG.data(), s.pair_grad.data(), s.moments.data());
    else if (n > 0)
      md.descriptor.vjp(nb, rows, s.dEdG.data(), s.pair_grad.data());
    if (gradient)
      s.u_pair_grad.assign(s.pair_grad.begin() + n_energy_rows * rhs_stride, s.pair_grad.begin() + rows * rhs_stride);
  } else if (gradient) {
    s.u_pair_grad.assign(rhs_stride, 0.0);
    for (int m = 0; m < M; ++m) {  // the ensemble: dU/dx from the member rows of forward()
      const double* gm = &s.pair_grad[m * rhs_stride];
      for (size_t k = 0; k < rhs_stride; ++k) s.u_pair_grad[k] += s.v[m] * gm[k];
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
