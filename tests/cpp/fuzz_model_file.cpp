// Mutation fuzzing of the .mlip reader under AddressSanitizer and UBSan: every mutated or
// truncated file must either parse or throw mlipbias::Error, never crash or over-read.
//
//   g++ -std=c++17 -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -Icpp \
//       tests/cpp/fuzz_model_file.cpp cpp/model_file.cpp -o /tmp/fuzz_model_file
//   /tmp/fuzz_model_file some_model.mlip 200000
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

#include "model_file.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE.mlip [iterations]\n", argv[0]);
    return 2;
  }
  std::ifstream in(argv[1], std::ios::binary);
  const std::vector<unsigned char> original((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const long iterations = argc > 2 ? std::atol(argv[2]) : 100000;
  mlipbias::ModelFile::parse(original, argv[1]);  // the seed file must be valid

  std::mt19937_64 rng(12345);
  long parsed = 0, rejected = 0;
  for (long it = 0; it < iterations; ++it) {
    std::vector<unsigned char> data = original;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !data.empty(); ++e) {
      const std::size_t pos = rng() % data.size();
      switch (rng() % 4) {
        case 0: data[pos] ^= static_cast<unsigned char>(1u << (rng() % 8)); break;  // bit flip
        case 1: data[pos] = static_cast<unsigned char>(rng()); break;               // random byte
        case 2: data.resize(pos); break;                                            // truncation
        default: data.insert(data.begin() + static_cast<long>(pos), static_cast<unsigned char>(rng()));
      }
    }
    // Half of the cases get a valid checksum, so the structural checks are reached too.
    if (rng() % 2 && data.size() >= 8) {
      const std::uint64_t h = mlipbias::fnv1a64(data.data(), data.size() - 8);
      for (int b = 0; b < 8; ++b) data[data.size() - 8 + b] = static_cast<unsigned char>(h >> (8 * b));
    }
    try {
      mlipbias::ModelFile::parse(data, "fuzz");
      ++parsed;
    } catch (const mlipbias::Error&) {
      ++rejected;
    }
  }
  std::printf("%ld mutations: %ld parsed, %ld rejected with mlipbias::Error\n", iterations, parsed, rejected);
  return 0;
}
