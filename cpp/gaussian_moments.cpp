// Gaussian moments: the OpenMP loops over centres around the math of gaussian_moments.hpp.
#include "gaussian_moments.hpp"

#include <algorithm>
#include <string>

namespace mlipbias {

GaussianMoments::GaussianMoments(const GaussianMomentSettings& settings, int64_t n_elements, int n_members,
                                 std::vector<double> beta)
    : s_(settings), n_elements_(n_elements), n_members_(n_members), beta_(std::move(beta)) {
  if (!(s_.cutoff > 0) || !std::isfinite(s_.cutoff))
    throw Error("Gaussian moments: cutoff must be a positive length (A), got " + std::to_string(s_.cutoff));
  if (!(s_.r_min >= 0 && s_.r_min < s_.cutoff))
    throw Error("Gaussian moments: r_min must be in [0, cutoff), got " + std::to_string(s_.r_min));
  if (s_.n_basis < 1 || s_.n_radial < 1 || s_.n_contractions < 1 || s_.n_contractions > 8)
    throw Error("Gaussian moments: n_basis and n_radial must be >= 1 and n_contractions in 1..8");
  if (n_elements < 1 || n_members < 1) throw Error("Gaussian moments: need at least one element and member");
  const size_t expected =
      static_cast<size_t>(n_members) * n_elements * n_elements * s_.n_radial * s_.n_basis;
  if (beta_.size() != expected)
    throw Error("Gaussian moments: beta has " + std::to_string(beta_.size()) + " values, expected " +
                std::to_string(expected));
  n_features_ = gm_n_features(s_);
}

void GaussianMoments::moments(const NeighbourView& nb, int64_t i, int m, double* P) const {
  double R[64], dR[64];
  gm_centre_moments(s_, beta(m, 0, 0), n_elements_, nb.species[i], nb.species, nb.j, nb.D, nb.offsets[i],
                    nb.offsets[i + 1], P, R, dR);
}

void GaussianMoments::check(const NeighbourView& nb) const {
  if (s_.n_radial > 64) throw Error("Gaussian moments: at most 64 radial functions");
  for (int64_t i = 0; i < nb.n_centers; ++i)
    for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) {
      const int64_t j = nb.j[p];
      if (nb.species[i] < 0 || nb.species[i] >= n_elements_ || nb.species[j] < 0 || nb.species[j] >= n_elements_)
        throw Error("Gaussian moments: pair " + std::to_string(p) + " (atoms " + std::to_string(i) + ", " +
                    std::to_string(j) + ") has an element index outside 0.." + std::to_string(n_elements_ - 1));
      if (dot3(nb.D + 3 * p, nb.D + 3 * p) == 0.0)
        throw Error("Gaussian moments: atoms " + std::to_string(i) + " and " + std::to_string(j) +
                    " are at the same position (pair " + std::to_string(p) + ")");
    }
}

void GaussianMoments::compute(const NeighbourView& nb, double* G, double* P) const {
  check(nb);
  const int64_t width = this->width();
  const size_t moment_size = static_cast<size_t>(s_.n_radial) * kMomentSize;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nb.n_centers; ++i)
    for (int m = 0; m < n_members_; ++m) {
      double* Pm = P + (static_cast<size_t>(i) * n_members_ + m) * moment_size;
      moments(nb, i, m, Pm);
      gm_contract(s_, Pm, G + i * width + static_cast<int64_t>(m) * n_features_);
    }
}

void GaussianMoments::vjp(const NeighbourView& nb, int64_t n_rhs, const double* dLdG, double* out,
                          const double* P) const {
  check(nb);
  const int64_t width = this->width(), n_pairs = nb.n_pairs();
  const int n = s_.n_radial;
  const size_t moment_size = static_cast<size_t>(n) * kMomentSize;
#pragma omp parallel
  {
    std::vector<double> dP(moment_size * n_rhs);
    std::vector<int64_t> active;
    std::vector<const double*> rows;
    double R[64], dR[64];
#pragma omp for schedule(static)
    for (int64_t i = 0; i < nb.n_centers; ++i) {
      for (int64_t r = 0; r < n_rhs; ++r)
        std::fill(out + 3 * (r * n_pairs + nb.offsets[i]), out + 3 * (r * n_pairs + nb.offsets[i + 1]), 0.0);
      const int64_t ei = nb.species[i];
      for (int m = 0; m < n_members_; ++m) {
        // dL/dPsi of every right-hand side with a non-zero row for this member (often one
        // member's block only), then one pass over the pairs for all of them.
        active.clear();
        rows.clear();
        for (int64_t r = 0; r < n_rhs; ++r) {
          const double* g = dLdG + (r * nb.n_centers + i) * width + static_cast<int64_t>(m) * n_features_;
          if (std::all_of(g, g + n_features_, [](double x) { return x == 0.0; })) continue;
          active.push_back(r);
          rows.push_back(g);
        }
        if (active.empty()) continue;
        const double* Pm = P + (static_cast<size_t>(i) * n_members_ + m) * moment_size;
        std::fill(dP.begin(), dP.begin() + active.size() * moment_size, 0.0);
        size_t done = 0;
        for (; done + 2 <= active.size(); done += 2) {  // two rows share the products of the moments
          double* d[2] = {&dP[done * moment_size], &dP[(done + 1) * moment_size]};
          gm_contract_backward_rows<2>(s_, Pm, &rows[done], d);
        }
        if (done < active.size()) gm_contract_backward(s_, Pm, rows[done], &dP[done * moment_size]);
        for (int64_t p = nb.offsets[i]; p < nb.offsets[i + 1]; ++p) {
          const double* D = nb.D + 3 * p;
          const double dist = std::sqrt(dot3(D, D));
          if (dist >= s_.cutoff) continue;
          gm_radial(s_, beta(m, ei, nb.species[nb.j[p]]), dist, R, dR);
          for (size_t a = 0; a < active.size(); ++a)
            gm_pair_gradient(n, R, dR, D, dist, &dP[a * moment_size], out + 3 * (active[a] * n_pairs + p));
        }
      }
    }
  }
}

}  // namespace mlipbias
