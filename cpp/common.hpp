// Shared conventions of the mlipbias C++ core.
//
// * Units: eV, Angstrom, fs, amu (LAMMPS `units metal`).
// * Arrays are row-major and contiguous: positions (n, 3), cell (3, 3) with the lattice
//   vectors as rows (ASE convention), pair vectors (n_pairs, 3).
// * A pair (i, j) carries the vector r_ij = x_j - x_i + S_ij . cell, pointing from the
//   centre i to the neighbour j (ASE's "D"); S_ij is the integer periodic shift.
// * Functions that compile for the host and for CUDA devices are marked MLIPBIAS_HD and
//   live in headers, so the OpenMP loops in cpp/ and the kernels in cuda/ share the math.
// * Bad input throws mlipbias::Error with a message that names the problem; the Python
//   bindings turn it into ValueError and the LAMMPS plugin into error->all().
#pragma once

#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define MLIPBIAS_HD __host__ __device__
#else
#define MLIPBIAS_HD
#endif

namespace mlipbias {

// Raised for invalid input or configuration; the message is meant for users.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

MLIPBIAS_HD inline double dot3(const double* a, const double* b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

}  // namespace mlipbias
