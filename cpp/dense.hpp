// Dense matrix products for the networks of a block of atoms (plain C++, no BLAS).
//
// C[m][n] += A[m][k] B[k][n], row-major, with B (a weight matrix, constant over a run) packed
// once by pack_b into strips of columns that the kernel streams contiguously. Every element
// of C is accumulated over k in index order, one product at a time, so a row of C is the same
// number whatever m is and wherever the row sits in A: results do not depend on how atoms are
// blocked (threads, MPI ranks), and equal the atom-by-atom matrix-vector products up to the
// fused multiply-adds of the vectorised builds.
#pragma once

#include <vector>

#include "network_math.hpp"

namespace mlipbias {

// B [k][n] with leading dimension ldb -> the packed layout of gemm_accumulate (k * n values).
void pack_b(int k, int n, const double* B, int ldb, std::vector<double>& out);
void pack_b(int k, int n, const float* B, int ldb, std::vector<float>& out);

void gemm_accumulate(int m, int n, int k, const double* A, int lda, const double* packed, double* C, int ldc);
void gemm_accumulate(int m, int n, int k, const float* A, int lda, const float* packed, float* C, int ldc);

// act(z), act'(z) and, with d2 non-null, act''(z) of n pre-activations (activation() of
// network_math.hpp, vectorised with a polynomial exp: within a few ulp of libm).
void activation_rows(Activation kind, int n, const double* z, double* value, double* d1, double* d2);

// The vector width (doubles) of activation_rows: width < 0 asks, 0 picks the CPU's best, 2, 4 or
// 8 ask for that width (capped at the CPU's best, for tests); returns the width in use.
int activation_simd_width(int width = -1);

}  // namespace mlipbias
