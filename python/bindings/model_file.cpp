// The `.mlip` container reader (cpp/model_file.hpp) seen from Python: mlipbias.modelfile
// reads files through it, and tests use it to prove that C++ reads what Python writes.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "model_file.hpp"

namespace py = pybind11;

namespace {

template <class T>
py::array_t<T> to_numpy(const mlipbias::ArrayView<T>& view) {
  std::vector<py::ssize_t> shape(view.shape.begin(), view.shape.end());
  py::array_t<T> out(shape);
  if (view.n) std::copy(view.data, view.data + view.n, out.mutable_data());
  return out;
}

py::object record_value(const mlipbias::ModelFile& file, const std::string& name) {
  const auto& rec = file.record(name);
  switch (rec.dtype) {
    case mlipbias::DType::f64:
      return to_numpy(file.f64(name));
    case mlipbias::DType::i64:
      return to_numpy(file.i64(name));
    case mlipbias::DType::str:
      // Decode errors name the record instead of a bare UnicodeDecodeError.
      {
        PyObject* s = PyUnicode_DecodeUTF8(rec.str.data(), static_cast<py::ssize_t>(rec.str.size()), "strict");
        if (!s) {
          PyErr_Clear();
          throw mlipbias::Error(file.path() + ": string record " + name + " is not valid UTF-8");
        }
        return py::reinterpret_steal<py::object>(s);
      }
  }
  return py::none();
}

std::vector<long long> expected_shape(const std::vector<long long>& shape) {
  for (auto d : shape)
    if (d < 0 && d != mlipbias::ModelFile::any)
      throw mlipbias::Error("expected shape entries must be >= 0, or -1 for any size");
  return shape;
}

}  // namespace

MLIPBIAS_BINDINGS(model_file) {
  m.def(
      "fnv1a64",
      [](py::buffer data) {
        py::buffer_info info = data.request();
        const auto* p = static_cast<const unsigned char*>(info.ptr);
        const auto n = static_cast<std::size_t>(info.size * info.itemsize);
        py::gil_scoped_release release;
        return mlipbias::fnv1a64(p, n);
      },
      py::arg("data"), "FNV-1a 64-bit hash of a bytes-like object (the .mlip checksum).");

  py::class_<mlipbias::ModelFile>(m, "ModelFile",
                                  "A checked .mlip container (docs/model_file.md); records by name.")
      .def_static("load", &mlipbias::ModelFile::load, py::arg("path"),
                  "Read and check a model file; ValueError names the file and the problem.")
      .def_static(
          "parse",
          [](py::bytes data, const std::string& origin) {
            std::string s = data;
            return mlipbias::ModelFile::parse(std::vector<unsigned char>(s.begin(), s.end()), origin);
          },
          py::arg("data"), py::arg("origin") = "<bytes>", "Check a container held in memory.")
      .def_readonly_static("format_version", &mlipbias::ModelFile::format_version)
      .def_property_readonly("path", &mlipbias::ModelFile::path)
      .def_property_readonly("version", &mlipbias::ModelFile::version)
      .def("names", &mlipbias::ModelFile::names, "Record names in file order.")
      .def("has", &mlipbias::ModelFile::has, py::arg("name"))
      .def("__contains__", &mlipbias::ModelFile::has, py::arg("name"))
      .def("__len__", [](const mlipbias::ModelFile& f) { return f.names().size(); })
      .def(
          "dtype", [](const mlipbias::ModelFile& f, const std::string& name) {
            return std::string(mlipbias::dtype_name(f.record(name).dtype));
          },
          py::arg("name"), "\"float64\", \"int64\" or \"string\".")
      .def(
          "shape",
          [](const mlipbias::ModelFile& f, const std::string& name) { return f.record(name).shape; },
          py::arg("name"))
      .def("get", &record_value, py::arg("name"), "The record as a numpy array (a copy) or str.")
      .def(
          "f64",
          [](const mlipbias::ModelFile& f, const std::string& name,
             std::optional<std::vector<long long>> expected) {
            return to_numpy(expected ? f.f64(name, expected_shape(*expected)) : f.f64(name));
          },
          py::arg("name"), py::arg("expected") = py::none(),
          "A float64 record, its shape checked against `expected` (-1 = any size).")
      .def(
          "i64",
          [](const mlipbias::ModelFile& f, const std::string& name,
             std::optional<std::vector<long long>> expected) {
            return to_numpy(expected ? f.i64(name, expected_shape(*expected)) : f.i64(name));
          },
          py::arg("name"), py::arg("expected") = py::none(),
          "An int64 record, its shape checked against `expected` (-1 = any size).")
      .def("f64_scalar", &mlipbias::ModelFile::f64_scalar, py::arg("name"))
      .def("i64_scalar", &mlipbias::ModelFile::i64_scalar, py::arg("name"))
      .def("str", &mlipbias::ModelFile::str, py::arg("name"), "A string record (bytes decoded as UTF-8).");
}
