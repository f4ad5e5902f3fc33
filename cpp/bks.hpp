// BKS silica potential on the CPU: energy, per-atom energies, forces and virial over a half
// pair list. The functional form and the LAMMPS conventions are written out in bks_math.hpp.
//
// Pairs come as plain arrays (see common.hpp): centre i, neighbour j and r_ij = x_j - x_i
// (with the periodic shift), each unordered pair once. A pair of an atom with its own
// periodic image (i == j) is allowed and counted once, like every other pair.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bks_math.hpp"

namespace mlipbias {
namespace bks {

// Parameters of the potential; every value can be changed before make_table().
// Pair arrays are n_types x n_types, row-major and must be symmetric.
struct Parameters {
  std::vector<std::string> names;  // element of each type, for error messages (optional)
  std::vector<double> charges;  // q per type (e)
  std::vector<double> A;        // eV
  std::vector<double> rho;      // A (ignored where A == 0)
  std::vector<double> C;        // eV A^6
  std::vector<double> D;        // eV A^24 (>= 0)
  double cutoff_short = 5.5;    // A, short-range cutoff r_s
  double cutoff_coulomb = 10.0; // A, Coulomb cutoff r_c
  double alpha = 0.2;           // 1/A, Coulomb damping
  double coulomb_constant = 14.399645;  // e^2/(4 pi eps0) in eV A, LAMMPS `units metal` qqr2e
  bool shift_short = true;      // subtract U_short at r_s (LAMMPS pair_modify shift yes)
  Erfc erfc = Erfc::lammps;
};

// Checks the parameters (throws Error naming the bad value) and precomputes the table.
Table make_table(const Parameters& params);

// What compute() returns besides the per-atom arrays.
struct Totals {
  double energy = 0.0;      // eV, pairs plus self energies
  double virial[9] = {0};   // W = sum_pairs r_ij (x) f_j (eV), row-major 3x3; stress = -W / V
  // The closest pair in the list (index into the pair arrays; -1 when there are no pairs)
  // and its distance (A), so callers can refuse overlapping atoms without a second pass.
  int64_t closest_pair = -1;
  double closest_distance = 0.0;
};

// Evaluates the potential. types: n_atoms type indices in [0, n_types); i, j: n_pairs atom
// indices; D: n_pairs x 3 pair vectors. energies (n_atoms) and forces (n_atoms x 3) are
// overwritten when not null; each pair energy is split equally between its two atoms, the
// self energy goes to its atom (as LAMMPS compute pe/atom). Throws Error on out-of-range
// indices. Parallel over pairs with OpenMP when the build has it: num_threads > 0 uses exactly
// that many threads, 0 chooses (OpenMP's maximum, at most one thread per 32768 pairs).
Totals compute(const Table& table, int64_t n_atoms, const int64_t* types, int64_t n_pairs, const int64_t* i,
               const int64_t* j, const double* D, double* energies, double* forces, int num_threads = 0);

}  // namespace bks
}  // namespace mlipbias
