// The contents of a loaded model file (private to model.cpp and evaluator.cpp).
//
// Everything is validated by Model::load (model.cpp) before it lands here, so the
// evaluator reads these arrays without further checks. Layouts are row-major.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dense.hpp"
#include "gaussian_moments.hpp"
#include "model.hpp"
#include "network_math.hpp"
#include "symmetry_functions.hpp"

namespace mlipbias {

// Activation and activation() (host and device) are in network_math.hpp.

// One dense layer z = W h + b, with W packed for gemm_accumulate (dense.hpp) twice: for the
// forward products of a block of atoms (Z = H W^T) and the backward ones (dH = G W).
struct Layer {
  int n_in = 0, n_out = 0;
  std::vector<double> W;    // [n_out][n_in]
  std::vector<double> b;    // [n_out]
  std::vector<double> fwd;  // W^T packed
  std::vector<double> bwd;  // W packed

  // Fill fwd and bwd from W (after W, n_in and n_out are set).
  void pack() {
    std::vector<double> WT(W.size());
    for (int o = 0; o < n_out; ++o)
      for (int k = 0; k < n_in; ++k) WT[static_cast<size_t>(k) * n_out + o] = W[static_cast<size_t>(o) * n_in + k];
    pack_b(n_in, n_out, WT.data(), n_out, fwd);
    pack_b(n_out, n_in, W.data(), n_in, bwd);
  }
};

// The network of one element in one ensemble member: layers 1..L (index 0..L-1).
struct Network {
  std::vector<Layer> layers;
};

struct Member {
  std::vector<Network> networks;  // [n_elements]
  double energy_scale = 1.0;      // s
  std::vector<double> energy_shift;  // [n_elements]
};

// Sketch matrices of one element's layer l: R1 [k][n_out], R2 [k][n_in + 1].
struct Sketch {
  std::vector<double> R1, R2;
};

struct ModelData {
  std::string path;
  std::vector<std::string> elements;
  SymmetryFunctions descriptor;
  // GM-NN (descriptor/kind gaussian_moments): its descriptor, which replaces `descriptor`
  // (then a placeholder); G holds one block of n_features per member.
  std::shared_ptr<const GaussianMoments> gaussian_moments;
  int n_features = 0;                     // n_sf
  std::vector<std::vector<double>> mean;  // [n_elements][n_sf]
  std::vector<std::vector<double>> inv_std;
  Activation activation = Activation::tanh;
  int n_layers = 0;
  std::vector<Member> members;
  int max_width = 0;  // largest n_in or n_out of any layer

  // Uncertainty data; `methods` lists what the file declares (uq/methods).
  std::vector<std::string> methods;
  bool has_gradient_features = false;  // posterior or distance listed
  int k = 0;                           // projections per layer
  int n_sketch = 0;                    // K = n_elements * n_layers * k
  std::vector<std::vector<Sketch>> sketches;  // [n_elements][n_layers], member 0's shapes
  std::vector<double> precision_energy;       // [K][K] (posterior)
  std::vector<double> precision_atom;         // [K][K] (posterior)
  int64_t n_train_energy = 0, n_train_atom = 0;
  std::vector<double> train_energy;  // [n_train_energy][K] (distance)
  std::vector<double> train_atom;    // [n_train_atom][K] (distance)
  // Per element e, squared norm of every train_atom row outside element e's block, so a
  // distance needs only the block of the atom's own element.
  std::vector<std::vector<double>> train_atom_rest_norm2;  // [n_elements][n_train_atom]

  // Calibration factors c_E, c_F by Uncertainty (index static_cast<int>(u)); 1 when absent.
  std::array<double, 4> energy_calibration{{1.0, 1.0, 1.0, 1.0}};
  std::array<double, 4> force_calibration{{1.0, 1.0, 1.0, 1.0}};

  explicit ModelData(SymmetryFunctions sf) : descriptor(std::move(sf)) {}

  int n_elements() const { return static_cast<int>(elements.size()); }
  // Descriptor values per centre, and where member m's features start in them.
  int descriptor_width() const { return gaussian_moments ? n_features * n_members() : n_features; }
  int member_block(int m) const { return gaussian_moments ? m * n_features : 0; }
  double cutoff() const { return gaussian_moments ? gaussian_moments->cutoff() : descriptor.cutoff(); }
  int n_members() const { return static_cast<int>(members.size()); }
  // Offset of (element, layer l in 0..L-1) in a K-vector of sketched features.
  int sketch_offset(int element, int layer) const { return (element * n_layers + layer) * k; }
};

}  // namespace mlipbias
