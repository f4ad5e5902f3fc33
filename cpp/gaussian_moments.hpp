// Gaussian moments of GM-NN (Zaverkin & Kastner, JCTC 2020 and 2021; seed 002 Eqs. 11-13).
// The descriptor class (OpenMP loops over centres); the math is in gaussian_moments_math.hpp.
#pragma once

#include <cstdint>
#include <vector>

#include "common.hpp"
#include "gaussian_moments_math.hpp"
#include "symmetry_functions.hpp"

namespace mlipbias {

class GaussianMoments {
 public:
  // beta: [n_members][n_elements][n_elements][n_radial][n_basis] (centre element first).
  GaussianMoments(const GaussianMomentSettings& settings, int64_t n_elements, int n_members,
                  std::vector<double> beta);

  const GaussianMomentSettings& settings() const { return s_; }
  double cutoff() const { return s_.cutoff; }
  int n_features() const { return n_features_; }  // per member
  int n_members() const { return n_members_; }
  int64_t width() const { return static_cast<int64_t>(n_members_) * n_features_; }  // per centre
  int64_t n_elements() const { return n_elements_; }
  const std::vector<double>& beta_values() const { return beta_; }  // the layout of the constructor

  // Throws Error for a pair with an element index out of range or of length 0.
  void check(const NeighbourView& nb) const;

  // Moments per centre: n_members * n_radial * kMomentSize values (1.6 kB per member by default).
  int64_t moments_size() const { return static_cast<int64_t>(n_members_) * s_.n_radial * kMomentSize; }

  // G [n_centers][n_members][n_features] and the moments P [n_centers][moments_size()], kept for vjp().
  void compute(const NeighbourView& nb, double* G, double* P) const;

  // out[r][p] = sum_(m,f) dLdG[r][i(p)][m][f] dG_i(p),m,f / dD_p: dLdG [n_rhs][n_centers][width]
  // -> out [n_rhs][n_pairs][3], with the moments P of compute() for the same neighbours (nothing per
  // pair is stored).
  void vjp(const NeighbourView& nb, int64_t n_rhs, const double* dLdG, double* out, const double* P) const;

 private:
  const double* beta(int m, int64_t ei, int64_t ej) const {
    return &beta_[((static_cast<size_t>(m) * n_elements_ + ei) * n_elements_ + ej) * s_.n_radial * s_.n_basis];
  }
  void moments(const NeighbourView& nb, int64_t i, int m, double* P) const;

  GaussianMomentSettings s_;
  int64_t n_elements_ = 0;
  int n_members_ = 0;
  int n_features_ = 0;
  std::vector<double> beta_;
};

}  // namespace mlipbias
