// The staged GM-NN and BP-NN evaluations (cpp/gmnn_stages.hpp, cpp/bpnn_stages.hpp): on the host
// (the math the CUDA kernels run, tested on every machine) and on a CUDA device (cuda/gmnn.cu,
// cuda/bpnn.cu). mlipbias.gpu.ModelDevice wraps both for ase.Atoms.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "common.hpp"
#include "gmnn_packed.hpp"
#include "model.hpp"
#include "staged_evaluator.hpp"

namespace py = pybind11;

namespace {

using mlipbias_bindings::DoubleArray;
using mlipbias_bindings::IntArray;

py::array_t<double> array(const std::vector<double>& v, std::vector<py::ssize_t> shape) {
  py::array_t<double> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

// Symmetric part of a row-major 3x3, as the C++ evaluator's virials.
py::array_t<double> symmetric(const double* w) {
  py::array_t<double> out({3, 3});
  double* o = out.mutable_data();
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) o[3 * a + b] = 0.5 * (w[3 * a + b] + w[3 * b + a]);
  return out;
}

mlipbias::GmnnOptions make_options(const std::string& uncertainty, bool gradient, std::vector<double> tau) {
  mlipbias::GmnnOptions o;
  if (uncertainty != "none" && uncertainty != "posterior")
    throw mlipbias::Error("the staged (CUDA) evaluation computes uncertainty 'none' or 'posterior', got '" +
                          uncertainty + "'");
  o.posterior = uncertainty == "posterior";
  o.gradient = gradient;
  o.tau = std::move(tau);
  return o;
}

py::dict result_dict(const mlipbias::GmnnResult& r, const mlipbias::GmnnOptions& o, py::ssize_t n_centers,
                     py::ssize_t n_atoms) {
  py::dict out;
  out["energy"] = r.energy;
  out["atom_energies"] = array(r.atom_energies, {n_centers});
  out["forces"] = array(r.forces, {n_atoms, 3});
  out["virial"] = symmetric(r.virial);
  out["member_energies"] = array(r.member_energies, {static_cast<py::ssize_t>(r.member_energies.size())});
  if (o.posterior) out["uncertainty"] = r.uncertainty;
  if (o.gradient) {
    out["uncertainty_gradient"] = array(r.uncertainty_gradient, {n_atoms, 3});
    out["uncertainty_virial"] = symmetric(r.uncertainty_virial);
    out["bias_forces"] = array(r.bias_forces, {n_atoms, 3});
  }
  return out;
}

const char* kDoc =
    "species (n_atoms,) int64 model element index of every atom (no -1); offsets (n_centers + 1,) CSR pair "
    "offsets by centre; j (n_pairs,) neighbour atom; D (n_pairs, 3) r_ij = x_j - x_i (A); uncertainty 'none' "
    "or 'posterior'; gradient: dU/dx, its virial and bias_forces = tau_(Z) dU/dx (tau: one strength per model "
    "element). Returns a dict as ModelEvaluator.evaluate (energy, atom_energies, forces, virial, "
    "member_energies, uncertainty, uncertainty_gradient, uncertainty_virial) plus bias_forces.";

// A packed model (PackedGmnn or PackedBpnn) and its device evaluator.
template <class Packed, class Evaluator>
struct PyDevice {
  std::shared_ptr<Packed> packed;
  std::unique_ptr<Evaluator> evaluator;
  mlipbias::GmnnResult result;
};

template <class Packed, class Evaluator, class Pack>
void bind_device(py::module_& m, const char* name, const char* doc, Pack pack) {
  using Self = PyDevice<Packed, Evaluator>;
  py::class_<Self>(m, name, doc)
      .def(py::init([pack](const mlipbias::Model& model, int device, int64_t max_threads) {
             if (max_threads < 0) throw mlipbias::Error("max_threads must be >= 0 (0: automatic)");
             auto self = std::make_unique<Self>();
             self->packed = std::make_shared<Packed>(pack(model));
             self->evaluator = std::make_unique<Evaluator>(*self->packed, device, max_threads);
             return self;
           }),
           py::arg("model"), py::arg("device") = 0, py::arg("max_threads") = 0,
           "max_threads: threads of a stage at most (each with its scratch of the network rows); 0: 512 per "
           "multiprocessor within a quarter of the free device memory.")
      .def(
          "evaluate",
          [](Self& self, IntArray species, IntArray offsets, IntArray j, DoubleArray D, const std::string& uncertainty,
             bool gradient, std::vector<double> tau) {
            const mlipbias_bindings::Neighbours nb(std::move(species), std::move(offsets), std::move(j),
                                                   std::move(D));
            const mlipbias::GmnnOptions o = make_options(uncertainty, gradient, std::move(tau));
            {
              py::gil_scoped_release release;
              self.evaluator->evaluate(nb.view, o, self.result);
            }
            return result_dict(self.result, o, nb.view.n_centers, nb.view.n_atoms);
          },
          py::arg("species"), py::arg("offsets"), py::arg("j"), py::arg("D"), py::arg("uncertainty") = "none",
          py::arg("gradient") = false, py::arg("tau") = std::vector<double>(),
          (std::string("Copy the neighbours to the device, evaluate, copy the results back. ") + kDoc).c_str())
      .def(
          "time_runs",
          [](Self& self, int repeats) {
            py::gil_scoped_release release;
            return self.evaluator->time_runs(repeats);
          },
          py::arg("repeats"),
          "Seconds for `repeats` more evaluations of the last evaluate()'s input on the device (no copies).");
}

template <class Packed, class Pack, class Run>
void bind_host(py::module_& m, const char* name, Pack pack, Run run) {
  m.def(
      name,
      [pack, run](const mlipbias::Model& model, IntArray species, IntArray offsets, IntArray j, DoubleArray D,
                  const std::string& uncertainty, bool gradient, std::vector<double> tau) {
        const mlipbias_bindings::Neighbours nb(std::move(species), std::move(offsets), std::move(j), std::move(D));
        const mlipbias::GmnnOptions o = make_options(uncertainty, gradient, std::move(tau));
        const Packed packed = pack(model);
        mlipbias::GmnnResult r;
        {
          py::gil_scoped_release release;
          run(packed, nb.view, o, r);
        }
        return result_dict(r, o, nb.view.n_centers, nb.view.n_atoms);
      },
      py::arg("model"), py::arg("species"), py::arg("offsets"), py::arg("j"), py::arg("D"),
      py::arg("uncertainty") = "none", py::arg("gradient") = false, py::arg("tau") = std::vector<double>(),
      (std::string("The CUDA evaluation's stages run serially on the host (what the CPU tests check). ") + kDoc)
          .c_str());
}

}  // namespace

MLIPBIAS_BINDINGS(gmnn_stages) {
  auto pack_gmnn = [](const mlipbias::Model& model) { return mlipbias::pack_gmnn(model); };
  auto pack_bpnn = [](const mlipbias::Model& model) { return mlipbias::pack_bpnn(model); };
  bind_host<mlipbias::PackedGmnn>(m, "gmnn_evaluate_staged_host", pack_gmnn, mlipbias::gmnn_evaluate_host);
  bind_host<mlipbias::PackedBpnn>(m, "bpnn_evaluate_staged_host", pack_bpnn, mlipbias::bpnn_evaluate_host);
  bind_device<mlipbias::PackedGmnn, mlipbias::cuda::GmnnEvaluator>(
      m, "GMNNDeviceEvaluator",
      "A GM-NN model on a CUDA device (the staged evaluation of cpp/gmnn_stages.hpp). ValueError 'no CUDA "
      "device: ...' without a usable device.",
      pack_gmnn);
  bind_device<mlipbias::PackedBpnn, mlipbias::cuda::BpnnEvaluator>(
      m, "BPNNDeviceEvaluator",
      "A BP-NN (symmetry functions) model on a CUDA device (the staged evaluation of cpp/bpnn_stages.hpp). "
      "ValueError 'no CUDA device: ...' without a usable device.",
      pack_bpnn);
}
