// Reader of the `.mlip` container; see model_file.hpp and docs/model_file.md.
#include "model_file.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

namespace mlipbias {

namespace {

constexpr char kMagic[8] = {'M', 'L', 'I', 'P', 'B', 'I', 'A', 'S'};
constexpr std::size_t kMagicSize = sizeof(kMagic);
constexpr std::size_t kHashSize = 8;
// A shape with more dimensions than this is corruption, not data.
constexpr std::uint32_t kMaxNdim = 32;

// Little-endian decoding that works on any host byte order.
std::uint64_t read_le(const unsigned char* p, int n_bytes) {
  std::uint64_t v = 0;
  for (int b = n_bytes - 1; b >= 0; --b) v = (v << 8) | p[b];
  return v;
}

// Walks the byte buffer; every read is bounds-checked against the bytes before the hash.
class Cursor {
 public:
  Cursor(const std::vector<unsigned char>& bytes, std::size_t end, const std::string& origin)
      : bytes_(bytes), end_(end), origin_(origin) {}

  std::size_t offset() const { return pos_; }
  std::size_t remaining() const { return end_ - pos_; }

  // `what` describes the field for the message when the file ends before it.
  const unsigned char* take(std::uint64_t n, const std::string& what) {
    if (n > remaining()) {
      std::ostringstream msg;
      msg << origin_ << ": truncated or corrupt file: " << what << " needs " << n << " bytes at offset "
          << pos_ << " but only " << remaining() << " remain before the checksum";
      throw Error(msg.str());
    }
    const unsigned char* p = bytes_.data() + pos_;
    pos_ += static_cast<std::size_t>(n);
    return p;
  }
  std::uint64_t u8(const std::string& what) { return read_le(take(1, what), 1); }
  std::uint64_t u32(const std::string& what) { return read_le(take(4, what), 4); }
  std::uint64_t u64(const std::string& what) { return read_le(take(8, what), 8); }

 private:
  const std::vector<unsigned char>& bytes_;
  std::size_t end_;
  std::size_t pos_ = 0;
  const std::string& origin_;
};

std::string shape_to_string(const std::vector<long long>& shape) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s << ", ";
    if (shape[i] == ModelFile::any)
      s << "*";
    else
      s << shape[i];
  }
  s << "]";
  return s.str();
}

bool checksum_matches(const std::vector<unsigned char>& bytes) {
  const std::size_t n = bytes.size();
  return read_le(bytes.data() + n - kHashSize, 8) == fnv1a64(bytes.data(), n - kHashSize);
}

}  // namespace

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f64:
      return "float64";
    case DType::i64:
      return "int64";
    case DType::str:
      return "string";
  }
  return "unknown";
}

std::uint64_t fnv1a64(const unsigned char* data, std::size_t size) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (std::size_t i = 0; i < size; ++i) {
    h ^= data[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::uint64_t Record::size() const {
  std::uint64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string Record::shape_str() const {
  std::vector<long long> s(shape.begin(), shape.end());
  return shape_to_string(s);
}

ModelFile ModelFile::load(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) throw Error(path + ": cannot open model file (no such file)");
  if (!std::filesystem::is_regular_file(status))
    throw Error(path + ": cannot read model file (not a regular file)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open model file (" + std::strerror(errno) + ")");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw Error(path + ": cannot read model file (" + ec.message() + ")");
  std::vector<unsigned char> bytes(static_cast<std::size_t>(size));
  if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size)))
    throw Error(path + ": cannot read model file (read error)");
  return parse(bytes, path);
}

ModelFile ModelFile::parse(const std::vector<unsigned char>& bytes, const std::string& origin) {
  ModelFile file;
  file.path_ = origin;
  const std::size_t n = bytes.size();

  // Magic first: a file of another kind should say so, not "truncated".
  if (n == 0) throw Error(origin + ": empty file, not an mlipbias model file");
  const std::size_t n_magic = n < kMagicSize ? n : kMagicSize;
  if (std::memcmp(bytes.data(), kMagic, n_magic) != 0)
    throw Error(origin + ": not an mlipbias model file (the first bytes are not \"MLIPBIAS\")");
  if (n < kMagicSize + 8 + kHashSize) {
    throw Error(origin + ": truncated file (" + std::to_string(n) +
                " bytes, shorter than the smallest model file)");
  }
  file.version_ = static_cast<std::uint32_t>(read_le(bytes.data() + kMagicSize, 4));
  if (file.version_ > format_version) {
    // Every version ends in the same checksum: a file that fails it is damaged (random
    // bytes after the magic), not one written by a newer mlipbias.
    if (!checksum_matches(bytes)) {
      throw Error(origin + ": corrupt file: checksum mismatch, and the format version field reads " +
                  std::to_string(file.version_) + " (this mlipbias writes " + std::to_string(format_version) +
                  "); the bytes after the header are damaged");
    }
    throw Error(origin + ": format version " + std::to_string(file.version_) +
                " is newer than this mlipbias (" + std::to_string(format_version) +
                "); upgrade mlipbias to read it");
  }
  if (file.version_ == 0) throw Error(origin + ": invalid format version 0 (corrupt file)");

  // Records are parsed before the hash is compared so that a truncated file is reported as
  // truncated; a corrupt size field is caught by the bounds checks before any allocation.
  Cursor cur(bytes, n - kHashSize, origin);
  cur.take(kMagicSize + 4, "header");
  const std::uint64_t n_records = cur.u32("number of records");
  for (std::uint64_t r = 0; r < n_records; ++r) {
    const std::string label = "record " + std::to_string(r);
    Record rec;
    const std::uint64_t name_len = cur.u32(label + " name length");
    const unsigned char* name = cur.take(name_len, label + " name");
    rec.name.assign(reinterpret_cast<const char*>(name), static_cast<std::size_t>(name_len));
    if (rec.name.empty()) throw Error(origin + ": corrupt file: " + label + " has an empty name");
    const std::string named = label + " '" + rec.name + "'";

    const std::uint64_t dtype = cur.u8(named + " dtype");
    if (dtype < 1 || dtype > 3) {
      throw Error(origin + ": corrupt file: " + named + " has unknown dtype " + std::to_string(dtype) +
                  " (1 = float64, 2 = int64, 3 = string)");
    }
    rec.dtype = static_cast<DType>(dtype);

    const std::uint64_t ndim = cur.u32(named + " ndim");
    if (ndim > kMaxNdim) {
      throw Error(origin + ": corrupt file: " + named + " has " + std::to_string(ndim) +
                  " dimensions (at most " + std::to_string(kMaxNdim) + ")");
    }
    rec.shape.resize(static_cast<std::size_t>(ndim));
    std::uint64_t count = 1;
    bool overflow = false;
    for (auto& d : rec.shape) {
      d = cur.u64(named + " shape");
      if (d != 0 && count > std::numeric_limits<std::uint64_t>::max() / d) overflow = true;
      count = overflow ? 0 : count * d;
    }
    if (rec.dtype == DType::str && ndim != 1) {
      throw Error(origin + ": corrupt file: string " + named + " has shape " + rec.shape_str() +
                  " (a string has one dimension, its length in bytes)");
    }
    const std::uint64_t item = rec.dtype == DType::str ? 1 : 8;
    if (overflow || count > cur.remaining() / item) {
      std::ostringstream msg;
      msg << origin << ": truncated or corrupt file: " << named << " of shape " << rec.shape_str() << " ("
          << dtype_name(rec.dtype) << ") needs ";
      if (overflow || count > std::numeric_limits<std::uint64_t>::max() / item)
        msg << "more than 2^64";
      else
        msg << count * item;
      msg << " bytes at offset " << cur.offset() << " but only " << cur.remaining()
          << " remain before the checksum";
      throw Error(msg.str());
    }
    const unsigned char* payload = cur.take(count * item, named + " payload");
    const auto count_sz = static_cast<std::size_t>(count);
    if (rec.dtype == DType::str) {
      rec.str.assign(reinterpret_cast<const char*>(payload), count_sz);
    } else if (rec.dtype == DType::f64) {
      rec.f64.resize(count_sz);
      for (std::size_t i = 0; i < count_sz; ++i) {
        const std::uint64_t bits = read_le(payload + 8 * i, 8);
        std::memcpy(&rec.f64[i], &bits, 8);
      }
    } else {
      rec.i64.resize(count_sz);
      for (std::size_t i = 0; i < count_sz; ++i) {
        const std::uint64_t bits = read_le(payload + 8 * i, 8);
        std::memcpy(&rec.i64[i], &bits, 8);
      }
    }
    if (file.index_.count(rec.name)) throw Error(origin + ": corrupt file: duplicate record '" + rec.name + "'");
    file.index_[rec.name] = file.records_.size();
    file.records_.push_back(std::move(rec));
  }
  if (cur.remaining() != 0) {
    throw Error(origin + ": corrupt file: " + std::to_string(cur.remaining()) +
                " unexpected bytes after the last record (offset " + std::to_string(cur.offset()) + ")");
  }
  const std::uint64_t stored = read_le(bytes.data() + n - kHashSize, 8);
  const std::uint64_t computed = fnv1a64(bytes.data(), n - kHashSize);
  if (stored != computed) {
    std::ostringstream msg;
    msg << origin << ": checksum mismatch (stored 0x" << std::hex << stored << ", computed 0x" << computed
        << "): the file is corrupt";
    throw Error(msg.str());
  }
  return file;
}

std::vector<std::string> ModelFile::names() const {
  std::vector<std::string> out;
  out.reserve(records_.size());
  for (const auto& r : records_) out.push_back(r.name);
  return out;
}

bool ModelFile::has(const std::string& name) const { return index_.count(name) != 0; }

const Record& ModelFile::record(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("missing record " + name);
  return records_[it->second];
}

void ModelFile::fail(const std::string& what) const { throw Error(path_ + ": " + what); }

const Record& ModelFile::typed(const std::string& name, DType dtype) const {
  const Record& rec = record(name);
  if (rec.dtype != dtype) {
    fail("record " + name + " has dtype " + dtype_name(rec.dtype) + ", expected " + dtype_name(dtype));
  }
  return rec;
}

void ModelFile::check_shape(const Record& rec, const std::vector<long long>& expected) const {
  bool ok = rec.shape.size() == expected.size();
  for (std::size_t i = 0; ok && i < expected.size(); ++i)
    ok = expected[i] == any || static_cast<long long>(rec.shape[i]) == expected[i];
  if (!ok) fail("record " + rec.name + " has shape " + rec.shape_str() + ", expected " + shape_to_string(expected));
}

ArrayView<double> ModelFile::f64(const std::string& name) const {
  const Record& rec = typed(name, DType::f64);
  return {rec.f64.data(), rec.shape, rec.f64.size()};
}

ArrayView<double> ModelFile::f64(const std::string& name, const std::vector<long long>& expected) const {
  check_shape(typed(name, DType::f64), expected);
  return f64(name);
}

ArrayView<std::int64_t> ModelFile::i64(const std::string& name) const {
  const Record& rec = typed(name, DType::i64);
  return {rec.i64.data(), rec.shape, rec.i64.size()};
}

ArrayView<std::int64_t> ModelFile::i64(const std::string& name, const std::vector<long long>& expected) const {
  check_shape(typed(name, DType::i64), expected);
  return i64(name);
}

double ModelFile::f64_scalar(const std::string& name) const {
  const Record& rec = typed(name, DType::f64);
  if (rec.f64.size() != 1 || rec.shape.size() > 1) check_shape(rec, {1});
  return rec.f64[0];
}

std::int64_t ModelFile::i64_scalar(const std::string& name) const {
  const Record& rec = typed(name, DType::i64);
  if (rec.i64.size() != 1 || rec.shape.size() > 1) check_shape(rec, {1});
  return rec.i64[0];
}

const std::string& ModelFile::str(const std::string& name) const { return typed(name, DType::str).str; }

}  // namespace mlipbias
