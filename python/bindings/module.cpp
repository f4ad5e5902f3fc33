// The `mlipbias._core` extension module: collects the bindings registered by the other
// files of this folder and maps mlipbias::Error to ValueError.
#include <algorithm>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "common.hpp"
#include "mlipbias_build_config.hpp"

namespace mlipbias_bindings {

static std::vector<std::pair<const char*, Registrar>>& registry() {
  static std::vector<std::pair<const char*, Registrar>> entries;
  return entries;
}

int add_registrar(const char* name, Registrar fn) {
  registry().emplace_back(name, fn);
  return 0;
}

}  // namespace mlipbias_bindings

PYBIND11_MODULE(_core, m) {
  m.doc() = "mlipbias C++ core: neighbor lists, BKS, symmetry functions, model inference";
  pybind11::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const mlipbias::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  pybind11::dict build;
  build["cuda"] = std::string(MLIPBIAS_BUILD_CUDA_CONFIGURED) == "ON";
  build["lammps_plugin"] = std::string(MLIPBIAS_BUILD_PLUGIN_CONFIGURED) == "ON";
  build["lammps_version"] = MLIPBIAS_BUILD_LAMMPS_VERSION;
  build["build_type"] = MLIPBIAS_BUILD_TYPE;
#ifdef _OPENMP
  build["openmp"] = true;
#else
  build["openmp"] = false;
#endif
  m.attr("build_info") = build;
  // Registration order is link order; sort so the module layout is reproducible.
  auto entries = mlipbias_bindings::registry();
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return std::string(a.first) < std::string(b.first); });
  for (const auto& entry : entries) entry.second(m);
}
