// Reader of the `.mlip` container (docs/model_file.md, format version 1).
//
// The container is a flat list of named, typed, shaped records followed by an FNV-1a hash.
// This reader knows nothing of the model schema: it checks the container (magic, version,
// bounds of every record, the hash) and gives typed access with shape checks. The schema
// (which records a model must have and how their shapes relate) is checked by the code that
// builds a model from the records.
//
//   auto file = mlipbias::ModelFile::load("model.mlip");
//   auto table = file.f64("descriptor/functions", {ModelFile::any, 8});
//   double rc = file.f64_scalar("descriptor/cutoff");
//   std::string elements = file.str("elements");
//
// Every failure throws mlipbias::Error with a message that starts with the file's path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common.hpp"

namespace mlipbias {

// Record dtypes as stored in the file (one byte).
enum class DType : std::uint8_t { f64 = 1, i64 = 2, str = 3 };

// "float64", "int64" or "string".
const char* dtype_name(DType dtype);

// FNV-1a 64-bit hash of `size` bytes (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
std::uint64_t fnv1a64(const unsigned char* data, std::size_t size);

// One record of a model file. Exactly one of f64, i64, str holds the payload.
struct Record {
  std::string name;
  DType dtype = DType::f64;
  std::vector<std::uint64_t> shape;  // a string has shape {n_bytes}; ndim 0 holds one value
  std::vector<double> f64;
  std::vector<std::int64_t> i64;
  std::string str;

  std::uint64_t size() const;      // number of elements (product of shape)
  std::string shape_str() const;   // e.g. "[12, 8]"
};

// A read-only view of a typed array record; valid while its ModelFile lives.
template <class T>
struct ArrayView {
  const T* data = nullptr;
  std::vector<std::uint64_t> shape;
  std::size_t n = 0;  // number of elements

  std::size_t size() const { return n; }
  const T& operator[](std::size_t i) const { return data[i]; }
};

class ModelFile {
 public:
  // Newest container version this build reads.
  static constexpr std::uint32_t format_version = 1;
  // Wildcard in an expected shape.
  static constexpr long long any = -1;

  // Reads and checks the container; throws Error naming `path` and the problem.
  static ModelFile load(const std::string& path);
  // Same checks on bytes already in memory; `origin` names them in messages.
  static ModelFile parse(const std::vector<unsigned char>& bytes, const std::string& origin);

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }

  // Record names in file order.
  std::vector<std::string> names() const;
  bool has(const std::string& name) const;
  // Throws "missing record NAME" when absent.
  const Record& record(const std::string& name) const;

  // Typed access. With `expected` given, the record must have that many dimensions and
  // every entry that is not `any` must match; otherwise the message names the record, the
  // expected and the found shape.
  ArrayView<double> f64(const std::string& name) const;
  ArrayView<double> f64(const std::string& name, const std::vector<long long>& expected) const;
  ArrayView<std::int64_t> i64(const std::string& name) const;
  ArrayView<std::int64_t> i64(const std::string& name, const std::vector<long long>& expected) const;
  // A record of shape [1] (or ndim 0).
  double f64_scalar(const std::string& name) const;
  std::int64_t i64_scalar(const std::string& name) const;
  const std::string& str(const std::string& name) const;

 private:
  const Record& typed(const std::string& name, DType dtype) const;
  void check_shape(const Record& rec, const std::vector<long long>& expected) const;
  [[noreturn]] void fail(const std::string& what) const;

  std::string path_;
  std::uint32_t version_ = 0;
  std::vector<Record> records_;
  std::map<std::string, std::size_t> index_;
};

}  // namespace mlipbias
