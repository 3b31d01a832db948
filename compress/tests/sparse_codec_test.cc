#include "cleave/compress/sparse_codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "cleave/core/error.h"

namespace cleave {
namespace {

struct Sparse {
  uint64_t numel;
  std::vector<uint32_t> indices;
  std::vector<float> values;
};

Sparse RandomSparse(uint64_t numel, double density, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> coin(0, 1);
  std::normal_distribution<float> normal(0, 3);
  Sparse out{numel, {}, {}};
  for (uint64_t i = 0; i < numel; ++i) {
    if (coin(rng) < density) {
      out.indices.push_back(static_cast<uint32_t>(i));
      out.values.push_back(normal(rng));
    }
  }
  return out;
}

std::string Encode(const Sparse& s, ValuePrecision precision) {
  return EncodeSparse(s.numel, s.indices.data(), s.values.data(), s.indices.size(), precision);
}

constexpr ValuePrecision kAllPrecisions[] = {ValuePrecision::kFp32, ValuePrecision::kFp16,
                                             ValuePrecision::kBf16, ValuePrecision::kInt8,
                                             ValuePrecision::kInt4};
constexpr IndexEncoding kAllEncodings[] = {IndexEncoding::kBitmap, IndexEncoding::kDeltaVarint,
                                           IndexEncoding::kGolombRice};

bool IsInteger(ValuePrecision precision) {
  return precision == ValuePrecision::kInt8 || precision == ValuePrecision::kInt4;
}

double Levels(ValuePrecision precision) { return precision == ValuePrecision::kInt8 ? 127 : 7; }

float Reference(float value, ValuePrecision precision) {
  switch (precision) {
    case ValuePrecision::kFp16:
      return HalfToFloat(FloatToHalf(value));
    case ValuePrecision::kBf16:
      return Bfloat16ToFloat(FloatToBfloat16(value));
    default:
      return value;
  }
}

// Float precisions: exactly the reference conversion. int8/int4: within half a step (block
// maximum / levels) of the original, plus the decoded value's own fp32 rounding.
void ExpectDecodedClose(const std::vector<float>& original, const std::vector<float>& decoded,
                        ValuePrecision precision) {
  ASSERT_EQ(decoded.size(), original.size());
  for (size_t block = 0; block * 64 < original.size(); ++block) {
    const size_t end = std::min(original.size(), block * 64 + 64);
    double maximum = 0;
    for (size_t i = block * 64; i < end; ++i)
      maximum = std::max(maximum, std::fabs(double{original[i]}));
    for (size_t i = block * 64; i < end; ++i) {
      if (!IsInteger(precision)) {
        ASSERT_EQ(decoded[i], Reference(original[i], precision)) << "value " << i;
        continue;
      }
      const double bound = maximum / Levels(precision) / 2 * (1 + 1e-12) +
                           std::fabs(double{decoded[i]}) * std::ldexp(1.0, -24) +
                           std::numeric_limits<float>::denorm_min();
      ASSERT_LE(std::fabs(double{original[i]} - double{decoded[i]}), bound)
          << "value " << i << " of block " << block << ": " << original[i] << " -> " << decoded[i];
      if (original[i] == 0) {
        ASSERT_EQ(decoded[i], 0.0f);
      }
      ASSERT_FALSE(std::signbit(original[i]) != std::signbit(decoded[i]) && decoded[i] != 0);
    }
  }
}

IndexEncoding Smallest(const Sparse& s) {
  const size_t bitmap = BitmapBytes(s.numel);
  const size_t varint = DeltaVarintBytes(s.indices.data(), s.indices.size());
  const size_t rice = GolombRiceBytes(s.indices.data(), s.indices.size());
  if (rice < bitmap && rice < varint) return IndexEncoding::kGolombRice;
  return bitmap < varint ? IndexEncoding::kBitmap : IndexEncoding::kDeltaVarint;
}

using RoundTripParam = std::tuple<uint64_t, double, ValuePrecision>;
class SparseCodecRoundTrip : public ::testing::TestWithParam<RoundTripParam> {};

TEST_P(SparseCodecRoundTrip, DecodesWhatWasEncoded) {
  const auto [numel, density, precision] = GetParam();
  const Sparse s = RandomSparse(numel, density, numel * 31 + static_cast<uint64_t>(density * 1000));
  const std::string bytes = Encode(s, precision);
  DecodeLimits limits;
  limits.expected_dense_numel = numel;
  const DecodedSparse decoded = DecodeSparse(bytes, limits);
  EXPECT_EQ(decoded.dense_numel, numel);
  EXPECT_EQ(decoded.indices, s.indices);
  ExpectDecodedClose(s.values, decoded.values, precision);
  for (size_t i = 0; i < s.values.size() && !IsInteger(precision); ++i) {
    const float tolerance = precision == ValuePrecision::kFp32   ? 0.0f
                            : precision == ValuePrecision::kFp16 ? 1e-3f
                                                                 : 8e-3f;
    EXPECT_LE(std::fabs(decoded.values[i] - s.values[i]),
              tolerance * std::fabs(s.values[i]) + 1e-7f);
  }
  // The smallest index encoding was chosen, and the payload is exactly header + index + values.
  EXPECT_EQ(decoded.encoding, Smallest(s));
  const size_t index_bytes =
      IndexBytes(decoded.encoding, numel, s.indices.data(), s.indices.size());
  EXPECT_LE(bytes.size(), 5 + 3 * 5 + index_bytes + ValueBytes(precision, s.indices.size()));
  EXPECT_GT(bytes.size(), index_bytes + ValueBytes(precision, s.indices.size()));
}

INSTANTIATE_TEST_SUITE_P(SizesDensitiesPrecisions, SparseCodecRoundTrip,
                         ::testing::Combine(::testing::Values(0u, 1u, 7u, 64u, 1000u, 100003u),
                                            ::testing::Values(0.0, 0.001, 0.01, 0.1, 0.5, 1.0),
                                            ::testing::ValuesIn(kAllPrecisions)));

// Hand-made cases for every precision x index encoding (the encoding forced).
struct Case {
  const char* name;
  uint64_t numel;
  std::vector<uint32_t> indices;
  std::vector<float> values;
};

std::vector<Case> EdgeCases() {
  std::vector<Case> cases;
  cases.push_back({"empty", 0, {}, {}});
  cases.push_back({"none_of_100", 100, {}, {}});
  cases.push_back({"one_of_one", 1, {0}, {-2.5f}});
  cases.push_back({"last_of_1000", 1000, {999}, {0.75f}});
  // Indices i x stride, jittered where the stride leaves room.
  auto run = [](const char* name, uint64_t numel, size_t count, uint32_t stride, auto value) {
    Case c{name, numel, {}, {}};
    for (size_t i = 0; i < count; ++i) {
      c.indices.push_back(static_cast<uint32_t>(i * stride + (stride > 2 ? i % 3 : 0)));
      c.values.push_back(value(i));
    }
    return c;
  };
  cases.push_back(
      run("block_of_64", 64 * 5 + 2, 64, 5, [](size_t i) { return std::sin(i * 1.0f); }));
  cases.push_back(
      run("last_block_shorter_65", 65 * 7, 65, 7, [](size_t i) { return i * 0.5f - 9.0f; }));
  cases.push_back(
      run("two_blocks_and_3", 131 * 3, 131, 3, [](size_t i) { return std::cos(i * 0.3f) * 4; }));
  cases.push_back(run("all_zero_first_block", 200 * 2, 200, 2,
                      [](size_t i) { return i < 64 ? 0.0f : std::sin(i * 0.7f); }));
  cases.push_back(
      run("all_negative", 100 * 9, 100, 9, [](size_t i) { return -1.0f - i * 0.125f; }));
  cases.push_back(run("huge", 70 * 4, 70, 4, [](size_t i) {
    return i % 5 == 0 ? std::numeric_limits<float>::max() * (i % 2 ? -1.0f : 1.0f)
                      : 3e37f * std::sin(i * 1.0f);
  }));
  cases.push_back(run("tiny", 70 * 4, 70, 4, [](size_t i) { return 1e-30f * std::sin(i * 1.0f); }));
  cases.push_back(run("denormals", 70 * 4, 70, 4, [](size_t i) {
    return std::numeric_limits<float>::denorm_min() * static_cast<float>(i % 9) *
           (i % 2 ? -1.0f : 1.0f);
  }));
  cases.push_back(run("huge_and_tiny_in_one_block", 64 * 2, 64, 2,
                      [](size_t i) { return i == 0 ? 1e30f : 1e-20f * static_cast<float>(i); }));
  cases.push_back(run("dense_all", 300, 300, 1, [](size_t i) { return i * 0.01f; }));
  // Gaps at the ends of the uint32 range.
  cases.push_back({"wide_gaps",
                   uint64_t{1} << 32,
                   {0, 1, 5, 1u << 31, 0xfffffffeu, 0xffffffffu},
                   {1, -1, 2, -2, 3, -3}});
  return cases;
}

using EdgeParam = std::tuple<size_t, ValuePrecision, IndexEncoding>;
class SparseCodecEdgeCases : public ::testing::TestWithParam<EdgeParam> {};

TEST_P(SparseCodecEdgeCases, RoundTripsWithTheEncodingForced) {
  const auto [case_index, precision, encoding] = GetParam();
  const Case c = EdgeCases().at(case_index);
  if (encoding == IndexEncoding::kBitmap && c.numel > (uint64_t{1} << 24))
    GTEST_SKIP() << "512 MiB bitmap";
  SCOPED_TRACE(c.name);
  const std::string bytes = EncodeSparse(c.numel, c.indices.data(), c.values.data(),
                                         c.indices.size(), precision, encoding);
  // Header (magic, version, precision, encoding, three varints) + index section + values.
  const size_t header = bytes.size() -
                        IndexBytes(encoding, c.numel, c.indices.data(), c.indices.size()) -
                        ValueBytes(precision, c.indices.size());
  EXPECT_GE(header, 8u);
  EXPECT_LE(header, 5u + 3 * 5);
  EXPECT_EQ(static_cast<uint8_t>(bytes[2]), kSparseFormatVersion);
  bool overflows = false;
  for (float v : c.values) overflows |= !std::isfinite(Reference(v, precision));
  if (overflows) {  // fp16 cannot hold these: the decoder refuses the Inf
    EXPECT_THROW(DecodeSparse(bytes, {}), NotFinite);
    return;
  }
  const DecodedSparse decoded = DecodeSparse(bytes, {});
  EXPECT_EQ(decoded.encoding, encoding);
  EXPECT_EQ(decoded.dense_numel, c.numel);
  EXPECT_EQ(decoded.indices, c.indices);
  ExpectDecodedClose(c.values, decoded.values, precision);
  // The values-only payload carries the same values.
  const std::string values = EncodeValues(c.values.data(), c.values.size(), precision);
  EXPECT_EQ(values.size(), ValueBytes(precision, c.values.size()));
  EXPECT_EQ(DecodeValues(values, c.values.size(), precision), decoded.values);
}

INSTANTIATE_TEST_SUITE_P(EveryPrecisionAndEncoding, SparseCodecEdgeCases,
                         ::testing::Combine(::testing::Range(size_t{0}, EdgeCases().size()),
                                            ::testing::ValuesIn(kAllPrecisions),
                                            ::testing::ValuesIn(kAllEncodings)),
                         [](const ::testing::TestParamInfo<EdgeParam>& info) {
                           return std::string(EdgeCases().at(std::get<0>(info.param)).name) + "_" +
                                  ToString(std::get<1>(info.param)) + "_" +
                                  (std::get<2>(info.param) == IndexEncoding::kBitmap ? "bitmap"
                                   : std::get<2>(info.param) == IndexEncoding::kDeltaVarint
                                       ? "varint"
                                       : "rice");
                         });

TEST(BlockQuantizationTest, ErrorIsAtMostHalfAStepPerBlock) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<float> magnitude(0, 4);
  for (ValuePrecision precision : {ValuePrecision::kInt8, ValuePrecision::kInt4}) {
    for (size_t count : {1u, 63u, 64u, 65u, 127u, 1000u, 4097u}) {
      std::vector<float> values(count);
      for (float& v : values) v = magnitude(rng) * (rng() % 2 ? 1.0f : -1.0f);
      const std::vector<float> back =
          DecodeValues(EncodeValues(values.data(), count, precision), count, precision);
      ExpectDecodedClose(values, back, precision);
      // Each block's largest magnitude is exact (q = +-L).
      for (size_t b = 0; b * 64 < count; ++b) {
        size_t arg = b * 64;
        for (size_t i = b * 64; i < std::min(count, b * 64 + 64); ++i) {
          if (std::fabs(values[i]) > std::fabs(values[arg])) arg = i;
        }
        EXPECT_FLOAT_EQ(back[arg], values[arg]);
      }
    }
  }
}

TEST(BlockQuantizationTest, SizesAreScalesPlusPackedIntegers) {
  EXPECT_EQ(ValueBytes(ValuePrecision::kInt8, 0), 0u);
  EXPECT_EQ(ValueBytes(ValuePrecision::kInt8, 1), 4u + 1);
  EXPECT_EQ(ValueBytes(ValuePrecision::kInt8, 64), 4u + 64);
  EXPECT_EQ(ValueBytes(ValuePrecision::kInt8, 65), 8u + 65);
  EXPECT_EQ(ValueBytes(ValuePrecision::kInt4, 1), 4u + 1);
  EXPECT_EQ(ValueBytes(ValuePrecision::kInt4, 64), 4u + 32);
  EXPECT_EQ(ValueBytes(ValuePrecision::kInt4, 129), 12u + 65);
  EXPECT_EQ(ValueBytes(ValuePrecision::kFp16, 10), 20u);
  EXPECT_EQ(ValueBytes(ValuePrecision::kFp32, 10), 40u);
  // Huge counts do not overflow.
  EXPECT_EQ(ValueBytes(ValuePrecision::kInt8, uint64_t{1} << 32),
            (uint64_t{1} << 32) + (uint64_t{1} << 28));
}

TEST(SparseCodecTest, TheChooserPicksTheSmallestOfThree) {
  // Random positions at 5%: Golomb-Rice (about 7 bits a position) beats varints and the bitmap.
  const Sparse random = RandomSparse(100000, 0.05, 11);
  EXPECT_EQ(Smallest(random), IndexEncoding::kGolombRice);
  EXPECT_LT(GolombRiceBytes(random.indices.data(), random.indices.size()),
            DeltaVarintBytes(random.indices.data(), random.indices.size()));
  EXPECT_EQ(DecodeSparse(Encode(random, ValuePrecision::kInt8), {}).encoding,
            IndexEncoding::kGolombRice);
  // Random at 25%: still Golomb-Rice, under the bitmap's 4 bits a position.
  const Sparse quarter = RandomSparse(100000, 0.25, 12);
  EXPECT_EQ(DecodeSparse(Encode(quarter, ValuePrecision::kInt4), {}).encoding,
            IndexEncoding::kGolombRice);
  EXPECT_LT(GolombRiceBytes(quarter.indices.data(), quarter.indices.size()),
            BitmapBytes(quarter.numel));
  // Everything set: the bitmap.
  const Sparse all = RandomSparse(10000, 1.0, 1);
  EXPECT_EQ(DecodeSparse(Encode(all, ValuePrecision::kFp32), {}).encoding, IndexEncoding::kBitmap);
  // Bimodal gaps (0 and ~10^6 alternately): one parameter fits neither, varints win.
  Sparse bimodal{uint64_t{1} << 30, {}, {}};
  for (uint32_t i = 0, at = 0; i < 1000; ++i, at += i % 2 ? 1 : 1000003) {
    bimodal.indices.push_back(at);
    bimodal.values.push_back(1.0f);
  }
  EXPECT_EQ(DecodeSparse(Encode(bimodal, ValuePrecision::kFp16), {}).encoding,
            IndexEncoding::kDeltaVarint);
}

TEST(HalfPrecisionTest, KnownValues) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);                          // max half
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);                          // rounds to Inf
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);             // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000);             // below half of it: 0
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // halfway: to even
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // halfway: to even (up)
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::nanf("")))));
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  for (uint32_t bits = 0; bits < 0x7c00; ++bits) {  // every finite half survives the trip
    ASSERT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(bits))), bits);
  }
}

TEST(Bfloat16Test, KnownValues) {
  EXPECT_EQ(FloatToBfloat16(1.0f), 0x3f80);
  EXPECT_EQ(Bfloat16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(FloatToBfloat16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // halfway: to even
  EXPECT_EQ(FloatToBfloat16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // halfway: to even
  EXPECT_TRUE(std::isnan(Bfloat16ToFloat(FloatToBfloat16(std::nanf("")))));
  EXPECT_EQ(FloatToBfloat16(std::numeric_limits<float>::max()), 0x7f80);  // overflow: Inf
}

// A valid payload to break: 3 of 100 elements, delta-varint, fp32.
std::string GoodPayload() {
  const uint32_t indices[] = {2, 50, 99};
  const float values[] = {1.0f, -2.0f, 3.0f};
  return EncodeSparse(100, indices, values, 3, ValuePrecision::kFp32);
}

// 3 of 10 elements, delta-varint, int8 with block maximum 127 (so every value is a level).
std::string Int8Payload() {
  const uint32_t indices[] = {1, 4, 9};
  const float values[] = {63.0f, -127.0f, 1.0f};
  return EncodeSparse(10, indices, values, 3, ValuePrecision::kInt8, IndexEncoding::kDeltaVarint);
}

void ExpectInvalid(const std::string& bytes, DecodeLimits limits = {}) {
  EXPECT_THROW(DecodeSparse(bytes, limits), InvalidInput);
}

TEST(SparseCodecMalformedTest, EveryKindIsRejected) {
  const std::string good = GoodPayload();
  ASSERT_NO_THROW(DecodeSparse(good, {}));
  // Header: magic 2 | version | precision | encoding | numel=100 | count=3 | index bytes=3.
  ASSERT_EQ(good.size(), 5u + 1 + 1 + 1 + 3 + 12);
  for (size_t cut = 0; cut < good.size(); ++cut) ExpectInvalid(good.substr(0, cut));  // truncated
  ExpectInvalid(good + "x");                                                          // trailing
  std::string bad = good;
  bad[0] = 'X';
  ExpectInvalid(bad);  // magic
  bad = good;
  bad[2] = 9;
  ExpectInvalid(bad);  // version
  bad = good;
  bad[3] = 7;
  ExpectInvalid(bad);  // precision
  bad = good;
  bad[4] = 5;
  ExpectInvalid(bad);  // encoding
  bad = good;
  bad[6] = 101;
  ExpectInvalid(bad);  // count > numel
  bad = good;
  bad[10] = 49;  // last gap: 50 + 1 + 49 = 100 == numel: out of range
  ExpectInvalid(bad);
  DecodeLimits limits;
  limits.expected_dense_numel = 99;
  ExpectInvalid(good, limits);  // wrong dense size
  limits = {};
  limits.max_count = 2;
  ExpectInvalid(good, limits);
  // NaN values are refused unless allowed.
  const uint32_t index = 0;
  const float nan = std::nanf("");
  const std::string with_nan = EncodeSparse(1, &index, &nan, 1, ValuePrecision::kFp32);
  ExpectInvalid(with_nan);
  limits = {};
  limits.allow_nonfinite = true;
  EXPECT_NO_THROW(DecodeSparse(with_nan, limits));
}

TEST(SparseCodecMalformedTest, HugeDeclaredSizesAllocateNothing) {
  // numel 2^40 and count 2^40 with a tiny body: must fail on the limits, not allocate.
  std::string bytes = {'C', 'S', 1, 0, 1};
  auto varint = [&bytes](uint64_t v) {
    while (v >= 0x80) {
      bytes.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    bytes.push_back(static_cast<char>(v));
  };
  varint(uint64_t{1} << 40);
  varint(uint64_t{1} << 40);
  varint(0);
  ExpectInvalid(bytes);
  DecodeLimits generous;
  generous.max_dense_numel = uint64_t{1} << 62;
  generous.max_count = uint64_t{1} << 62;
  ExpectInvalid(bytes, generous);  // still bounded by 2^32 and by the bytes present
  // Varint longer than 10 bytes.
  std::string long_varint = {'C', 'S', 1, 0, 1};
  long_varint.append(11, '\xff');
  ExpectInvalid(long_varint);
}

TEST(SparseCodecMalformedTest, BitmapChecks) {
  const Sparse dense = RandomSparse(20, 0.9, 4);
  std::string bytes = Encode(dense, ValuePrecision::kFp32);
  ASSERT_EQ(DecodeSparse(bytes, {}).encoding, IndexEncoding::kBitmap);
  // Header is 8 bytes here (numel 20, count < 128, index bytes 3); bitmap follows.
  std::string bad = bytes;
  bad[8 + 2] = static_cast<char>(bad[8 + 2] | 0x80);  // bit 23 >= numel 20
  ExpectInvalid(bad);
  bad = bytes;
  bad[8] = static_cast<char>(bad[8] ^ 0x01);  // popcount != count
  ExpectInvalid(bad);
}

// The first bit past the end of the data (index == numel, a padding bit of the last byte), with
// the count still right: the range check alone must refuse it.
TEST(SparseCodecMalformedTest, ABitmapBitAtExactlyTheDenseSizeIsRefused) {
  const Sparse dense = RandomSparse(20, 0.9, 4);
  std::string bytes = Encode(dense, ValuePrecision::kFp32);
  ASSERT_EQ(DecodeSparse(bytes, {}).encoding, IndexEncoding::kBitmap);
  ASSERT_EQ(dense.indices.front(), 0u);
  std::string bad = bytes;
  bad[8] = static_cast<char>(bad[8] & ~0x01);         // clear bit 0 ...
  bad[8 + 2] = static_cast<char>(bad[8 + 2] | 0x10);  // ... and set bit 20 (numel 20)
  try {
    DecodeSparse(bad, {});
    FAIL() << "a bit at index 20 of 20 was accepted";
  } catch (const InvalidInput& error) {
    EXPECT_NE(std::string(error.what()).find("beyond dense size 20"), std::string::npos)
        << error.what();
  }
}

// A count one above the dense size is refused as such, before any index is read.
TEST(SparseCodecMalformedTest, ACountAboveTheDenseSizeIsRefusedNamingBoth) {
  std::string bytes = {'C', 'S', 1, 0, 1};  // magic, version, fp32, delta-varint
  bytes += {4, 5, 5};                       // dense size 4, count 5, 5 index bytes
  bytes += std::string(5, '\0');            // indices 0, 1, 2, 3, 4
  bytes += std::string(5 * 4, '\0');        // five fp32 zeros
  try {
    DecodeSparse(bytes, {});
    FAIL() << "a count of 5 over a dense size of 4 was accepted";
  } catch (const InvalidInput& error) {
    EXPECT_NE(std::string(error.what()).find("count 5 exceeds dense size 4"), std::string::npos)
        << error.what();
  }
}

TEST(SparseCodecMalformedTest, RandomMutationsNeverCrash) {
  std::mt19937_64 rng(12345);
  const std::vector<std::string> seeds = {
      GoodPayload(),
      Encode(RandomSparse(300, 0.7, 2), ValuePrecision::kFp16),
      Encode(RandomSparse(3000, 0.02, 3), ValuePrecision::kBf16),
      Encode(RandomSparse(3000, 0.05, 4), ValuePrecision::kInt8),  // Golomb-Rice, int8
      Encode(RandomSparse(500, 0.3, 5), ValuePrecision::kInt4),    // Golomb-Rice, int4
      Int8Payload()};
  int decoded = 0, rejected = 0;
  for (const std::string& seed : seeds) ASSERT_NO_THROW(DecodeSparse(seed, {}));
  for (int trial = 0; trial < 5000; ++trial) {
    std::string bytes = seeds[trial % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      switch (rng() % 3) {
        case 0:
          bytes[rng() % bytes.size()] ^= static_cast<char>(1 << (rng() % 8));
          break;
        case 1:
          bytes.resize(rng() % bytes.size());
          break;
        case 2:
          bytes.insert(bytes.begin() + static_cast<long>(rng() % bytes.size()),
                       static_cast<char>(rng()));
          break;
      }
    }
    try {
      const DecodedSparse out = DecodeSparse(bytes, {});
      for (size_t i = 1; i < out.indices.size(); ++i) ASSERT_GT(out.indices[i], out.indices[i - 1]);
      for (uint32_t index : out.indices) ASSERT_LT(index, out.dense_numel);
      ASSERT_EQ(out.values.size(), out.indices.size());
      ++decoded;
    } catch (const InvalidInput&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(decoded + rejected, 5000);
}

void PutVarint(std::string* bytes, uint64_t v) {
  while (v >= 0x80) {
    bytes->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  bytes->push_back(static_cast<char>(v));
}

std::string Header(uint8_t version, ValuePrecision precision, IndexEncoding encoding,
                   uint64_t numel, uint64_t count, uint64_t index_bytes) {
  std::string bytes = {'C', 'S', static_cast<char>(version), static_cast<char>(precision),
                       static_cast<char>(encoding)};
  PutVarint(&bytes, numel);
  PutVarint(&bytes, count);
  PutVarint(&bytes, index_bytes);
  return bytes;
}

// A hand-built Golomb-Rice payload with `count` fp32 zeros as values.
std::string RicePayload(uint64_t numel, uint64_t count, const std::string& section) {
  return Header(2, ValuePrecision::kFp32, IndexEncoding::kGolombRice, numel, count,
                section.size()) +
         section + std::string(count * 4, '\0');
}

void ExpectInvalidWith(const std::string& bytes, const std::string& expected,
                       DecodeLimits limits = {}) {
  try {
    DecodeSparse(bytes, limits);
    FAIL() << "accepted; expected an error containing '" << expected << "'";
  } catch (const InvalidInput& error) {
    EXPECT_NE(std::string(error.what()).find(expected), std::string::npos) << error.what();
  }
}

TEST(GolombRiceMalformedTest, AHandBuiltStreamDecodes) {
  // k = 2: values 5 (q 1, low 01), 0 (q 0, low 00): indices 5 and 6. Bits from the LSB:
  // 0 1 | 1 0 | 1 | 0 0 -> 0b0010110 = 0x16.
  const DecodedSparse out = DecodeSparse(RicePayload(10, 2, {'\x02', '\x16'}), {});
  EXPECT_EQ(out.indices, (std::vector<uint32_t>{5, 6}));
  EXPECT_EQ(out.encoding, IndexEncoding::kGolombRice);
}

TEST(GolombRiceMalformedTest, TruncatedBitStream) {
  // k = 0, count 3, one byte of zeros: the first unary run reaches the end of the stream.
  ExpectInvalidWith(RicePayload(1000, 3, {'\x00', '\x00'}), "bit stream truncated at entry 0");
  // k = 5: entry 0 fits (bit 0 = 1, five low bits), entry 1's run meets the end.
  ExpectInvalidWith(RicePayload(1000, 2, {'\x05', '\x01', '\x00'}),
                    "bit stream truncated at entry 1");
  // k = 7, count 1: eight zero bits, then nothing (the dense size allows a longer run).
  ExpectInvalidWith(RicePayload(1 << 20, 1, {'\x07', '\x00'}), "truncated at entry 0");
  // k = 3: the unary part ends in the last bit, its three low bits are missing.
  ExpectInvalidWith(RicePayload(1000, 1, {'\x03', '\x80'}), "truncated at entry 0");
  // More entries than the stream could hold at k + 1 bits each: refused before decoding.
  ExpectInvalidWith(RicePayload(1000, 100, {'\x00', '\xff'}), "cannot hold 100 entries");
}

TEST(GolombRiceMalformedTest, UnaryRunLongerThanTheDenseSizeAllows) {
  // Dense size 16, k = 0: no value exceeds 15, a run of 24 zeros is refused at the cap (not at
  // the end of the data).
  ExpectInvalidWith(RicePayload(16, 1, {'\x00', '\x00', '\x00', '\x00', '\x01'}), "unary run");
  // A long run in a large tensor with a large k: the cap is (numel - 1) >> k.
  ExpectInvalidWith(RicePayload(1 << 20, 1, std::string(1, '\x14') + std::string(40, '\0')),
                    "longer than the dense size allows (0)");
}

TEST(GolombRiceMalformedTest, AGapPastTheDenseSizeIsRefused) {
  // k = 0, dense 16: values 10 (index 10) then 5 (index 16): bits 10 and 16 set.
  ExpectInvalidWith(RicePayload(16, 2, {'\x00', '\x00', '\x04', '\x01'}),
                    "index 16 at entry 1 is out of range (dense size 16)");
  // The same stream in a dense size of 17 decodes.
  EXPECT_EQ(DecodeSparse(RicePayload(17, 2, {'\x00', '\x00', '\x04', '\x01'}), {}).indices,
            (std::vector<uint32_t>{10, 16}));
}

TEST(GolombRiceMalformedTest, ParameterPaddingAndTrailingBytes) {
  ExpectInvalidWith(RicePayload(16, 0, {'\x20'}), "parameter 32 exceeds 31");
  ExpectInvalidWith(RicePayload(16, 0, {}), "no parameter byte");
  // Value 0 with k = 0 is the single bit 1; the seven padding bits must be zero.
  EXPECT_EQ(DecodeSparse(RicePayload(16, 1, {'\x00', '\x01'}), {}).indices,
            (std::vector<uint32_t>{0}));
  ExpectInvalidWith(RicePayload(16, 1, {'\x00', '\x03'}), "padding bits are not zero");
  ExpectInvalidWith(RicePayload(16, 1, {'\x00', '\x01', '\x00'}), "1 trailing bytes");
}

TEST(BlockQuantizationMalformedTest, NonFiniteOrNegativeScales) {
  const std::string good = Int8Payload();
  // Header 8 bytes, three varint index bytes, then the block's scale (fp32), then 3 integers.
  ASSERT_EQ(good.size(), 8u + 3 + 4 + 3);
  ASSERT_EQ(DecodeSparse(good, {}).values, (std::vector<float>{63.0f, -127.0f, 1.0f}));
  for (float scale : {std::nanf(""), std::numeric_limits<float>::infinity(), -1.0f}) {
    std::string bad = good;
    std::memcpy(bad.data() + 11, &scale, 4);
    ExpectInvalidWith(bad, "(must be finite and >= 0)");
    DecodeLimits lenient;
    lenient.allow_nonfinite = true;  // a scale is never allowed to be non-finite
    ExpectInvalidWith(bad, "(must be finite and >= 0)", lenient);
  }
  // A NaN value on the encoding side travels as a NaN scale, which the receiver refuses.
  const float with_nan[] = {1.0f, std::nanf(""), 2.0f};
  const std::string nan_values = EncodeValues(with_nan, 3, ValuePrecision::kInt4);
  EXPECT_THROW(DecodeValues(nan_values, 3, ValuePrecision::kInt4), InvalidInput);
}

TEST(BlockQuantizationMalformedTest, IntegersOutsideTheLevelsAndInt4Padding) {
  std::string bad = Int8Payload();
  bad[15] = static_cast<char>(0x80);  // -128 is not a level of int8 (-127..127)
  ExpectInvalidWith(bad, "int8 value 0 is -128");
  const float values[] = {0.5f, -1.0f, 0.25f};
  const std::string good = EncodeValues(values, 3, ValuePrecision::kInt4);
  ASSERT_EQ(good.size(), 4u + 2);
  EXPECT_NO_THROW(DecodeValues(good, 3, ValuePrecision::kInt4));
  std::string padded = good;
  padded[5] = static_cast<char>(padded[5] | 0x30);  // the unused high nibble after 3 values
  EXPECT_THROW(DecodeValues(padded, 3, ValuePrecision::kInt4), InvalidInput);
  std::string minus_eight = good;
  minus_eight[4] = static_cast<char>((minus_eight[4] & 0xf0) | 0x08);  // -8: not a level
  EXPECT_THROW(DecodeValues(minus_eight, 3, ValuePrecision::kInt4), InvalidInput);
  // 4 values take the same 6 bytes as 3: a 4th non-zero value is not read as padding.
  const float four[] = {0.5f, -1.0f, 0.25f, 1.0f};
  EXPECT_THROW(DecodeValues(EncodeValues(four, 4, ValuePrecision::kInt4), 3, ValuePrecision::kInt4),
               InvalidInput);
}

TEST(BlockQuantizationMalformedTest, CountMismatch) {
  std::string bad = Int8Payload();
  bad[6] = 2;  // count 2 with three indices and three values present
  ExpectInvalidWith(bad, "header promises");
  bad = Int8Payload();
  bad[6] = 4;
  ExpectInvalidWith(bad, "header promises");
  const float values[64 + 1] = {};
  const std::string block_and_one = EncodeValues(values, 65, ValuePrecision::kInt8);
  EXPECT_THROW(DecodeValues(block_and_one, 64, ValuePrecision::kInt8), InvalidInput);
  EXPECT_THROW(DecodeValues(block_and_one, 66, ValuePrecision::kInt8), InvalidInput);
  EXPECT_EQ(DecodeValues(block_and_one, 65, ValuePrecision::kInt8).size(), 65u);
}

TEST(SparseFormatVersionTest, VersionOnePayloadsStillDecodeAndNewFeaturesNeedVersionTwo) {
  const Sparse s = RandomSparse(1000, 0.01, 5);
  std::string v1 = EncodeSparse(s.numel, s.indices.data(), s.values.data(), s.indices.size(),
                                ValuePrecision::kFp16, IndexEncoding::kDeltaVarint);
  v1[2] = 1;
  EXPECT_EQ(DecodeSparse(v1, {}).indices, s.indices);
  std::string v1_int8 = Int8Payload();
  v1_int8[2] = 1;
  ExpectInvalidWith(v1_int8, "unknown value precision 3 in a version 1 sparse payload");
  std::string v1_rice = RicePayload(16, 1, {'\x00', '\x01'});
  v1_rice[2] = 1;
  ExpectInvalidWith(v1_rice, "unknown index encoding 2 in a version 1 sparse payload");
  std::string v3 = Int8Payload();
  v3[2] = 3;
  ExpectInvalidWith(v3, "unknown sparse format version 3 (this build reads 1 to 2)");
  std::string v2_precision = Int8Payload();
  v2_precision[3] = 5;
  ExpectInvalidWith(v2_precision, "unknown value precision 5 in a version 2");
}

TEST(ValuesCodecTest, RoundTripAndCountCheck) {
  const std::vector<float> values = {1.5f, -0.25f, 1e-3f};
  for (ValuePrecision precision : kAllPrecisions) {
    SCOPED_TRACE(ToString(precision));
    const std::string bytes = EncodeValues(values.data(), values.size(), precision);
    EXPECT_EQ(bytes.size(), ValueBytes(precision, values.size()));
    const std::vector<float> back = DecodeValues(bytes, 3, precision);
    ExpectDecodedClose(values, back, precision);
    EXPECT_THROW(DecodeValues(bytes, 2, precision), InvalidInput);
    EXPECT_THROW(DecodeValues(bytes + "x", 3, precision), InvalidInput);
  }
  EXPECT_THROW(ParseValuePrecision("fp8"), UserError);
  EXPECT_EQ(ParseValuePrecision("bf16"), ValuePrecision::kBf16);
  EXPECT_EQ(ParseValuePrecision("int8"), ValuePrecision::kInt8);
  EXPECT_EQ(ParseValuePrecision("int4"), ValuePrecision::kInt4);
  EXPECT_EQ(ValuePrecisionList(), "fp32, fp16, bf16, int8, int4");
  for (const std::string& name : ValuePrecisionNames()) {
    EXPECT_EQ(ToString(ParseValuePrecision(name)), name);
  }
}

}  // namespace
}  // namespace cleave
