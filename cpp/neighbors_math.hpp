// The cell-list arithmetic of the neighbor search, shared by the C++ loop
// (cpp/neighbors.cpp) and the CUDA kernels (cuda/neighbors.cu).
//
// MLIPBIAS_HD functions run on the host and on the device; the host-only functions at the
// end set up the grid and validate the input. Conventions are those of neighbors.hpp.
//
// The grid: fractional coordinates f = x . cell^-1 along each direction k are cut into
// n_bins[k] bins. Along a periodic direction the bins tile [0, 1) and atoms are wrapped
// into it; along a non-periodic one they tile the range of the atoms' coordinates. If two
// atoms are closer than the cutoff rc, their fractional coordinates differ by less than
// rc |b_k| along k (b_k the reciprocal vector, 1/|b_k| the distance between the faces of
// the cell), so their bins differ by at most search[k] = ceil(rc |b_k| bins_per_unit[k]):
// checking the (2 search + 1)^3 bins around an atom finds every neighbour, in any
// triclinic cell. Bin indices beyond [0, n_bins) wrap to periodic images, which is how a
// cell thinner than the cutoff yields several images of the same atom.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "common.hpp"
#include "neighbors.hpp"

namespace mlipbias {
namespace cell_list {

// Candidates whose distance is computed before any of them is visited.
constexpr int kCandidateBlock = 32;

struct Grid {
  double cell[3][3];           // lattice vectors as rows; non-periodic rows replaced, see make_grid
  double inverse[3][3];        // cell^-1: fractional f_k = sum_c x_c inverse[c][k]
  double origin[3];            // fractional coordinate of the lower face of bin 0
  double bins_per_unit[3];     // bins per unit of fractional coordinate
  int n_bins[3];               // bins along a, b, c
  int search[3];               // bins searched on each side of an atom's bin
  bool periodic[3];
  double cutoff2;              // squared cutoff (A^2)
};

// Atoms sorted by bin, and where each atom went. Host or device pointers.
struct Bins {
  const int* bin_start;  // [n_bins_total + 1]: atoms of bin b are slots [bin_start[b], bin_start[b+1])
  const int* atom;       // [n_atoms] atom index in each slot (ascending within a bin)
  const double* wrapped; // [n_atoms * 3] position of each slot wrapped into the cell (A)
  const int* wrap;       // [n_atoms * 3] cells the atom of each slot was moved by: wrapped = x - wrap . cell
  const int* slot;       // [n_atoms] slot of each atom
  const int* bin;        // [n_atoms] linear bin of each atom
};

MLIPBIAS_HD inline void to_fractional(const Grid& g, const double* x, double* f) {
  for (int k = 0; k < 3; ++k) {
    f[k] = x[0] * g.inverse[0][k] + x[1] * g.inverse[1][k] + x[2] * g.inverse[2][k];
  }
}

// Floor division with a non-negative remainder (Python's divmod): a = q n + r, 0 <= r < n.
MLIPBIAS_HD inline int floor_divmod(int a, int n, int* q) {
  int quotient = a / n;
  int remainder = a - quotient * n;
  if (remainder < 0) {
    remainder += n;
    quotient -= 1;
  }
  *q = quotient;
  return remainder;
}

// Bin of an atom at x. Along periodic directions the atom is first wrapped into the cell:
// wrapped = x - wrap . cell with integer wrap. Returns the linear bin index
// b_a + n_a (b_b + n_b b_c).
MLIPBIAS_HD inline int locate_atom(const Grid& g, const double* x, double* wrapped, int* wrap) {
  double f[3];
  to_fractional(g, x, f);
  int b[3];
  for (int k = 0; k < 3; ++k) {
    double u;
    if (g.periodic[k]) {
      double w = floor(f[k]);
      wrap[k] = static_cast<int>(w);
      u = (f[k] - w) * g.n_bins[k];
    } else {
      wrap[k] = 0;
      u = (f[k] - g.origin[k]) * g.bins_per_unit[k];
    }
    // Rounding can put an atom a hair outside [0, n_bins): it belongs to the edge bin.
    int bk = u > 0.0 ? static_cast<int>(u) : 0;
    b[k] = bk < g.n_bins[k] ? bk : g.n_bins[k] - 1;
  }
  for (int c = 0; c < 3; ++c) {
    wrapped[c] = x[c] - (wrap[0] * g.cell[0][c] + wrap[1] * g.cell[1][c] + wrap[2] * g.cell[2][c]);
  }
  return b[0] + g.n_bins[0] * (b[1] + g.n_bins[1] * b[2]);
}

// Bin `b` along direction k, which may lie outside [0, n_bins): the bin it maps to (-1 when
// it falls outside a non-periodic grid) and the periodic shift that brings it there.
MLIPBIAS_HD inline int neighbor_bin(const Grid& g, int k, int b, int* shift) {
  const int n = g.n_bins[k];
  if (b >= 0 && b < n) {  // the common case, without an integer division
    *shift = 0;
    return b;
  }
  if (g.periodic[k]) return floor_divmod(b, n, shift);
  *shift = 0;
  return -1;
}

// Half lists keep (i, i, S) only for the S whose first non-zero component is positive.
MLIPBIAS_HD inline bool shift_is_positive(const int* s) {
  if (s[0] != 0) return s[0] > 0;
  if (s[1] != 0) return s[1] > 0;
  return s[2] > 0;
}

// Calls visit(j, S, r_ij, d_ij^2) for every neighbour of atom i within the cutoff, in a
// fixed order: bins by increasing offset from the atom's bin (c slowest, a fastest), atoms
// within a bin by increasing index. S and r_ij refer to the positions as given (see neighbors.hpp).
template <class Visitor>
MLIPBIAS_HD inline void visit_neighbors(const Grid& g, const Bins& bins, int i, bool half,
                                        bool self_interaction, Visitor& visit) {
  // Local copies: the visitor's stores could alias g and bins, which would force the
  // compiler to reload them for every candidate.
  const double cutoff2 = g.cutoff2;
  const int* bin_start = bins.bin_start;
  const int* atom = bins.atom;
  const double* wrapped = bins.wrapped;
  const int* wrap = bins.wrap;
  const int slot_i = bins.slot[i];
  const double xi[3] = {wrapped[3 * slot_i], wrapped[3 * slot_i + 1], wrapped[3 * slot_i + 2]};
  const int wrap_i[3] = {wrap[3 * slot_i], wrap[3 * slot_i + 1], wrap[3 * slot_i + 2]};
  const int n_a = g.n_bins[0], n_b = g.n_bins[1];
  const int home_bin = bins.bin[i];
  const int home[3] = {home_bin % n_a, (home_bin / n_a) % n_b, home_bin / (n_a * n_b)};

  for (int oc = -g.search[2]; oc <= g.search[2]; ++oc) {
    int s[3];
    const int bc = neighbor_bin(g, 2, home[2] + oc, &s[2]);
    if (bc < 0) continue;
    for (int ob = -g.search[1]; ob <= g.search[1]; ++ob) {
      const int bb = neighbor_bin(g, 1, home[1] + ob, &s[1]);
      if (bb < 0) continue;
      // Along a, consecutive bins with the same shift hold consecutive slots: scan each
      // such run of bins as one range (fewer loop set-ups than bin by bin).
      int a = home[0] - g.search[0];
      int a_last = home[0] + g.search[0];
      if (!g.periodic[0]) {
        a = a < 0 ? 0 : a;
        a_last = a_last < n_a - 1 ? a_last : n_a - 1;
      }
      while (a <= a_last) {
        const int ba = neighbor_bin(g, 0, a, &s[0]);
        const int run = (a_last - a < n_a - 1 - ba ? a_last - a : n_a - 1 - ba) + 1;
        a += run;
        const int b = ba + n_a * (bb + n_b * bc);
        // r_ij = wrapped_j + s . cell - wrapped_i = wrapped_j + offset
        double offset[3];
        for (int c = 0; c < 3; ++c) {
          offset[c] = s[0] * g.cell[0][c] + s[1] * g.cell[1][c] + s[2] * g.cell[2][c] - xi[c];
        }
        const int end = bin_start[b + run];
        // Distances first, keeping the slots within the cutoff without a branch (whether a
        // candidate is a neighbour is a coin flip the branch predictor cannot learn).
        for (int start = bin_start[b]; start < end; start += kCandidateBlock) {
          const int stop = end - start < kCandidateBlock ? end : start + kCandidateBlock;
          int inside[kCandidateBlock];
          int n_inside = 0;
          for (int slot = start; slot < stop; ++slot) {
            const double r0 = wrapped[3 * slot + 0] + offset[0];
            const double r1 = wrapped[3 * slot + 1] + offset[1];
            const double r2 = wrapped[3 * slot + 2] + offset[2];
            inside[n_inside] = slot;
            n_inside += (r0 * r0 + r1 * r1 + r2 * r2) < cutoff2;
          }
          for (int m = 0; m < n_inside; ++m) {
            const int slot = inside[m];
            const int j = atom[slot];
            if (half && j < i) continue;
            const double r[3] = {wrapped[3 * slot + 0] + offset[0], wrapped[3 * slot + 1] + offset[1],
                                 wrapped[3 * slot + 2] + offset[2]};
            // Shift relative to the positions as given: x_j - wrap_j . cell is where j was
            // binned, x_i - wrap_i . cell where i was.
            int shift[3];
            shift[0] = s[0] + wrap_i[0] - wrap[3 * slot + 0];
            shift[1] = s[1] + wrap_i[1] - wrap[3 * slot + 1];
            shift[2] = s[2] + wrap_i[2] - wrap[3 * slot + 2];
            if (j == i) {
              const bool zero = shift[0] == 0 && shift[1] == 0 && shift[2] == 0;
              if (zero && !self_interaction) continue;
              if (half && !zero && !shift_is_positive(shift)) continue;
            }
            visit(j, shift, r, r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
          }
        }
      }
    }
  }
}

// Visitors of visit_neighbors shared by the CPU and GPU searches: the first pass counts
// each atom's pairs, the second writes them from the atom's offset on.
struct CountPairs {
  int64_t n = 0;
  MLIPBIAS_HD void operator()(int, const int*, const double*, double) { ++n; }
};

struct WritePairs {
  int64_t at;  // index of the next pair
  int64_t i;   // centre atom
  int64_t* first;
  int64_t* second;
  int64_t* shifts;
  double* vectors;
  double* distances;

  MLIPBIAS_HD void operator()(int j, const int* shift, const double* r, double d2) {
    const int64_t k = at++;  // read before the stores, which could alias `at`
    if (first != nullptr) first[k] = i;
    if (second != nullptr) second[k] = j;
    if (shifts != nullptr) {
      for (int c = 0; c < 3; ++c) shifts[3 * k + c] = shift[c];
    }
    if (vectors != nullptr) {
      for (int c = 0; c < 3; ++c) vectors[3 * k + c] = r[c];
    }
    if (distances != nullptr) distances[k] = sqrt(d2);
  }
};

// Running bounds of the atoms' fractional coordinates, and the first non-finite position.
struct Bounds {
  double lo[3] = {HUGE_VAL, HUGE_VAL, HUGE_VAL};
  double hi[3] = {-HUGE_VAL, -HUGE_VAL, -HUGE_VAL};
  int64_t first_bad_atom = -1;  // index of the first atom with a NaN or infinite coordinate
};

MLIPBIAS_HD inline bool is_finite(double x) {
#ifdef __CUDA_ARCH__
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

MLIPBIAS_HD inline bool position_is_finite(const double* x) {
  return is_finite(x[0]) && is_finite(x[1]) && is_finite(x[2]);
}

// ----------------------------------------------------------------- host-only set-up

inline std::string format_number(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.6g", value);
  return text;
}

inline void cross(const double* a, const double* b, double* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}

inline double norm(const double* a) { return std::sqrt(dot3(a, a)); }

// First stage of the set-up, independent of the positions: checks the cutoff and the cell,
// replaces the rows of non-periodic directions by unit vectors orthogonal to the periodic
// ones (the user's values there play no role and may be zero), and inverts the cell.
inline Grid make_grid(const double* cell, const bool* pbc, double cutoff) {
  if (!(cutoff > 0.0) || !std::isfinite(cutoff)) {
    throw Error("cutoff must be a positive finite number of Angstrom, got " + format_number(cutoff));
  }
  for (int e = 0; e < 9; ++e) {
    if (!std::isfinite(cell[e])) throw Error("cell contains a non-finite value (" + format_number(cell[e]) + ")");
  }
  static const char* names[3] = {"a", "b", "c"};
  Grid g{};
  int periodic[3];
  int n_periodic = 0;
  int open[3];
  int n_open = 0;
  for (int k = 0; k < 3; ++k) {
    g.periodic[k] = pbc[k];
    for (int c = 0; c < 3; ++c) g.cell[k][c] = cell[3 * k + c];
    if (pbc[k]) {
      if (norm(g.cell[k]) == 0.0) {
        throw Error(std::string("cell vector ") + names[k] +
                    " has zero length but the cell is periodic along it");
      }
      periodic[n_periodic++] = k;
    } else {
      open[n_open++] = k;
    }
  }
  if (n_periodic == 2) {
    double n[3];
    cross(g.cell[periodic[0]], g.cell[periodic[1]], n);
    const double length = norm(n);
    if (length <= 1e-12 * norm(g.cell[periodic[0]]) * norm(g.cell[periodic[1]])) {
      throw Error(std::string("the cell is singular: periodic cell vectors ") + names[periodic[0]] + " and " +
                  names[periodic[1]] + " are parallel");
    }
    for (int c = 0; c < 3; ++c) g.cell[open[0]][c] = n[c] / length;
  } else if (n_periodic == 1) {
    const double* a = g.cell[periodic[0]];
    // The Cartesian axis least aligned with a gives a well-conditioned orthonormal frame.
    int axis = 0;
    for (int c = 1; c < 3; ++c) {
      if (std::fabs(a[c]) < std::fabs(a[axis])) axis = c;
    }
    double e[3] = {0.0, 0.0, 0.0};
    e[axis] = 1.0;
    double u[3], v[3];
    cross(a, e, u);
    cross(a, u, v);
    const double lu = norm(u), lv = norm(v);
    for (int c = 0; c < 3; ++c) {
      g.cell[open[0]][c] = u[c] / lu;
      g.cell[open[1]][c] = v[c] / lv;
    }
  } else if (n_periodic == 0) {
    for (int k = 0; k < 3; ++k) {
      for (int c = 0; c < 3; ++c) g.cell[k][c] = k == c ? 1.0 : 0.0;
    }
  }
  const double(*m)[3] = g.cell;
  double bc[3], ca[3], ab[3];
  cross(m[1], m[2], bc);
  cross(m[2], m[0], ca);
  cross(m[0], m[1], ab);
  const double det = dot3(m[0], bc);
  if (!(std::fabs(det) > 1e-12 * norm(m[0]) * norm(m[1]) * norm(m[2]))) {
    throw Error("the cell is singular: its periodic vectors are linearly dependent (volume " +
                format_number(det) + " A^3)");
  }
  // inverse[c][k] = (reciprocal vector k)_c: columns are b_a = (b x c)/det, ...
  for (int c = 0; c < 3; ++c) {
    g.inverse[c][0] = bc[c] / det;
    g.inverse[c][1] = ca[c] / det;
    g.inverse[c][2] = ab[c] / det;
  }
  g.cutoff2 = cutoff * cutoff;
  return g;
}

[[noreturn]] inline void throw_non_finite_position(int64_t atom, const double* x) {
  throw Error("position of atom " + std::to_string(atom) + " is not finite (" + format_number(x[0]) + ", " +
              format_number(x[1]) + ", " + format_number(x[2]) + ")");
}

// NeighborOptions::max_neighbors as the largest allowed count (0: no limit); checked before any search.
inline int64_t neighbor_limit(const NeighborOptions& options) {
  if (options.max_neighbors < 0)
    throw Error("max_neighbors must be >= 0 (0: no limit), got " + std::to_string(options.max_neighbors));
  return options.max_neighbors > 0 ? options.max_neighbors : INT64_MAX;
}

// The error of the CPU and CUDA searches for an atom with more pairs than the limit.
[[noreturn]] inline void throw_too_many_neighbors(int64_t atom, int64_t count, int64_t n_atoms,
                                                  const NeighborOptions& options) {
  throw Error("atom " + std::to_string(atom) + " has " + std::to_string(count) + (options.half ? " half-list" : "") +
              " neighbours within the cutoff of " + format_number(options.cutoff) + " A (" +
              std::to_string(n_atoms) + " atoms), more than max_neighbors = " + std::to_string(options.max_neighbors) +
              ": the structure is far denser than matter (atoms on top of each other, or positions not in "
              "Angstrom?) or the cutoff is too large; raise max_neighbors (0: no limit) if it is meant");
}

// Includes one atom's fractional coordinates in the running bounds.
MLIPBIAS_HD inline void extend_bounds(const Grid& g, const double* x, double* lo, double* hi) {
  double f[3];
  to_fractional(g, x, f);
  for (int k = 0; k < 3; ++k) {
    lo[k] = f[k] < lo[k] ? f[k] : lo[k];
    hi[k] = f[k] > hi[k] ? f[k] : hi[k];
  }
}

// Length searched around an atom along one direction with n bins over `extent`.
inline double searched_length(double n, double extent, double cutoff, bool periodic) {
  if (extent <= 0.0) return 0.0;
  const double width = extent / n;
  double span = 2.0 * std::ceil(cutoff / width) + 1.0;
  if (!periodic) span = std::fmin(span, n);
  return span * width;
}

// Number of bins along one direction: bins about as wide as the cutoff (3 bins searched,
// the usual cell list), unless that leaves them much wider than the cutoff, as in cells a
// few cutoffs across; then bins about half as wide (5 bins searched, less volume). Finer
// bins would cost more in loop overhead than they save in distances (measured).
inline double bins_along(double extent, double cutoff, bool periodic) {
  const double coarse = std::fmax(1.0, std::floor(extent / cutoff));
  const double fine = std::fmax(1.0, std::floor(2.0 * extent / cutoff));
  const bool fine_pays = searched_length(fine, extent, cutoff, periodic) <
                         0.75 * searched_length(coarse, extent, cutoff, periodic);
  return fine_pays ? fine : coarse;
}

// Second stage: sizes the bins from the cutoff and the range of the atoms, and checks the
// limits of neighbors.hpp. Needs the bounds over all atoms (none for n_atoms == 0).
inline void finish_grid(Grid& g, const Bounds& bounds, int64_t n_atoms, double cutoff) {
  static const char* names[3] = {"a", "b", "c"};
  double extent[3];  // distance between the outer faces of the grid along k (A)
  double n_bins[3];
  for (int k = 0; k < 3; ++k) {
    const double face_distance =
        1.0 / std::sqrt(g.inverse[0][k] * g.inverse[0][k] + g.inverse[1][k] * g.inverse[1][k] +
                        g.inverse[2][k] * g.inverse[2][k]);
    if (g.periodic[k]) {
      const double far = std::fmax(std::fabs(bounds.lo[k]), std::fabs(bounds.hi[k]));
      if (n_atoms > 0 && !(far < kMaxNeighborWrap)) {
        throw Error(std::string("an atom lies ") + format_number(far) + " cell lengths away along periodic vector " +
                    names[k] + " (limit 2^29); wrap the positions into the cell first");
      }
      g.origin[k] = 0.0;
      extent[k] = face_distance;
    } else {
      const double range = n_atoms > 0 ? bounds.hi[k] - bounds.lo[k] : 0.0;
      if (!std::isfinite(range * face_distance)) {
        throw Error(std::string("the atoms span a non-finite range along non-periodic direction ") + names[k]);
      }
      g.origin[k] = n_atoms > 0 ? bounds.lo[k] : 0.0;
      extent[k] = range * face_distance;
    }
    n_bins[k] = bins_along(extent[k], cutoff, g.periodic[k]);
  }
  // Bins are not worth more than about one per atom: cap the total so the memory and the
  // bin set-up stay O(n_atoms) for sparse systems, keeping the aspect ratio.
  const double max_bins = std::fmax(1.0, static_cast<double>(n_atoms));
  while (n_bins[0] * n_bins[1] * n_bins[2] > max_bins) {
    const double scale = std::cbrt(max_bins / (n_bins[0] * n_bins[1] * n_bins[2]));
    for (int k = 0; k < 3; ++k) n_bins[k] = std::fmax(1.0, std::floor(n_bins[k] * scale));
  }
  double search[3];
  for (int k = 0; k < 3; ++k) {
    g.n_bins[k] = static_cast<int>(n_bins[k]);
    if (g.periodic[k]) {
      g.bins_per_unit[k] = n_bins[k];
      search[k] = std::ceil(cutoff * n_bins[k] / extent[k]);
    } else {
      const double range = extent[k] > 0.0 ? (bounds.hi[k] - bounds.lo[k]) : 0.0;
      g.bins_per_unit[k] = range > 0.0 ? n_bins[k] / range : 0.0;
      // Beyond the grid there is nothing to find along a non-periodic direction.
      search[k] = g.n_bins[k] == 1 ? 0.0 : std::fmin(std::ceil(cutoff * n_bins[k] / extent[k]), n_bins[k] - 1);
    }
  }
  const double stencil = (2 * search[0] + 1) * (2 * search[1] + 1) * (2 * search[2] + 1);
  if (!(stencil <= static_cast<double>(kMaxNeighborSearchBins))) {
    throw Error("cutoff " + format_number(cutoff) + " A is too large for this cell: the search would cover " +
                format_number(2 * search[0] + 1) + " x " + format_number(2 * search[1] + 1) + " x " +
                format_number(2 * search[2] + 1) + " bins or periodic images (limit " +
                std::to_string(kMaxNeighborSearchBins) + "; distances between the cell faces " +
                format_number(extent[0]) + ", " + format_number(extent[1]) + ", " + format_number(extent[2]) +
                " A); use a supercell or a smaller cutoff");
  }
  for (int k = 0; k < 3; ++k) g.search[k] = static_cast<int>(search[k]);
}

}  // namespace cell_list
}  // namespace mlipbias
