// Cache-blocked C += A B for the networks (dense.hpp).
//
// Blocks of KC inputs keep a strip of B (KC x 64 bytes, packed) in L1 while R rows of A stream
// past it; the R x 64-byte accumulators stay in registers. The build targets any x86-64, so on
// x86-64 with GCC or Clang the kernel is also compiled for AVX2 + FMA and for AVX-512 and the
// first call picks what the CPU runs (by its features: a VM's CPU model name says nothing).
// The explicit vector types are there because GCC's own vectoriser leaves the double kernel
// scalar.
#include "dense.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define MLIPBIAS_X86_DISPATCH 1
#endif

namespace mlipbias {

namespace {

constexpr int kStrip = 64;  // bytes of a packed strip row: 8 doubles or 16 floats
constexpr int KC = 256;     // inputs per block: a strip of B of KC x 64 bytes stays in L1

template <class T, int Bytes>
struct VecOf;
#define MLIPBIAS_VEC(T, BYTES)                                           \
  template <>                                                            \
  struct VecOf<T, BYTES> {                                               \
    typedef T type __attribute__((vector_size(BYTES)));                  \
  };
MLIPBIAS_VEC(double, 16)
MLIPBIAS_VEC(double, 32)
MLIPBIAS_VEC(double, 64)
MLIPBIAS_VEC(float, 16)
MLIPBIAS_VEC(float, 32)
MLIPBIAS_VEC(float, 64)
#undef MLIPBIAS_VEC

// R rows of C times one strip (NR = 64 / sizeof(T) columns) over inputs p0..p1.
template <class T, int Bytes, int R>
inline __attribute__((always_inline)) void micro(const T* A, int lda, const T* B, T* C, int ldc, int p0, int p1) {
  using V = typename VecOf<T, Bytes>::type;
  constexpr int lanes = Bytes / sizeof(T), NV = kStrip / Bytes, NR = kStrip / sizeof(T);
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(&acc[r][v], C + r * ldc + v * lanes, Bytes);
  for (int p = p0; p < p1; ++p) {
    V b[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], B + static_cast<long>(p) * NR + v * lanes, Bytes);
    for (int r = 0; r < R; ++r) {
      const T a = A[r * lda + p];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) std::memcpy(C + r * ldc + v * lanes, &acc[r][v], Bytes);
}

// Columns left over after the strips (packed [k][rest]): a row at a time, in input order.
template <class T>
inline __attribute__((always_inline)) void edge(int m, int rest, const T* A, int lda, const T* B, T* C, int ldc,
                                                int p0, int p1) {
  for (int r = 0; r < m; ++r) {
    T* c = C + static_cast<long>(r) * ldc;
    const T* a = A + static_cast<long>(r) * lda;
    for (int p = p0; p < p1; ++p) {
      const T ap = a[p];
      const T* b = B + static_cast<long>(p) * rest;
      for (int j = 0; j < rest; ++j) c[j] += ap * b[j];
    }
  }
}

template <class T, int Bytes, int R>
inline __attribute__((always_inline)) void gemm(int m, int n, int k, const T* A, int lda, const T* packed, T* C,
                                                int ldc) {
  constexpr int NR = kStrip / sizeof(T);
  const int n_strips = n / NR, rest = n - n_strips * NR;
  const T* edge_b = packed + static_cast<long>(n_strips) * k * NR;
  for (int p0 = 0; p0 < k; p0 += KC) {
    const int p1 = std::min(k, p0 + KC);
    for (int s = 0; s < n_strips; ++s) {
      const T* strip = packed + static_cast<long>(s) * k * NR;
      T* Cj = C + s * NR;
      int i = 0;
      for (; i + R <= m; i += R)
        micro<T, Bytes, R>(A + static_cast<long>(i) * lda, lda, strip, Cj + static_cast<long>(i) * ldc, ldc, p0, p1);
      for (; i < m; ++i)
        micro<T, Bytes, 1>(A + static_cast<long>(i) * lda, lda, strip, Cj + static_cast<long>(i) * ldc, ldc, p0, p1);
    }
    if (rest > 0) edge<T>(m, rest, A, lda, edge_b, C + n_strips * NR, ldc, p0, p1);
  }
}

// Portable build (SSE2 on x86-64): 16-byte vectors, 2 rows (8 accumulator registers of 16).
template <class T>
void gemm_portable(int m, int n, int k, const T* A, int lda, const T* packed, T* C, int ldc) {
  gemm<T, 16, 2>(m, n, k, A, lda, packed, C, ldc);
}

#ifdef MLIPBIAS_X86_DISPATCH
template <class T>
__attribute__((target("avx2,fma"))) void gemm_avx2(int m, int n, int k, const T* A, int lda, const T* packed, T* C,
                                                  int ldc) {
  gemm<T, 32, 4>(m, n, k, A, lda, packed, C, ldc);
}

template <class T>
__attribute__((target("avx512f"))) void gemm_avx512(int m, int n, int k, const T* A, int lda, const T* packed, T* C,
                                                   int ldc) {
  gemm<T, 64, 4>(m, n, k, A, lda, packed, C, ldc);
}

// 2: AVX-512, 1: AVX2 + FMA, 0: portable; decided once.
int x86_level() {
  static const int level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
  }();
  return level;
}
#endif

template <class T>
void dispatch(int m, int n, int k, const T* A, int lda, const T* packed, T* C, int ldc) {
  if (m <= 0 || n <= 0 || k <= 0) return;
#ifdef MLIPBIAS_X86_DISPATCH
  switch (x86_level()) {
    case 2:
      return gemm_avx512<T>(m, n, k, A, lda, packed, C, ldc);
    case 1:
      return gemm_avx2<T>(m, n, k, A, lda, packed, C, ldc);
    default:
      break;
  }
#endif
  gemm_portable<T>(m, n, k, A, lda, packed, C, ldc);
}

template <class T>
void pack(int k, int n, const T* B, int ldb, std::vector<T>& out) {
  constexpr int NR = kStrip / sizeof(T);
  const int n_strips = n / NR, rest = n - n_strips * NR;
  out.resize(static_cast<size_t>(k) * n);
  T* o = out.data();
  for (int s = 0; s < n_strips; ++s)
    for (int p = 0; p < k; ++p)
      for (int c = 0; c < NR; ++c) *o++ = B[static_cast<long>(p) * ldb + s * NR + c];
  for (int p = 0; p < k; ++p)
    for (int c = 0; c < rest; ++c) *o++ = B[static_cast<long>(p) * ldb + n_strips * NR + c];
}

// The activations (activation_simd.inc) for 2 (SSE2), 4 (AVX2 + FMA) and 8 (AVX-512) doubles,
// the wider ones under GCC's target pragma as in symmetry_functions.cpp.
namespace act2 {
constexpr int W = 2;
#include "activation_simd.inc"
}  // namespace act2
#ifdef MLIPBIAS_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace act4 {
constexpr int W = 4;
#include "activation_simd.inc"
}  // namespace act4
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace act8 {
constexpr int W = 8;
#include "activation_simd.inc"
}  // namespace act8
#pragma GCC pop_options
#endif

int best_activation_width() {
#ifdef MLIPBIAS_X86_DISPATCH
  return x86_level() == 2 ? 8 : x86_level() == 1 ? 4 : 2;
#else
  return 2;
#endif
}

std::atomic<int> activation_width{0};  // 0: not chosen yet

}  // namespace

int activation_simd_width(int width) {
  if (width > 0 && width != 2 && width != 4 && width != 8)
    throw Error("activation: the SIMD width must be 0 (the CPU's best), 2, 4 or 8, got " + std::to_string(width));
  const int best = best_activation_width();
  if (width >= 0)
    activation_width.store(width == 0 ? best : std::min(width, best));
  else if (activation_width.load() == 0)
    activation_width.store(best);
  return activation_width.load();
}

void activation_rows(Activation kind, int n, const double* z, double* value, double* d1, double* d2) {
  if (n <= 0) return;
#ifdef MLIPBIAS_X86_DISPATCH
  switch (activation_simd_width()) {
    case 8:
      return act8::activation_rows(kind, n, z, value, d1, d2);
    case 4:
      return act4::activation_rows(kind, n, z, value, d1, d2);
    default:
      break;
  }
#endif
  act2::activation_rows(kind, n, z, value, d1, d2);
}

void pack_b(int k, int n, const double* B, int ldb, std::vector<double>& out) { pack(k, n, B, ldb, out); }
void pack_b(int k, int n, const float* B, int ldb, std::vector<float>& out) { pack(k, n, B, ldb, out); }

void gemm_accumulate(int m, int n, int k, const double* A, int lda, const double* packed, double* C, int ldc) {
  dispatch(m, n, k, A, lda, packed, C, ldc);
}

void gemm_accumulate(int m, int n, int k, const float* A, int lda, const float* packed, float* C, int ldc) {
  dispatch(m, n, k, A, lda, packed, C, ldc);
}

}  // namespace mlipbias
