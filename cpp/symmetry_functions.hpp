// Atom-centred symmetry functions (Behler, J. Chem. Phys. 134, 074106 (2011)): radial G2 and
// angular G4, G5 per element (pair) channel with the cosine cutoff, their values, their
// derivatives with respect to every pair vector, and the two contractions a model needs
// (vector-Jacobian product for forces and virial, Jacobian-vector product for force training).
//
// Definitions (docs/model_file.md, "Symmetry functions"): one table row per function,
//   kind, a, b, eta, rs, zeta, lambda, rc
// kind 2, 4 or 5; a, b model element indices of the neighbours (b = -1 for G2); eta in 1/A^2;
// rs and rc in A. With fc(r) = 0.5 (cos(pi r / rc) + 1) for r < rc, else 0:
//   G2 = sum_{j: Z_j = a} exp(-eta (r_ij - rs)^2) fc(r_ij)
//   G4 = 2^(1-zeta) sum_{j<k: {Z_j,Z_k} = {a,b}} (1 + lambda cos theta_ijk)^zeta
//        exp(-eta (r_ij^2 + r_ik^2 + r_jk^2)) fc(r_ij) fc(r_ik) fc(r_jk)
//   G5 = as G4 without r_jk^2 in the exponential and without fc(r_jk)
// Each unordered pair {j, k} of neighbour entries counts once; periodic images are distinct
// neighbours. Unused columns are 0 (rs, zeta, lambda of G2; rs of G4 and G5).
//
// Neighbours come in CSR form by centre (NeighbourView). Every function of a centre depends
// only on that centre's pair vectors D_ij = x_j - x_i (the angular ones through
// r_jk = |D_ik - D_ij|), so all derivatives are taken with respect to the pair vectors:
// dG_i/dD_ij is the derivative with respect to the position of neighbour j, and the centre
// receives minus the sum over its pairs. Forces, the virial and per-atom quantities follow
// from pair gradients by scatter (F_j -= g_ij, F_i += g_ij) and W = -sum_ij D_ij (x) g_ij.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "common.hpp"

namespace mlipbias {

// ------------------------------------------------------------------ per-pair and per-triplet math
// Shared by the OpenMP loops of symmetry_functions.cpp and any CUDA kernel.

constexpr double kPi = 3.14159265358979323846;

// The templates below also run on GCC vector types inside the AVX2 / AVX-512 kernels
// (symmetry_functions_simd.inc); always inlined there, they take the kernel's instruction set.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define MLIPBIAS_SF_INLINE __attribute__((always_inline))
#else
#define MLIPBIAS_SF_INLINE
#endif

// Cosine cutoff fc(r) and dfc/dr; both 0 at and beyond rc.
MLIPBIAS_HD inline void sf_cutoff(double r, double rc, double* fc, double* dfc) {
  if (r >= rc) {
    *fc = 0.0;
    *dfc = 0.0;
    return;
  }
  const double x = kPi / rc;
  *fc = 0.5 * (std::cos(x * r) + 1.0);
  *dfc = -0.5 * x * std::sin(x * r);
}

// One radial function exp(-eta (r - rs)^2) fc(r) given fc and dfc at r; *dg gets d/dr.
MLIPBIAS_HD inline double sf_radial(double eta, double rs, double r, double fc, double dfc, double* dg) {
  const double x = r - rs;
  const double e = std::exp(-eta * x * x);
  *dg = e * (dfc - 2.0 * eta * x * fc);
  return e * fc;
}

// base^n for a small non-negative integer n by binary powering (n = 0 gives 1, also for base 0);
// T is double or a vector of doubles (symmetry_functions_simd.inc).
template <class T>
MLIPBIAS_HD inline MLIPBIAS_SF_INLINE T sf_ipow(T base, int n) {
  T result = base * 0.0 + 1.0;
  while (n > 0) {
    if (n & 1) result *= base;
    base *= base;
    n >>= 1;
  }
  return result;
}

// A(c) and dA/dc from the clamped base 1 + lambda c and its power base^(zeta - 1).
template <class T>
MLIPBIAS_HD inline MLIPBIAS_SF_INLINE T sf_angular_from_power(T base, T pow_m1, double zeta, double lambda,
                                                               double prefactor, T* dA) {
  *dA = prefactor * zeta * lambda * pow_m1;
  return prefactor * pow_m1 * base;
}

// Angular factor A(c) = 2^(1-zeta) (1 + lambda c)^zeta and *dA = dA/dc. `izeta` >= 0 selects
// the integer fast path (zeta == izeta); otherwise std::pow. The base is clamped at 0, which
// only matters for roundoff at exactly collinear triplets.
MLIPBIAS_HD inline double sf_angular(double c, double zeta, int izeta, double lambda, double prefactor,
                                     double* dA) {
  double base = 1.0 + lambda * c;
  if (base < 0.0) base = 0.0;
  const double pow_m1 = izeta >= 1 ? sf_ipow(base, izeta - 1) : std::pow(base, zeta - 1.0);
  return sf_angular_from_power(base, pow_m1, zeta, lambda, prefactor, dA);
}

// Pair-vector gradients of a triplet term f(c, r_ij, r_ik, r_jk), c = cos theta_ijk, from its
// partial derivatives. The gradients are linear combinations of D_ij and D_ik:
//   df/dD_ij = alpha D_ij + beta D_ik,   df/dD_ik = beta D_ij + delta D_ik.
// `f_rjk_over_rjk` is (df/dr_jk) / r_jk (0 for G5). A template so that the SIMD kernels
// (symmetry_functions_simd.inc) run the same formula on vectors of triplets.
template <class T>
MLIPBIAS_HD inline MLIPBIAS_SF_INLINE void sf_triplet_coefficients(T f_c, T f_rij, T f_rik, T f_rjk_over_rjk, T c,
                                                                    T inv_rij, T inv_rik, T* alpha, T* beta,
                                                                    T* delta) {
  const T cross = f_c * inv_rij * inv_rik;
  *alpha = -f_c * c * inv_rij * inv_rij + f_rij * inv_rij + f_rjk_over_rjk;
  *beta = cross - f_rjk_over_rjk;
  *delta = -f_c * c * inv_rik * inv_rik + f_rik * inv_rik + f_rjk_over_rjk;
}

// ------------------------------------------------------------------ neighbour structure

// Pairs in CSR form by centre. Centres are atoms 0 .. n_centers-1; neighbours are any atoms
// 0 .. n_atoms-1 (in LAMMPS local + ghost atoms, in Python real atoms with the periodic shift
// already in D). Pairs beyond the largest cutoff are allowed and ignored; the pairs of centre
// i are offsets[i] .. offsets[i+1]-1, in any order.
struct NeighbourView {
  int64_t n_centers = 0;
  int64_t n_atoms = 0;              // length of species
  const int64_t* species = nullptr;  // [n_atoms] model element index of every atom
  const int64_t* offsets = nullptr;  // [n_centers + 1], offsets[0] = 0, non-decreasing
  const int64_t* j = nullptr;        // [n_pairs] neighbour atom of each pair
  const double* D = nullptr;         // [n_pairs][3] r_ij = x_j - x_i (A)
  int64_t n_pairs() const { return offsets[n_centers]; }
};

// ------------------------------------------------------------------ the descriptor

class SymmetryFunctions {
 public:
  static constexpr int kColumns = 8;  // kind, a, b, eta, rs, zeta, lambda, rc

  // `table` is row-major [n_sf][8]; throws Error naming the row and column of a bad entry.
  SymmetryFunctions(const double* table, int64_t n_sf, int64_t n_elements);

  int64_t n_sf() const { return n_sf_; }
  int64_t n_elements() const { return n_elements_; }
  double cutoff() const { return cutoff_; }  // largest rc of all functions (A)

  // Checks the neighbour structure (offsets, indices, species, zero-length pairs) and throws
  // Error naming the first problem. Every entry point below calls it.
  void check(const NeighbourView& nb) const;

  // G [n_centers][n_sf].
  void compute(const NeighbourView& nb, double* G) const;

  // G [n_centers][n_sf] and dG [n_pairs][n_sf][3] = dG_i/dD_ij for pair (i, j).
  void compute_with_derivatives(const NeighbourView& nb, double* G, double* dG) const;

  // out[r][p] = sum_f dLdG[r][i(p)][f] dG_i(p),f / dD_p for n_rhs right-hand sides:
  // dLdG [n_rhs][n_centers][n_sf] -> out [n_rhs][n_pairs][3]. Per centre: one traversal
  // recording the geometry, then centre_vjp (nothing of size n_pairs x n_sf is stored).
  void vjp(const NeighbourView& nb, int64_t n_rhs, const double* dLdG, double* out) const;

  // ---- the fused pass of one centre (what the evaluator runs per atom, see vjp)
  // Per-thread scratch: the centre's neighbours and radial factors, the angular neighbours in
  // "slots" (sorted by element, each element's run followed by width - 1 zero slots so that
  // vectors of triplets never cross into the next run) and, per block of triplets, what the
  // contraction needs again (cos theta, the r_jk factors, the angular factors and dA/dcos).
  struct CentreWorkspace {
    std::vector<int64_t> pair;   // pair index of each neighbour inside the cutoff
    std::vector<int64_t> z;      // its element
    std::vector<double> d, r, inv_r;  // its vector (3 each), length and 1 / length
    // the scalar traversal of compute_with_derivatives (visit_center):
    std::vector<double> fc, dfc;  // [neighbour][cutoff] cutoff function and derivative
    std::vector<int> angular;     // neighbours inside the angular cutoff (also the kernels' slots)
    std::vector<double> R, dR;    // [neighbour][radial key] exp(-eta r^2) fc(r) and d/dr
    std::vector<double> fc_jk, dfc_jk;  // [cutoff] at r_jk
    std::vector<double> S, dS;    // [radial key] exp(-eta r_jk^2) fc(r_jk), and d/dr_jk divided by r_jk
    std::vector<double> A, dA;    // [shape] angular factor and d/dcos
    // the fused pass (prepare_centre and the SIMD kernels):
    // G2: the neighbours with radial functions in runs by element, each run padded to a multiple
    // of `width` (length beyond every cutoff, 1 / r = 0, index -1)
    std::vector<int64_t> rseg, rnext;  // [element + 1] first entry of each run; fill cursors
    std::vector<double> rr, rinv;      // [run entry] length, 1 / length
    std::vector<int> ridx;             // [run entry] neighbour (-1: padding)
    std::vector<double> radial_dg;     // recorded, per run: [function][run entry] (dG2/dr) / r
    std::vector<double> rrow;          // scratch of the radial contractions
    int width = 0;                  // vector width the slots and the record were laid out for
    int64_t n_slots = 0;
    std::vector<double> sx, sy, sz, sinv;  // [slot] vector and 1 / length (0 in padding slots)
    std::vector<double> sr;          // [slot] length (beyond every cutoff in padding slots)
    std::vector<double> pfc, pdfc;   // [cutoff][run entry] fc, dfc/dr
    std::vector<double> g2;          // [function of an element] its G2 summed over a run
    std::vector<double> sR, sdR;     // [radial key][slot]
    std::vector<int> sidx, selem;    // [slot] neighbour (-1: padding), element
    std::vector<int64_t> seg;        // [element] first slot, end of its real slots
    std::vector<double> triplets;    // recorded: per block of `width` triplets, record_stride() vectors
    bool recorded = false;           // triplets hold every block (centre_values with record)
    std::vector<double> acc;         // vector accumulators of the kernels
    std::vector<double> slot_rows;   // [rhs][3][slot] pair gradients (vjp) or tangents (jvp)
    std::vector<double> wt;          // weights [n_sf][rows of a chunk]
  };

  // G_i (n_sf values, overwritten) of centre i; keeps the geometry in ws for centre_vjp and
  // centre_jvp (record: false keeps one block only, for values that are not contracted: the
  // record is ~300 kB per centre at 6 A). No check(): callers run check(nb) once before their
  // loop over centres.
  void centre_values(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, double* G_i,
                     bool record = true) const;

  // After centre_values(nb, i, ws, ...): out[r * out_stride + 3 p] = sum_f w[r * n_sf + f]
  // dG_if/dD_p for every pair p of centre i (overwritten, 0 beyond the cutoff) and n_rhs weight
  // rows w. The angular functions sharing an element pair, radial factor and kind are
  // contracted as one term per triplet: sum_f w_f A_f(cos) times their common radial part.
  void centre_vjp(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, int64_t n_rhs, const double* w,
                  double* out, int64_t out_stride) const;

  // After centre_values(nb, i, ws, ...): out[r * out_stride + f] = sum_p dG_if/dD_p .
  // t[r * t_stride + 3 p] over the pairs p of centre i, for n_rhs tangent rows (overwritten).
  void centre_jvp(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, int64_t n_rhs, const double* t,
                  int64_t t_stride, double* out, int64_t out_stride) const;

  // Vector width of the triplet kernels: 8 (AVX-512), 4 (AVX2), 2 (SSE2, any x86-64 and other
  // CPUs), chosen once by CPU features. set_simd_width caps it (tests of every path; 0 resets to
  // the CPU's best) and returns the width in use.
  static int simd_width();
  static int set_simd_width(int width);

  // out[r][i][f] = sum_{p of i} dG_if/dD_p . t[r][p]: t [n_rhs][n_pairs][3] ->
  // out [n_rhs][n_centers][n_sf].
  void jvp(const NeighbourView& nb, int64_t n_rhs, const double* t, double* out) const;

 public:
  // The tables of the functions, public for the SIMD kernels (symmetry_functions.cpp).
  struct Radial {
    int64_t f;  // column of G
    double eta, rs;
    int cut;  // index into cutoffs_
  };
  struct Angular {
    int64_t f;
    bool g4;
    int key;    // index into radial_keys_: the (eta, rc) of its radial factors
    int shape;  // index into shapes_: its (zeta, lambda)
  };
  struct RadialKey {  // exp(-eta r^2) fc(r) with the rc of cutoffs_[cut]
    double eta;
    int cut;
    bool at_rjk;  // also needed at r_jk (used by a G4 function)
  };
  struct Shape {
    double zeta, lambda, prefactor;  // prefactor 2^(1 - zeta)
    int izeta;                       // zeta as an integer, or -1
  };
  // Angular functions of one element pair sharing a radial key and kind: their sum weighted
  // by w_f is sum_f w_f A_f(cos) times one radial part.
  struct AngularGroup {
    int key;
    bool g4;
    std::vector<std::pair<int64_t, int>> terms;  // (column f, shape)
  };
  // What the triplet kernels read.
  struct KernelTables {
    int64_t n_elements;
    size_t n_keys, n_shapes, stride;  // stride: record_stride()
    const RadialKey* keys;
    const int* rjk_slot;
    const double* cutoffs;
    const Shape* shapes;
    const std::vector<AngularGroup>* groups_by_pair;
  };

 private:
  KernelTables kernel_tables() const {
    return {n_elements_, radial_keys_.size(), shapes_.size(), record_stride(), radial_keys_.data(),
            rjk_slot_.data(), cutoffs_.data(), shapes_.data(), groups_by_pair_.data()};
  }

  template <class Sink>
  void visit_center(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, Sink& sink) const;
  // The neighbours of centre i in ws, their G2 terms into G_i (when not null), the radial
  // derivatives, the angular radial factors and the slots for vectors of `width`.
  void prepare_centre(const NeighbourView& nb, int64_t i, CentreWorkspace& ws, double* G_i, int width) const;
  // Doubles per recorded triplet: cos theta, S and dS of each key at r_jk, A and dA of each shape.
  size_t record_stride() const { return 1 + 2 * static_cast<size_t>(n_rjk_keys_) + 2 * shapes_.size(); }

  int64_t n_sf_ = 0;
  int64_t n_elements_ = 0;
  double cutoff_ = 0.0;          // largest rc
  double angular_cutoff_ = 0.0;  // largest rc of the angular functions (0 if none)
  std::vector<double> cutoffs_;  // distinct rc values
  std::vector<RadialKey> radial_keys_;  // distinct (eta, rc) of the angular functions
  std::vector<Shape> shapes_;           // distinct (zeta, lambda)
  std::vector<std::vector<Radial>> radial_by_element_;  // [n_elements]
  std::vector<int> radial_cuts_;                        // the cutoffs (indices) of the G2 functions
  std::vector<std::vector<Angular>> angular_by_pair_;   // [n_elements * n_elements], symmetric
  std::vector<std::vector<AngularGroup>> groups_by_pair_;  // the same functions by (key, kind)
  std::vector<int> rjk_slot_;  // [radial key] its slot in a recorded triplet (keys at r_jk), or -1
  int n_rjk_keys_ = 0;
};

}  // namespace mlipbias
