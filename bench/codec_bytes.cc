// Bytes per sent element of the sparse wire codec, for every value precision x index encoding,
// on random masks (each element kept with probability = density) of a 2^20-element tensor with
// normal values. Prints a Markdown table (docs/PERFORMANCE.md). Sizes are deterministic (seeded),
// so this measures the format, not the machine.
//   build/bin/bench_codec_bytes [numel]
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cleave/compress/sparse_codec.h"

int main(int argc, char** argv) {
  const uint64_t numel = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : uint64_t{1} << 20;
  const cleave::IndexEncoding encodings[] = {cleave::IndexEncoding::kBitmap,
                                             cleave::IndexEncoding::kDeltaVarint,
                                             cleave::IndexEncoding::kGolombRice};
  std::printf("numel %llu, random mask, values N(0, 1); bytes per sent element (whole payload)\n\n",
              static_cast<unsigned long long>(numel));
  std::printf(
      "| density | precision | bitmap | delta-varint | Golomb-Rice | chosen | x fewer than dense "
      "fp32 |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (double density : {0.01, 0.05, 0.1, 0.25}) {
    std::mt19937_64 rng(static_cast<uint64_t>(density * 1e6));
    std::bernoulli_distribution keep(density);
    std::normal_distribution<float> normal(0, 1);
    std::vector<uint32_t> indices;
    std::vector<float> values;
    for (uint64_t i = 0; i < numel; ++i) {
      if (keep(rng)) {
        indices.push_back(static_cast<uint32_t>(i));
        values.push_back(normal(rng));
      }
    }
    const double count = static_cast<double>(indices.size());
    for (const std::string& name : cleave::ValuePrecisionNames()) {
      const cleave::ValuePrecision precision = cleave::ParseValuePrecision(name);
      std::printf("| %.2f | %s", density, name.c_str());
      for (cleave::IndexEncoding encoding : encodings) {
        const std::string bytes = cleave::EncodeSparse(numel, indices.data(), values.data(),
                                                       indices.size(), precision, encoding);
        std::printf(" | %.3f", static_cast<double>(bytes.size()) / count);
      }
      const std::string chosen =
          cleave::EncodeSparse(numel, indices.data(), values.data(), indices.size(), precision);
      const cleave::DecodedSparse decoded = cleave::DecodeSparse(chosen, {});
      std::printf(" | %.3f (%s) | %.1f |\n", static_cast<double>(chosen.size()) / count,
                  cleave::ToString(decoded.encoding),
                  4.0 * static_cast<double>(numel) / static_cast<double>(chosen.size()));
    }
  }
  return 0;
}
