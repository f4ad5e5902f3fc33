// Model loading with the full schema check of docs/model_file.md, the per-atom ensemble
// uncertainty, and the bias policy (BiasState). The evaluation itself is in evaluator.cpp.
#include "model.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <set>
#include <utility>

#include "model_data.hpp"
#include "model_file.hpp"

namespace mlipbias {

namespace {

// Every method name the file format knows; C++ evaluates the first three of
// ensemble/posterior/distance, the others are Python-only (mlipbias.uq).
const char* const kFileMethods[] = {"ensemble", "mve", "evidential", "gmm", "posterior", "distance"};

// No number of a model is larger in magnitude (weights, scales, shifts, precisions of lambda
// >= 1e-12, ...), and no scaling std smaller than its inverse: beyond it a file is damaged
// and evaluating it would overflow to inf/NaN. The same limit as mlipbias.modelfile.
constexpr double kMaxModelValue = 1e12;  // the messages below name it

std::string fmt(double x, const char* format = "%.17g") {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), format, x);
  return buffer;
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> words;
  std::string word;
  for (char c : text) {
    if (c == separator) {
      words.push_back(word);
      word.clear();
    } else {
      word += c;
    }
  }
  words.push_back(word);
  return words;
}

// Typed, shape-checked, finite record access with messages "PATH: record NAME ...".
class Loader {
 public:
  explicit Loader(const ModelFile& file) : file_(file) {}

  [[noreturn]] void fail(const std::string& what) const { throw Error(file_.path() + ": " + what); }
  [[noreturn]] void fail(const std::string& name, const std::string& what) const {
    fail("record " + name + " " + what);
  }

  bool has(const std::string& name) const { return file_.has(name); }
  const std::string& str(const std::string& name) const { return file_.str(name); }

  std::vector<double> f64(const std::string& name, const std::vector<long long>& shape) const {
    const ArrayView<double> view = file_.f64(name, shape);
    for (std::size_t k = 0; k < view.size(); ++k) {
      if (!std::isfinite(view[k])) fail(name, "contains NaN or infinite values (entry " + std::to_string(k) + ")");
      if (std::fabs(view[k]) > kMaxModelValue)
        fail(name, "has entry " + std::to_string(k) + " = " + fmt(view[k], "%.6g") + ", beyond the limit of 1e12 for any model "
                       "number (a damaged or hand-edited file?)");
    }
    return std::vector<double>(view.data, view.data + view.size());
  }
  std::vector<uint64_t> shape(const std::string& name) const { return file_.record(name).shape; }
  double f64_scalar(const std::string& name) const { return f64(name, {1})[0]; }
  int64_t i64_scalar(const std::string& name) const { return file_.i64(name, {1})[0]; }

 private:
  const ModelFile& file_;
};

void load_meta(const Loader& in) {
  const std::string& format = in.str("meta/format");
  if (format != "mlipbias-model")
    in.fail("not an mlipbias model: record meta/format is '" + format + "', expected 'mlipbias-model'");
  const std::string& units = in.str("meta/units");
  if (units != "eV Angstrom") in.fail("meta/units", "is '" + units + "', expected 'eV Angstrom'");
  in.str("meta/mlipbias_version");
}

std::vector<std::string> load_elements(const Loader& in) {
  const std::string& text = in.str("elements");
  std::vector<std::string> elements = split(text, ' ');
  for (const auto& el : elements)
    if (el.empty()) in.fail("elements", "'" + text + "' must be symbols separated by single spaces, e.g. 'Si O'");
  std::set<std::string> unique(elements.begin(), elements.end());
  if (unique.size() != elements.size()) in.fail("elements", "'" + text + "' lists an element twice");
  return elements;
}

SymmetryFunctions load_descriptor(const Loader& in, int n_elements) {
  const std::vector<double> table = in.f64("descriptor/functions", {ModelFile::any, SymmetryFunctions::kColumns});
  const int64_t n_sf = static_cast<int64_t>(in.shape("descriptor/functions")[0]);
  if (n_sf == 0) in.fail("descriptor/functions", "has no rows (no symmetry functions)");
  const SymmetryFunctions sf = [&] {
    try {
      return SymmetryFunctions(table.data(), n_sf, n_elements);
    } catch (const Error& e) {
      in.fail("descriptor/functions", std::string("is invalid: ") + e.what());
    }
  }();
  const double cutoff = in.f64_scalar("descriptor/cutoff");
  if (std::fabs(cutoff - sf.cutoff()) > 1e-12 * sf.cutoff())
    in.fail("descriptor/cutoff",
            "is " + fmt(cutoff) + ", expected the largest rc of descriptor/functions, " + fmt(sf.cutoff()));
  return sf;
}

// GM-NN (descriptor/kind gaussian_moments): the settings, then (with the members) every member's beta.
GaussianMomentSettings load_gaussian_moment_settings(const Loader& in) {
  GaussianMomentSettings s;
  s.cutoff = in.f64_scalar("descriptor/cutoff");
  s.r_min = in.f64_scalar("descriptor/r_min");
  const std::pair<const char*, int*> sizes[] = {
      {"descriptor/n_basis", &s.n_basis}, {"descriptor/n_radial", &s.n_radial}, {"descriptor/n_contractions", &s.n_contractions}};
  for (const auto& [name, target] : sizes) {
    const int64_t value = in.i64_scalar(name);
    const int64_t high = std::string(name) == "descriptor/n_contractions" ? 8 : 64;
    if (value < 1 || value > high)
      in.fail(name, "is " + std::to_string(value) + ", expected 1.." + std::to_string(high));
    *target = static_cast<int>(value);
  }
  if (!(s.cutoff > 0)) in.fail("descriptor/cutoff", "is " + fmt(s.cutoff) + ", expected a positive cutoff in A");
  if (!(s.r_min >= 0 && s.r_min < s.cutoff))
    in.fail("descriptor/r_min", "is " + fmt(s.r_min) + ", expected 0 <= r_min < descriptor/cutoff");
  return s;
}

void load_gaussian_moments(const Loader& in, const GaussianMomentSettings& s, ModelData& d) {
  const long long n_el = d.n_elements();
  std::vector<double> beta;
  for (int m = 0; m < d.n_members(); ++m) {
    const std::vector<double> b =
        in.f64("member/" + std::to_string(m) + "/descriptor/beta", {n_el, n_el, s.n_radial, s.n_basis});
    beta.insert(beta.end(), b.begin(), b.end());
  }
  d.gaussian_moments = std::make_shared<const GaussianMoments>(s, n_el, d.n_members(), std::move(beta));
}

void load_network(const Loader& in, ModelData& d, int m) {
  const std::string prefix = "member/" + std::to_string(m) + "/";
  Member member;
  member.energy_scale = in.f64_scalar(prefix + "energy_scale");
  if (member.energy_scale == 0.0) in.fail(prefix + "energy_scale", "is 0");
  member.energy_shift = in.f64(prefix + "energy_shift", {d.n_elements()});
  for (const auto& el : d.elements) {
    Network net;
    int n_in = d.n_features;
    for (int l = 1; l <= d.n_layers; ++l) {
      const std::string w_name = prefix + el + "/W" + std::to_string(l);
      const long long n_out_expected = l == d.n_layers ? 1 : ModelFile::any;
      Layer layer;
      layer.W = in.f64(w_name, {n_out_expected, n_in});
      layer.n_in = n_in;
      layer.n_out = static_cast<int>(in.shape(w_name)[0]);
      if (layer.n_out == 0) in.fail(w_name, "has no rows (a layer of width 0)");
      layer.b = in.f64(prefix + el + "/b" + std::to_string(l), {layer.n_out});
      layer.pack();
      d.max_width = std::max({d.max_width, layer.n_in, layer.n_out});
      n_in = layer.n_out;
      net.layers.push_back(std::move(layer));
    }
    member.networks.push_back(std::move(net));
  }
  d.members.push_back(std::move(member));
}

// Weights under names the declared sizes do not cover mean a wrong n_members or n_layers.
void check_extra_weights(const ModelFile& file, const Loader& in, const ModelData& d) {
  for (const std::string& name : file.names()) {
    if (name.rfind("member/", 0) != 0) continue;
    const std::vector<std::string> parts = split(name, '/');  // member, m, El, Wl or bl
    if (parts.size() != 4 || parts[3].size() < 2 || (parts[3][0] != 'W' && parts[3][0] != 'b')) continue;
    const std::string digits = parts[3].substr(1);
    if (digits.find_first_not_of("0123456789") != std::string::npos || parts[1].empty() ||
        parts[1].find_first_not_of("0123456789") != std::string::npos)
      continue;
    const long long m = std::stoll(parts[1].substr(0, 9)), l = std::stoll(digits.substr(0, 9));
    if (m >= d.n_members())
      in.fail(name, "is present but model/n_members is " + std::to_string(d.n_members()));
    if (std::find(d.elements.begin(), d.elements.end(), parts[2]) == d.elements.end())
      in.fail(name, "is for element '" + parts[2] + "', which is not in elements");
    if (l < 1 || l > d.n_layers) in.fail(name, "is present but model/n_layers is " + std::to_string(d.n_layers));
  }
}

void load_members(const ModelFile& file, const Loader& in, ModelData& d) {
  const std::string& activation = in.str("model/activation");
  if (activation == "tanh")
    d.activation = Activation::tanh;
  else if (activation == "silu")
    d.activation = Activation::silu;
  else
    in.fail("model/activation", "is '" + activation + "', expected 'tanh' or 'silu'");
  const int64_t n_members = in.i64_scalar("model/n_members");
  if (n_members < 1) in.fail("model/n_members", "is " + std::to_string(n_members) + ", expected >= 1");
  const int64_t n_layers = in.i64_scalar("model/n_layers");
  if (n_layers < 1) in.fail("model/n_layers", "is " + std::to_string(n_layers) + ", expected >= 1");
  // A corrupt count cannot make this long: the first member without records fails.
  if (n_layers > 1000) in.fail("model/n_layers", "is " + std::to_string(n_layers) + ", expected at most 1000");
  d.n_layers = static_cast<int>(n_layers);
  for (int64_t m = 0; m < n_members; ++m) load_network(in, d, static_cast<int>(m));
  check_extra_weights(file, in, d);
}

void load_uncertainty(const Loader& in, ModelData& d) {
  if (in.has("uq/methods")) {
    const std::string& text = in.str("uq/methods");
    std::set<std::string> seen;
    std::string word;
    for (size_t p = 0; p <= text.size(); ++p) {
      if (p < text.size() && !std::isspace(static_cast<unsigned char>(text[p]))) {
        word += text[p];
        continue;
      }
      if (word.empty()) continue;
      if (std::find(std::begin(kFileMethods), std::end(kFileMethods), word) == std::end(kFileMethods))
        in.fail("uq/methods", "names an unknown uncertainty method '" + word +
                                  "' (known: ensemble mve evidential gmm posterior distance)");
      if (!seen.insert(word).second) in.fail("uq/methods", "lists '" + word + "' twice");
      d.methods.push_back(word);
      word.clear();
    }
  }
  auto listed = [&](const char* m) { return std::find(d.methods.begin(), d.methods.end(), m) != d.methods.end(); };
  if (listed("ensemble") && d.n_members() < 2)
    in.fail("uq/methods", "lists 'ensemble' but model/n_members is " + std::to_string(d.n_members()) +
                              " (an ensemble needs at least 2 members)");
  const bool posterior = listed("posterior"), distance = listed("distance");
  d.has_gradient_features = posterior || distance;
  if (!d.has_gradient_features) return;

  const int64_t k = in.i64_scalar("uq/gradient/k");
  if (k < 1 || k > 1000000) in.fail("uq/gradient/k", "is " + std::to_string(k) + ", expected >= 1");
  d.k = static_cast<int>(k);
  d.n_sketch = d.n_elements() * d.n_layers * d.k;
  const long long K = d.n_sketch;
  d.sketches.resize(d.n_elements());
  for (int e = 0; e < d.n_elements(); ++e) {
    const Network& net = d.members[0].networks[e];
    for (int l = 0; l < d.n_layers; ++l) {
      const std::string base = "uq/gradient/" + d.elements[e] + "/";
      Sketch s;
      s.R1 = in.f64(base + "R1_" + std::to_string(l + 1), {k, net.layers[l].n_out});
      s.R2 = in.f64(base + "R2_" + std::to_string(l + 1), {k, net.layers[l].n_in + 1});
      d.sketches[e].push_back(std::move(s));
    }
  }
  if (posterior) {
    const double lambda = in.f64_scalar("uq/gradient/lambda");
    if (!(lambda > 0)) in.fail("uq/gradient/lambda", "is " + fmt(lambda) + ", expected > 0");
    const std::pair<const char*, std::vector<double>*> precisions[] = {
        {"uq/gradient/precision_energy", &d.precision_energy}, {"uq/gradient/precision_atom", &d.precision_atom}};
    for (const auto& [name, target] : precisions) {
      const std::vector<double> A = in.f64(name, {K, K});
      double largest = 0.0, asym = 0.0;
      for (long long a = 0; a < K; ++a)
        for (long long b = 0; b < K; ++b) {
          largest = std::max(largest, std::fabs(A[a * K + b]));
          asym = std::max(asym, std::fabs(A[a * K + b] - A[b * K + a]));
        }
      // A tolerance: inverses of ill-conditioned matrices are symmetric only to eps * cond.
      if (asym > 1e-4 * largest) in.fail(name, "is not symmetric (largest |A - A^T| = " + fmt(asym) + ")");
      *target = A;
    }
  }
  if (distance) {
    d.train_energy = in.f64("uq/gradient/train_energy", {ModelFile::any, K});
    d.n_train_energy = static_cast<int64_t>(in.shape("uq/gradient/train_energy")[0]);
    d.train_atom = in.f64("uq/gradient/train_atom", {ModelFile::any, K});
    d.n_train_atom = static_cast<int64_t>(in.shape("uq/gradient/train_atom")[0]);
    if (d.n_train_energy == 0) in.fail("uq/gradient/train_energy", "has no rows");
    if (d.n_train_atom == 0) in.fail("uq/gradient/train_atom", "has no rows");
    const int block = d.n_layers * d.k;
    d.train_atom_rest_norm2.assign(d.n_elements(), std::vector<double>(d.n_train_atom, 0.0));
    for (int e = 0; e < d.n_elements(); ++e)
      for (int64_t j = 0; j < d.n_train_atom; ++j) {
        const double* row = &d.train_atom[j * K];
        double s = 0.0;
        for (long long p = 0; p < K; ++p)
          if (p / block != e) s += row[p] * row[p];
        d.train_atom_rest_norm2[e][j] = s;
      }
  }
}

void load_calibration(const ModelFile& file, const Loader& in, ModelData& d) {
  bool has_factors = false;
  for (const std::string& name : file.names()) {
    for (const char* quantity : {"energy", "force"}) {
      const std::string prefix = std::string("calibration/") + quantity + "/";
      if (name.rfind(prefix, 0) != 0) continue;
      const std::string method = name.substr(prefix.size());
      if (std::find(d.methods.begin(), d.methods.end(), method) == d.methods.end())
        in.fail(name, "calibrates method '" + method + "', which is not in uq/methods");
      const double c = in.f64_scalar(name);
      if (!(c > 0)) in.fail(name, "is " + fmt(c) + ", expected a positive factor");
      has_factors = true;
      Uncertainty u;
      if (method == "ensemble")
        u = Uncertainty::ensemble;
      else if (method == "posterior")
        u = Uncertainty::posterior;
      else if (method == "distance")
        u = Uncertainty::distance;
      else
        continue;  // a Python-only method
      (quantity[0] == 'e' ? d.energy_calibration : d.force_calibration)[static_cast<int>(u)] = c;
    }
  }
  if (in.has("calibration/alpha") || has_factors) {
    const double alpha = in.f64_scalar("calibration/alpha");
    if (!(alpha > 0 && alpha < 1)) in.fail("calibration/alpha", "is " + fmt(alpha) + ", expected 0 < alpha < 1");
  }
}

}  // namespace

// ------------------------------------------------------------------ uncertainty names

Uncertainty parse_uncertainty(const std::string& name) {
  if (name == "none") return Uncertainty::none;
  if (name == "ensemble") return Uncertainty::ensemble;
  if (name == "posterior") return Uncertainty::posterior;
  if (name == "distance") return Uncertainty::distance;
  if (name == "mve" || name == "evidential" || name == "gmm")
    throw Error("uncertainty method '" + name +
                "' is evaluated in Python only (mlipbias.uq); C++ inference supports none, ensemble, posterior, "
                "distance");
  throw Error("unknown uncertainty method '" + name + "' (choose none, ensemble, posterior or distance)");
}

const char* uncertainty_name(Uncertainty u) {
  switch (u) {
    case Uncertainty::none:
      return "none";
    case Uncertainty::ensemble:
      return "ensemble";
    case Uncertainty::posterior:
      return "posterior";
    case Uncertainty::distance:
      return "distance";
  }
  return "?";
}

// ------------------------------------------------------------------ Model

Model Model::load(const std::string& path) {
  const ModelFile file = ModelFile::load(path);
  const Loader in(file);
  load_meta(in);
  std::vector<std::string> elements = load_elements(in);
  const std::string kind = in.has("descriptor/kind") ? in.str("descriptor/kind") : "symmetry_functions";
  if (kind != "symmetry_functions" && kind != "gaussian_moments")
    in.fail("descriptor/kind", "is '" + kind + "', expected symmetry_functions or gaussian_moments");
  const bool gm = kind == "gaussian_moments";
  GaussianMomentSettings gm_settings;
  if (gm) gm_settings = load_gaussian_moment_settings(in);
  // A GM-NN keeps an unused one-function placeholder in ModelData::descriptor.
  const double placeholder[SymmetryFunctions::kColumns] = {2, 0, -1, 0, 0, 0, 0, gm_settings.cutoff};
  auto data = std::make_shared<ModelData>(gm ? SymmetryFunctions(placeholder, 1, static_cast<int64_t>(elements.size()))
                                             : load_descriptor(in, static_cast<int>(elements.size())));
  data->path = path;
  data->elements = std::move(elements);
  data->n_features = gm ? gm_n_features(gm_settings) : static_cast<int>(data->descriptor.n_sf());
  data->max_width = data->n_features;
  for (const auto& el : data->elements) {
    const std::string base = "scaling/" + el + "/";
    data->mean.push_back(in.f64(base + "mean", {data->n_features}));
    std::vector<double> std_dev = in.f64(base + "std", {data->n_features});
    for (int f = 0; f < data->n_features; ++f) {
      if (!(std_dev[f] >= 1.0 / kMaxModelValue))
        in.fail(base + "std", "has entry " + std::to_string(f) + " = " + fmt(std_dev[f], "%.6g") + " below 1e-12 (constant "
                                  "features get 1)");
      std_dev[f] = 1.0 / std_dev[f];
    }
    data->inv_std.push_back(std::move(std_dev));
  }
  load_members(file, in, *data);
  if (gm) load_gaussian_moments(in, gm_settings, *data);
  load_uncertainty(in, *data);
  load_calibration(file, in, *data);
  Model model;
  model.data_ = std::move(data);
  return model;
}

const std::vector<std::string>& Model::elements() const { return data_->elements; }

int Model::element_index(const std::string& symbol) const {
  const auto& el = data_->elements;
  const auto it = std::find(el.begin(), el.end(), symbol);
  return it == el.end() ? -1 : static_cast<int>(it - el.begin());
}

double Model::cutoff() const { return data_->cutoff(); }
int Model::n_features() const { return data_->n_features; }
int Model::n_members() const { return data_->n_members(); }
const std::string& Model::path() const { return data_->path; }

bool Model::supports(Uncertainty u) const {
  const auto& m = data_->methods;
  switch (u) {
    case Uncertainty::none:
      return true;
    case Uncertainty::ensemble:
      return data_->n_members() >= 2;
    case Uncertainty::posterior:
      return std::find(m.begin(), m.end(), "posterior") != m.end();
    case Uncertainty::distance:
      return std::find(m.begin(), m.end(), "distance") != m.end();
  }
  return false;
}

double Model::energy_calibration(Uncertainty u) const { return data_->energy_calibration[static_cast<int>(u)]; }
double Model::force_calibration(Uncertainty u) const { return data_->force_calibration[static_cast<int>(u)]; }

// ------------------------------------------------------------------ per-atom ensemble uncertainty

void ensemble_atom_uncertainty(const double* member_forces, int n_members, int64_t stride_atoms, int64_t n,
                               double c_F, double* out) {
  if (n_members < 2)
    throw Error("the ensemble uncertainty needs at least 2 members, got " + std::to_string(n_members));
  const int64_t member_stride = 3 * stride_atoms;
  for (int64_t i = 0; i < n; ++i) {
    double mean[3] = {0.0, 0.0, 0.0};
    for (int m = 0; m < n_members; ++m)
      for (int x = 0; x < 3; ++x) mean[x] += member_forces[m * member_stride + 3 * i + x];
    for (int x = 0; x < 3; ++x) mean[x] /= n_members;
    double sum = 0.0;
    for (int m = 0; m < n_members; ++m)
      for (int x = 0; x < 3; ++x) {
        const double d = member_forces[m * member_stride + 3 * i + x] - mean[x];
        sum += d * d;
      }
    out[i] = c_F * std::sqrt(sum / (3.0 * (n_members - 1)));
  }
}

// ------------------------------------------------------------------ BiasState

BiasState::BiasState(const BiasSettings& settings) : settings_(settings) {
  auto check = [](double value, const std::string& name) {
    if (!(value >= 0) || !std::isfinite(value))
      throw Error("bias: " + name + " must be a finite number >= 0, got " + fmt(value));
  };
  check(settings.tau, "tau");
  check(settings.tau_stress, "tau_stress");
  for (size_t e = 0; e < settings.species_tau.size(); ++e)
    check(settings.species_tau[e], "the strength of element " + std::to_string(e));
  if (settings.window < 1) throw Error("bias: the rescaling window must be >= 1 step, got " + std::to_string(settings.window));
  if (settings.rescale_form == RescaleForm::window) recent_.assign(4 * static_cast<size_t>(settings.window), 0.0);
}

void BiasState::update(double force_norm2, double gradient_norm2, double virial_norm2, double gradient_virial_norm2) {
  for (double x : {force_norm2, gradient_norm2, virial_norm2, gradient_virial_norm2})
    if (!(x >= 0) || !std::isfinite(x))
      throw Error("bias: squared norms must be finite and >= 0, got " + fmt(x));
  sum_force_ += std::sqrt(force_norm2);
  sum_gradient_ += std::sqrt(gradient_norm2);
  sum_virial_ += std::sqrt(virial_norm2);
  sum_gradient_virial_ += std::sqrt(gradient_virial_norm2);
  if (!recent_.empty()) {
    double* slot = recent_.data() + 4 * (steps_ % settings_.window);  // overwrites the oldest
    slot[0] = force_norm2;
    slot[1] = gradient_norm2;
    slot[2] = virial_norm2;
    slot[3] = gradient_virial_norm2;
  }
  ++steps_;
  force_ratio_ = ratio(0);
  virial_ratio_ = ratio(2);
}

double BiasState::ratio(int first) const {
  if (settings_.rescale_form == RescaleForm::cumulative) {
    const double num = first == 0 ? sum_force_ : sum_virial_;
    const double den = first == 0 ? sum_gradient_ : sum_gradient_virial_;
    return den > 0 ? num / den : 0.0;  // 0 while no gradient has been seen (nothing to scale by)
  }
  if (steps_ <= settings_.window) return 0.0;  // burn-in: unbiased until the window is full
  double num = 0.0, den = 0.0;
  for (int t = 0; t < settings_.window; ++t) {
    num += recent_[4 * t + first];
    den += recent_[4 * t + first + 1];
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

double BiasState::tau_effective() const { return settings_.rescale ? settings_.tau * force_ratio_ : settings_.tau; }

double BiasState::tau_effective(int element) const {
  if (settings_.species_tau.empty()) return tau_effective();
  if (element < 0 || element >= static_cast<int>(settings_.species_tau.size()))
    throw Error("bias: element index " + std::to_string(element) + " outside 0.." +
                std::to_string(settings_.species_tau.size() - 1) + " of the per-element strengths");
  const double tau = settings_.species_tau[element];
  return settings_.rescale ? tau * force_ratio_ : tau;
}

double BiasState::tau_stress_effective() const {
  return settings_.rescale ? settings_.tau_stress * virial_ratio_ : settings_.tau_stress;
}

std::vector<double> BiasState::state() const {
  std::vector<double> out = {sum_force_, sum_gradient_, sum_virial_, sum_gradient_virial_, static_cast<double>(steps_)};
  if (!recent_.empty()) {
    const int64_t kept = std::min<int64_t>(steps_, settings_.window);
    for (int64_t t = steps_ - kept; t < steps_; ++t)
      for (int k = 0; k < 4; ++k) out.push_back(recent_[4 * (t % settings_.window) + k]);
  }
  return out;
}

void BiasState::set_state(const std::vector<double>& state) {
  if (state.size() < 5)
    throw Error("bias: a state has 5 entries (sums of |F|, |dU/dx|, |W|, |W_U| and the step count) and, for the "
                "window form, 4 squared norms per kept step; got " + std::to_string(state.size()));
  for (double x : state)
    if (!(x >= 0) || !std::isfinite(x)) throw Error("bias: state entries must be finite and >= 0, got " + fmt(x));
  if (state[4] != std::floor(state[4])) throw Error("bias: the step count must be an integer, got " + fmt(state[4]));
  const int64_t steps = static_cast<int64_t>(state[4]);
  const size_t kept = recent_.empty() ? 0 : static_cast<size_t>(std::min<int64_t>(steps, settings_.window));
  if (state.size() != 5 + 4 * kept)
    throw Error("bias: a state of " + std::to_string(steps) + " steps has " + std::to_string(5 + 4 * kept) +
                " entries for this rescaling form, got " + std::to_string(state.size()));
  sum_force_ = state[0];
  sum_gradient_ = state[1];
  sum_virial_ = state[2];
  sum_gradient_virial_ = state[3];
  steps_ = steps;
  std::fill(recent_.begin(), recent_.end(), 0.0);
  for (size_t j = 0; j < kept; ++j)  // entry j is step steps - kept + j
    for (int k = 0; k < 4; ++k) recent_[4 * ((steps - kept + j) % settings_.window) + k] = state[5 + 4 * j + k];
  force_ratio_ = ratio(0);
  virial_ratio_ = ratio(2);
}

}  // namespace mlipbias
