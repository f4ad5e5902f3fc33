// BKS on a CUDA device: the same math as cpp/bks.cpp (bks_math.hpp), launched on device arrays.
#pragma once

#include <cstdint>

#include "bks_math.hpp"

namespace mlipbias {
namespace cuda {

// Evaluates BKS on device `device` in `stream` (a cudaStream_t, nullptr for the default
// stream); every pointer is device memory. types (n_atoms), i, j (n_pairs) are int64, D is
// n_pairs x 3. Results are ADDED to energies (n_atoms), forces (n_atoms x 3), energy (1) and
// virial (9, row-major, W = sum r_ij (x) f_j), so the caller zeroes them first. Indices must be
// in range (the caller checks). Asynchronous: returns after the launches; throws Error
// "no CUDA device: ..." without a usable device and on launch errors.
void bks_compute(const bks::Table& table, int device, void* stream, int64_t n_atoms, const int64_t* types,
                 int64_t n_pairs, const int64_t* i, const int64_t* j, const double* D, double* energies,
                 double* forces, double* energy, double* virial);

}  // namespace cuda
}  // namespace mlipbias
