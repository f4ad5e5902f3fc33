// Python face of cpp/model.hpp: Model (a loaded .mlip file), ModelEvaluator (energies,
// forces, virials, uncertainties and their gradients from numpy neighbour data), BiasState
// (the bias policy of seed 002) and ensemble_atom_uncertainty. mlipbias.inference wraps these
// for ase.Atoms; the shapes are checked here, the neighbour structure by the core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "common.hpp"
#include "evaluation_checks.hpp"
#include "model.hpp"

namespace py = pybind11;

namespace {

using mlipbias_bindings::DoubleArray;
using mlipbias_bindings::IntArray;
using mlipbias_bindings::shape_of;



py::array_t<double> vector_array(const std::vector<double>& v, std::vector<py::ssize_t> shape) {
  py::array_t<double> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

// xx yy zz xy xz yz -> symmetric (3, 3)
py::array_t<double> tensor(const double* w) {
  py::array_t<double> out({3, 3});
  double* o = out.mutable_data();
  const int index[3][3] = {{0, 3, 4}, {3, 1, 5}, {4, 5, 2}};
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) o[3 * a + b] = w[index[a][b]];
  return out;
}

// An evaluator with the neighbour arrays of its current evaluation kept alive from
// forward() to backward(), and the result buffers reused across calls.
struct PyEvaluator {
  mlipbias::Model model;
  mlipbias::Evaluator evaluator;
  mlipbias::EvaluationResult result;
  std::optional<mlipbias_bindings::Neighbours> neighbours;  // of the last evaluate() or forward()

  PyEvaluator(const mlipbias::Model& m, const mlipbias::EvaluatorOptions& o) : model(m), evaluator(m, o) {}

  mlipbias::NeighbourView set_neighbours(IntArray species, IntArray offsets, IntArray j, DoubleArray D) {
    neighbours.emplace(std::move(species), std::move(offsets), std::move(j), std::move(D));
    return neighbours->view;
  }

  py::dict result_dict() const {
    const auto& r = result;
    const mlipbias::EvaluatorOptions& o = evaluator.options();
    const py::ssize_t n_atoms = neighbours->view.n_atoms, n_centers = neighbours->view.n_centers;
    py::dict out;
    out["energy"] = r.energy;
    out["atom_energies"] = vector_array(r.atom_energies, {n_centers});
    out["forces"] = vector_array(r.forces, {n_atoms, 3});
    out["virial"] = tensor(r.virial);
    out["member_energies"] = vector_array(r.member_energies, {static_cast<py::ssize_t>(r.member_energies.size())});
    if (o.uncertainty != mlipbias::Uncertainty::none) out["uncertainty"] = r.uncertainty;
    if (o.uncertainty_gradient) {
      out["uncertainty_gradient"] = vector_array(r.uncertainty_gradient, {n_atoms, 3});
      out["uncertainty_virial"] = tensor(r.uncertainty_virial);
    }
    if (o.atom_uncertainty) out["atom_uncertainty"] = vector_array(r.atom_uncertainty, {n_centers});
    if (!r.member_forces.empty())
      out["member_forces"] =
          vector_array(r.member_forces, {static_cast<py::ssize_t>(r.member_energies.size()), n_atoms, 3});
    return out;
  }
};

mlipbias::EvaluatorOptions make_options(const std::string& uncertainty, bool gradient, bool atom_uncertainty,
                                        double min_distance, bool single_precision) {
  mlipbias::EvaluatorOptions o;
  o.single_precision = single_precision;
  o.uncertainty = mlipbias::parse_uncertainty(uncertainty);
  o.uncertainty_gradient = gradient;
  o.atom_uncertainty = atom_uncertainty;
  o.min_distance = min_distance;
  return o;
}

const char* kNeighbourDoc =
    "species (n_atoms,) int64 model element index of every atom, -1 for atoms the model does not handle; "
    "offsets (n_centers + 1,) CSR pair offsets by centre (centres are atoms 0..n_centers-1); j (n_pairs,) "
    "neighbour atom of each pair; D (n_pairs, 3) r_ij = x_j - x_i in A.";

const char* kResultDoc =
    "A dict: energy (eV, sum over centres of the ensemble-mean atomic energies), atom_energies (n_centers,), "
    "forces (n_atoms, 3) eV/A, virial (3, 3) eV = -sum_ij r_ij (x) dE/dr_ij (stress = -virial / V), "
    "member_energies (n_members,) (global sums); with an uncertainty method: uncertainty U (eV, calibrated); "
    "with gradient: uncertainty_gradient dU/dx (n_atoms, 3) eV/A and uncertainty_virial (3, 3) = "
    "+sum_ij r_ij (x) dU/dr_ij; with atom_uncertainty: atom_uncertainty U_i (n_centers,) eV/A; with ensemble and "
    "atom_uncertainty: member_forces (n_members, n_atoms, 3).";

// Stops NaN before it reaches Python dynamics; names the atom by its index.
void throw_if_not_finite(const mlipbias::EvaluationResult& result) {
  mlipbias::NonFiniteOutput bad;
  if (!mlipbias::find_non_finite(result, bad)) return;
  std::string where = bad.atom >= 0 ? " on the atom with index " + std::to_string(bad.atom) : std::string();
  throw mlipbias::Error("the model gives a non-finite " + bad.quantity + where + " (" + std::to_string(bad.value) +
                        "): its weights overflow for this structure, which is far outside what it was trained on");
}

}  // namespace

MLIPBIAS_BINDINGS(model) {
  using mlipbias::Model;
  py::class_<Model>(m, "Model",
                    "A loaded and validated .mlip model file (docs/model_file.md). ValueError names the file and "
                    "the record at fault.")
      .def(py::init(&Model::load), py::arg("path"))
      .def_property_readonly("path", &Model::path)
      .def_property_readonly("elements", &Model::elements, "element symbols; the position is the element index")
      .def("element_index", &Model::element_index, py::arg("symbol"), "index of an element symbol, -1 if absent")
      .def_property_readonly("cutoff", &Model::cutoff, "largest descriptor cutoff (A)")
      .def_property_readonly("n_features", &Model::n_features)
      .def_property_readonly("n_members", &Model::n_members)
      .def(
          "supports", [](const Model& model, const std::string& name) {
            return model.supports(mlipbias::parse_uncertainty(name));
          },
          py::arg("uncertainty"), "whether C++ inference can evaluate this method with this file")
      .def(
          "energy_calibration",
          [](const Model& model, const std::string& name) {
            return model.energy_calibration(mlipbias::parse_uncertainty(name));
          },
          py::arg("uncertainty"), "conformal factor c_E (1 when the file has none)")
      .def(
          "force_calibration",
          [](const Model& model, const std::string& name) {
            return model.force_calibration(mlipbias::parse_uncertainty(name));
          },
          py::arg("uncertainty"), "conformal factor c_F (1 when the file has none)")
      .def("__repr__", [](const Model& model) {
        std::string els;
        for (const auto& e : model.elements()) els += (els.empty() ? "" : " ") + e;
        return "<mlipbias._core.Model " + model.path() + ": elements " + els + ", " +
               std::to_string(model.n_members()) + " member(s), cutoff " + std::to_string(model.cutoff()) + " A>";
      });

  py::class_<PyEvaluator>(m, "ModelEvaluator",
                          "Energies, forces, virials, uncertainties and their gradients of a Model. Buffers are "
                          "reused across calls. Options: uncertainty 'none' | 'ensemble' | 'posterior' | "
                          "'distance'; gradient (dU/dx and its virial); atom_uncertainty (U_i); min_distance (A, "
                          "0 disables); single_precision (the networks in float32).")
      .def(py::init([](const Model& model, const std::string& uncertainty, bool gradient, bool atom_uncertainty,
                       double min_distance, bool single_precision) {
             return std::make_unique<PyEvaluator>(
                 model, make_options(uncertainty, gradient, atom_uncertainty, min_distance, single_precision));
           }),
           py::arg("model"), py::arg("uncertainty") = "none", py::arg("gradient") = false,
           py::arg("atom_uncertainty") = false, py::arg("min_distance") = 0.0, py::arg("single_precision") = false)
      .def_property_readonly("options",
                             [](const PyEvaluator& self) {
                               const auto& o = self.evaluator.options();
                               py::dict d;
                               d["uncertainty"] = std::string(mlipbias::uncertainty_name(o.uncertainty));
                               d["gradient"] = o.uncertainty_gradient;
                               d["atom_uncertainty"] = o.atom_uncertainty;
                               d["min_distance"] = o.min_distance;
                               d["single_precision"] = o.single_precision;
                               return d;
                             })
      .def(
          "evaluate",
          [](PyEvaluator& self, IntArray species, IntArray offsets, IntArray j, DoubleArray D) {
            const mlipbias::NeighbourView view = self.set_neighbours(species, offsets, j, D);
            {
              py::gil_scoped_release release;
              self.evaluator.evaluate(view, self.result);
            }
            throw_if_not_finite(self.result);
            return self.result_dict();
          },
          py::arg("species"), py::arg("offsets"), py::arg("j"), py::arg("D"),
          (std::string("Evaluate one structure (serial: the local sums are the global ones). ") + kNeighbourDoc +
           " Returns " + kResultDoc)
              .c_str())
      .def(
          "forward",
          [](PyEvaluator& self, IntArray species, IntArray offsets, IntArray j, DoubleArray D) {
            const mlipbias::NeighbourView view = self.set_neighbours(species, offsets, j, D);
            {
              py::gil_scoped_release release;
              self.evaluator.forward(view);
            }
            const auto& sums = self.evaluator.local_sums();
            return vector_array(sums, {static_cast<py::ssize_t>(sums.size())});
          },
          py::arg("species"), py::arg("offsets"), py::arg("j"), py::arg("D"),
          (std::string("Phase 1 of a parallel evaluation: returns the local sums [E_m for each member] [Phi (K) "
                       "for posterior/distance] [number of centres], to be summed over all parts before "
                       "backward(). ") +
           kNeighbourDoc)
              .c_str())
      .def(
          "backward",
          [](PyEvaluator& self, DoubleArray global_sums) {
            if (!self.neighbours) throw mlipbias::Error("backward() needs a forward() first");
            const size_t expected = self.evaluator.local_sums().size();
            if (global_sums.ndim() != 1 || static_cast<size_t>(global_sums.shape(0)) != expected)
              throw mlipbias::Error("global_sums must have shape (" + std::to_string(expected) + ",) like the local "
                                    "sums of forward(), got " + shape_of(global_sums));
            {
              py::gil_scoped_release release;
              self.evaluator.backward(global_sums.data(), self.result);
            }
            throw_if_not_finite(self.result);
            return self.result_dict();
          },
          py::arg("global_sums"),
          (std::string("Phase 2: with the local sums of every part added, returns ") + kResultDoc).c_str());

  m.def(
      "ensemble_atom_uncertainty",
      [](DoubleArray member_forces, double c_F) {
        if (member_forces.ndim() != 3 || member_forces.shape(2) != 3)
          throw mlipbias::Error("member_forces must have shape (n_members, n_atoms, 3), got " +
                                shape_of(member_forces));
        const int64_t M = member_forces.shape(0), n = member_forces.shape(1);
        py::array_t<double> out({n});
        mlipbias::ensemble_atom_uncertainty(member_forces.data(), static_cast<int>(M), n, n, c_F, out.mutable_data());
        return out;
      },
      py::arg("member_forces"), py::arg("c_F") = 1.0,
      "U_i = c_F sqrt(sum_m |F_im - Fbar_i|^2 / (3 (M - 1))) (eV/A) of every atom.");

  using mlipbias::BiasState;
  auto parse_form = [](const std::string& form) {
    if (form == "window") return mlipbias::RescaleForm::window;
    if (form == "cumulative") return mlipbias::RescaleForm::cumulative;
    throw mlipbias::Error("bias: rescale_form must be 'window' or 'cumulative', got '" + form + "'");
  };
  auto form_name = [](const mlipbias::BiasSettings& s) {
    return std::string(s.rescale_form == mlipbias::RescaleForm::window ? "window" : "cumulative");
  };
  py::class_<BiasState>(m, "BiasState",
                        "Uncertainty-bias strengths of seed 002, shared with the LAMMPS plugin: E_biased = E - tau U, "
                        "F_bias,i = tau_(Z_i) dU/dx_i, W_bias = tau_stress sum r_ij (x) dU/dr_ij. With rescale "
                        "(Eq. 8), rescale_form 'window': no bias for the first `window` steps, then tau_eff = tau "
                        "sqrt(sum |F_t|^2 / sum |dU/dx_t|^2) over the last `window` steps; 'cumulative': tau_eff = "
                        "tau sum_t |F_t| / sum_t |dU/dx_t| over all steps (0 until a nonzero gradient norm was "
                        "recorded). Likewise tau_stress with virial norms.")
      .def(py::init([parse_form](double tau, std::optional<double> tau_stress, bool rescale,
                                 std::vector<double> species_tau, const std::string& rescale_form, int window) {
             mlipbias::BiasSettings s;
             s.tau = tau;
             s.tau_stress = tau_stress ? *tau_stress : tau;
             s.rescale = rescale;
             s.species_tau = std::move(species_tau);
             s.rescale_form = parse_form(rescale_form);
             s.window = window;
             return BiasState(s);
           }),
           py::arg("tau") = 0.0, py::arg("tau_stress") = py::none(), py::arg("rescale") = false,
           py::arg("species_tau") = std::vector<double>(), py::arg("rescale_form") = "window",
           py::arg("window") = 100,
           "tau_stress defaults to tau (as in pair_style mlip/bias); species_tau: one strength per model element, "
           "or empty for tau everywhere; rescale_form 'window' (seed 002 authors' form, burn-in and window of "
           "`window` steps) or 'cumulative'.")
      .def("update", &BiasState::update, py::arg("force_norm2"), py::arg("gradient_norm2"), py::arg("virial_norm2"),
           py::arg("gradient_virial_norm2"),
           "Record one step: squared norms of the model forces and of dU/dx (3N-vectors), and squared Frobenius "
           "norms of the model virial and of the uncertainty virial.")
      .def(
          "tau_effective",
          [](const BiasState& b, std::optional<int> element) {
            return element ? b.tau_effective(*element) : b.tau_effective();
          },
          py::arg("element") = py::none(),
          "Strength for the bias energy (no element) or for the bias force on an atom of this element index.")
      .def("tau_stress_effective", &BiasState::tau_stress_effective)
      .def_property_readonly("steps", &BiasState::steps)
      .def_property_readonly("settings",
                             [form_name](const BiasState& b) {
                               const auto& s = b.settings();
                               py::dict d;
                               d["tau"] = s.tau;
                               d["tau_stress"] = s.tau_stress;
                               d["rescale"] = s.rescale;
                               d["species_tau"] = s.species_tau;
                               d["rescale_form"] = form_name(s);
                               d["window"] = s.window;
                               return d;
                             })
      .def_property("state", &BiasState::state, &BiasState::set_state,
                    "Running sums [sum |F|, sum |dU/dx|, sum |W|, sum |W_U|, steps] and, for the window form, the "
                    "squared norms [|F|^2, |dU/dx|^2, |W|^2, |W_U|^2] of the last min(steps, window) steps, oldest "
                    "first (restarts).")
      .def(py::pickle(
          [form_name](const BiasState& b) {
            const auto& s = b.settings();
            return py::make_tuple(s.tau, s.tau_stress, s.rescale, s.species_tau, b.state(), form_name(s), s.window);
          },
          [parse_form](py::tuple t) {
            if (t.size() != 7) throw mlipbias::Error("BiasState pickle: expected 7 entries");
            mlipbias::BiasSettings s;
            s.tau = t[0].cast<double>();
            s.tau_stress = t[1].cast<double>();
            s.rescale = t[2].cast<bool>();
            s.species_tau = t[3].cast<std::vector<double>>();
            s.rescale_form = parse_form(t[5].cast<std::string>());
            s.window = t[6].cast<int>();
            BiasState b(s);
            b.set_state(t[4].cast<std::vector<double>>());
            return b;
          }));
}
