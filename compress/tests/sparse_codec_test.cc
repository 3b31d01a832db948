#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "cleave/compress/sparse_codec.h"
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

using RoundTripParam = std::tuple<uint64_t, double, ValuePrecision>;
class SparseCodecRoundTrip : public ::testing::TestWithParam<RoundTripParam> {};

float Reference(float value, ValuePrecision precision) {
  switch (precision) {
    case ValuePrecision::kFp32: return value;
    case ValuePrecision::kFp16: return HalfToFloat(FloatToHalf(value));
    case ValuePrecision::kBf16: return Bfloat16ToFloat(FloatToBfloat16(value));
  }
  return value;
}

TEST_P(SparseCodecRoundTrip, DecodesWhatWasEncoded) {
  const auto [numel, density, precision] = GetParam();
  const Sparse s = RandomSparse(numel, density, numel * 31 + static_cast<uint64_t>(density * 1000));
  const std::string bytes = Encode(s, precision);
  DecodeLimits limits;
  limits.expected_dense_numel = numel;
  const DecodedSparse decoded = DecodeSparse(bytes, limits);
  EXPECT_EQ(decoded.dense_numel, numel);
  EXPECT_EQ(decoded.indices, s.indices);
  ASSERT_EQ(decoded.values.size(), s.values.size());
  for (size_t i = 0; i < s.values.size(); ++i) {
    EXPECT_EQ(decoded.values[i], Reference(s.values[i], precision));
    const float tolerance = precision == ValuePrecision::kFp32   ? 0.0f
                            : precision == ValuePrecision::kFp16 ? 1e-3f
                                                                 : 8e-3f;
    EXPECT_LE(std::fabs(decoded.values[i] - s.values[i]), tolerance * std::fabs(s.values[i]) + 1e-7f);
  }
  // The smaller index encoding was chosen.
  const size_t bitmap = BitmapBytes(numel);
  const size_t varint = DeltaVarintBytes(s.indices.data(), s.indices.size());
  EXPECT_EQ(decoded.encoding, bitmap < varint ? IndexEncoding::kBitmap : IndexEncoding::kDeltaVarint);
}

INSTANTIATE_TEST_SUITE_P(
    SizesDensitiesPrecisions, SparseCodecRoundTrip,
    ::testing::Combine(::testing::Values(0u, 1u, 7u, 64u, 1000u, 100003u),
                       ::testing::Values(0.0, 0.001, 0.01, 0.1, 0.5, 1.0),
                       ::testing::Values(ValuePrecision::kFp32, ValuePrecision::kFp16,
                                         ValuePrecision::kBf16)));

TEST(SparseCodecTest, DenseMasksUseABitmapSparseOnesVarints) {
  const Sparse dense = RandomSparse(10000, 0.5, 1);
  const Sparse sparse = RandomSparse(10000, 0.01, 1);
  EXPECT_EQ(DecodeSparse(Encode(dense, ValuePrecision::kFp32), {}).encoding, IndexEncoding::kBitmap);
  EXPECT_EQ(DecodeSparse(Encode(sparse, ValuePrecision::kFp32), {}).encoding,
            IndexEncoding::kDeltaVarint);
}

TEST(HalfPrecisionTest, KnownValues) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);                   // max half
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);                   // rounds to Inf
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);      // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000);      // below half of it: 0
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // halfway: to even
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

void ExpectInvalid(const std::string& bytes, DecodeLimits limits = {}) {
  EXPECT_THROW(DecodeSparse(bytes, limits), InvalidInput);
}

TEST(SparseCodecMalformedTest, EveryKindIsRejected) {
  const std::string good = GoodPayload();
  ASSERT_NO_THROW(DecodeSparse(good, {}));
  // Header: magic 2 | version | precision | encoding | numel=100 | count=3 | index bytes=3.
  ASSERT_EQ(good.size(), 5u + 1 + 1 + 1 + 3 + 12);
  for (size_t cut = 0; cut < good.size(); ++cut) ExpectInvalid(good.substr(0, cut));  // truncated
  ExpectInvalid(good + "x");                                                        // trailing
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
  const std::vector<std::string> seeds = {GoodPayload(),
                                          Encode(RandomSparse(300, 0.7, 2), ValuePrecision::kFp16),
                                          Encode(RandomSparse(3000, 0.02, 3), ValuePrecision::kBf16)};
  int decoded = 0, rejected = 0;
  for (int trial = 0; trial < 5000; ++trial) {
    std::string bytes = seeds[trial % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      switch (rng() % 3) {
        case 0: bytes[rng() % bytes.size()] ^= static_cast<char>(1 << (rng() % 8)); break;
        case 1: bytes.resize(rng() % bytes.size()); break;
        case 2: bytes.insert(bytes.begin() + static_cast<long>(rng() % bytes.size()),
                             static_cast<char>(rng())); break;
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

TEST(ValuesCodecTest, RoundTripAndCountCheck) {
  const std::vector<float> values = {1.5f, -0.25f, 1e-3f};
  for (ValuePrecision precision :
       {ValuePrecision::kFp32, ValuePrecision::kFp16, ValuePrecision::kBf16}) {
    const std::string bytes = EncodeValues(values.data(), values.size(), precision);
    EXPECT_EQ(bytes.size(), values.size() * BytesPerValue(precision));
    const std::vector<float> back = DecodeValues(bytes, 3, precision);
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(back[i], Reference(values[i], precision));
    EXPECT_THROW(DecodeValues(bytes, 2, precision), InvalidInput);
    EXPECT_THROW(DecodeValues(bytes + "x", 3, precision), InvalidInput);
  }
  EXPECT_THROW(ParseValuePrecision("fp8"), UserError);
  EXPECT_EQ(ParseValuePrecision("bf16"), ValuePrecision::kBf16);
}

}  // namespace
}  // namespace cleave
