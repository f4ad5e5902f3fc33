// Pair math of the BKS silica potential, shared by the OpenMP loop (cpp/bks.cpp) and the
// CUDA kernel (cuda/bks.cu).
//
// For a pair of atoms of types a, b at distance r (eV, Angstrom):
//
//   U_ab(r) = U_short(r) + U_coul(r)
//   U_short(r) = A exp(-r/rho) - C/r^6 + D/r^24 - U_short,raw(r_s)      for r < r_s (else 0)
//   U_coul(r)  = k q_a q_b [erfc(alpha r)/r - e_shift - f_shift r]        for r < r_c (else 0)
//   f_shift = -(erfc(alpha r_c)/r_c^2 + 2 alpha/sqrt(pi) exp(-alpha^2 r_c^2)/r_c)
//   e_shift = erfc(alpha r_c)/r_c - f_shift r_c
//
// and for every atom the damped-shifted-force self energy
//
//   U_self,a = -(e_shift/2 + alpha/sqrt(pi)) k q_a^2.
//
// The Coulomb part is LAMMPS `pair_style coul/dsf` (Fennell & Gezelter, J. Chem. Phys. 124,
// 234104 (2006)) term by term, with its self energy as LAMMPS writes it (from this e_shift; a
// constant per atom that moves no force). LAMMPS evaluates erfc(alpha r) inside the pair loop with the
// Abramowitz & Stegun 7.1.26 polynomial (|error| < 1.5e-7) but the shifts with the exact erfc;
// Erfc::lammps reproduces that to the last bits, Erfc::exact uses the exact erfc everywhere
// (forces are then the exact gradient of the energy and the energy is exactly zero at r_c).
// The short-range part is LAMMPS `buck` plus `mie/cut` (24-6) with `pair_modify shift yes`.
#pragma once

#include <cmath>

#include "common.hpp"

namespace mlipbias {
namespace bks {

// Largest number of atom types a table holds (BKS 1990 parametrises Si, O, Al, P).
constexpr int kMaxTypes = 4;

// How erfc(alpha r) is evaluated in the pair loop.
enum class Erfc : int {
  lammps = 0,  // the polynomial of LAMMPS coul/dsf: identical numbers to LAMMPS
  exact = 1,   // the C library erfc: forces are the exact gradient of the energy
};

// Everything the pair loop needs, precomputed on the host by make_table() (cpp/bks.hpp).
// A plain struct: the CUDA kernel receives it by value. Pair arrays are indexed
// a * kMaxTypes + b and are symmetric.
struct Table {
  int n_types;
  int erfc_mode;            // an Erfc value
  double cut_short_sq;      // r_s^2 (A^2)
  double cut_coul_sq;       // r_c^2 (A^2)
  double alpha;             // Coulomb damping (1/A)
  double e_shift;           // erfc(alpha r_c)/r_c - f_shift r_c (1/A)
  double f_shift;           // -(erfc(alpha r_c)/r_c^2 + 2 alpha/sqrt(pi) exp(-alpha^2 r_c^2)/r_c) (1/A^2)
  double qqk[kMaxTypes * kMaxTypes];      // k q_a q_b (eV A)
  double A[kMaxTypes * kMaxTypes];        // eV
  double inv_rho[kMaxTypes * kMaxTypes];  // 1/A
  double C[kMaxTypes * kMaxTypes];        // eV A^6
  double D[kMaxTypes * kMaxTypes];        // eV A^24
  double offset[kMaxTypes * kMaxTypes];   // short-range energy at r_s, subtracted (eV)
  double self_energy[kMaxTypes];          // U_self per atom of each type (eV)
};

constexpr double kSqrtPi = 1.77245385090551602729;

// erfc(x) as LAMMPS coul/dsf computes it, given exp(-x^2) (which the force needs anyway).
MLIPBIAS_HD inline double erfc_polynomial(double x, double exp_minus_x2) {
  const double t = 1.0 / (1.0 + 0.3275911 * x);
  return t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) *
         exp_minus_x2;
}

// Short-range energy A exp(-r/rho) - C/r^6 + D/r^24 before the shift, for make_table().
MLIPBIAS_HD inline double short_range_raw(double A, double inv_rho, double C, double D, double r) {
  const double r2inv = 1.0 / (r * r);
  const double r6inv = r2inv * r2inv * r2inv;
  const double r12inv = r6inv * r6inv;
  return A * exp(-r * inv_rho) - C * r6inv + D * r12inv * r12inv;
}

// Energy of one pair (types a, b) at squared distance rsq; *fpair = -(dU/dr)/r, so the force on
// the neighbour j is fpair * r_ij and the force on the centre i is -fpair * r_ij.
MLIPBIAS_HD inline double pair_energy(const Table& t, int a, int b, double rsq, double* fpair) {
  const int ab = a * kMaxTypes + b;
  const double r2inv = 1.0 / rsq;
  const double r = sqrt(rsq);
  double energy = 0.0;
  double force_r = 0.0;  // -(dU/dr) * r
  if (rsq < t.cut_short_sq) {
    const double r6inv = r2inv * r2inv * r2inv;
    const double r24inv = (r6inv * r6inv) * (r6inv * r6inv);
    const double rexp = t.A[ab] * exp(-r * t.inv_rho[ab]);
    energy += rexp - t.C[ab] * r6inv + t.D[ab] * r24inv - t.offset[ab];
    force_r += rexp * t.inv_rho[ab] * r - 6.0 * t.C[ab] * r6inv + 24.0 * t.D[ab] * r24inv;
  }
  if (rsq < t.cut_coul_sq) {
    const double x = t.alpha * r;
    const double exp_minus_x2 = exp(-x * x);
    const double erfc_x = t.erfc_mode == static_cast<int>(Erfc::lammps) ? erfc_polynomial(x, exp_minus_x2) : erfc(x);
    const double prefactor = t.qqk[ab] / r;
    energy += prefactor * (erfc_x - r * t.e_shift - rsq * t.f_shift);
    force_r += prefactor * (erfc_x + 2.0 * t.alpha / kSqrtPi * exp_minus_x2 * r + rsq * t.f_shift);
  }
  *fpair = force_r * r2inv;
  return energy;
}

}  // namespace bks
}  // namespace mlipbias
