#include "cleave/compress/sparse_codec.h"

#include <cmath>
#include <cstring>

#include "cleave/core/error.h"

namespace cleave {

namespace {

constexpr char kMagic0 = 'C', kMagic1 = 'S';
constexpr uint8_t kVersion = 1;
constexpr size_t kMaxVarintBytes = 10;

void PutVarint(std::string* out, uint64_t value) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

size_t VarintSize(uint64_t value) {
  size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

// A bounds-checked reader over untrusted bytes.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  size_t remaining() const { return bytes_.size() - position_; }
  uint8_t Byte(const char* what) {
    CLEAVE_CHECK_INPUT(remaining() >= 1, "sparse payload truncated reading ", what);
    return static_cast<uint8_t>(bytes_[position_++]);
  }
  uint64_t Varint(const char* what) {
    uint64_t value = 0;
    for (size_t i = 0; i < kMaxVarintBytes; ++i) {
      const uint8_t byte = Byte(what);
      if (i == kMaxVarintBytes - 1) {
        CLEAVE_CHECK_INPUT(byte <= 1, "varint for ", what, " overflows 64 bits");
      }
      value |= uint64_t{byte & 0x7fu} << (7 * i);
      if ((byte & 0x80) == 0) return value;
    }
    throw InvalidInput(std::string("varint for ") + what + " is too long");
  }
  std::string_view Take(size_t size, const char* what) {
    CLEAVE_CHECK_INPUT(remaining() >= size, "sparse payload truncated: ", what, " needs ", size,
                       " bytes, ", remaining(), " left");
    std::string_view out = bytes_.substr(position_, size);
    position_ += size;
    return out;
  }

 private:
  std::string_view bytes_;
  size_t position_ = 0;
};

void AppendValues(std::string* out, const float* values, size_t count, ValuePrecision precision) {
  const size_t start = out->size();
  out->resize(start + count * BytesPerValue(precision));
  char* dst = out->data() + start;
  for (size_t i = 0; i < count; ++i) {
    switch (precision) {
      case ValuePrecision::kFp32:
        std::memcpy(dst + 4 * i, &values[i], 4);
        break;
      case ValuePrecision::kFp16: {
        const uint16_t bits = FloatToHalf(values[i]);
        std::memcpy(dst + 2 * i, &bits, 2);
        break;
      }
      case ValuePrecision::kBf16: {
        const uint16_t bits = FloatToBfloat16(values[i]);
        std::memcpy(dst + 2 * i, &bits, 2);
        break;
      }
    }
  }
}

std::vector<float> ReadValues(std::string_view bytes, size_t count, ValuePrecision precision,
                              bool allow_nonfinite) {
  std::vector<float> values(count);
  for (size_t i = 0; i < count; ++i) {
    float value;
    if (precision == ValuePrecision::kFp32) {
      std::memcpy(&value, bytes.data() + 4 * i, 4);
    } else {
      uint16_t bits;
      std::memcpy(&bits, bytes.data() + 2 * i, 2);
      value = precision == ValuePrecision::kFp16 ? HalfToFloat(bits) : Bfloat16ToFloat(bits);
    }
    if (!allow_nonfinite && !std::isfinite(value)) {
      throw NotFinite(detail::Concat("value ", i, " is not finite"));
    }
    values[i] = value;
  }
  return values;
}

ValuePrecision CheckedPrecision(uint8_t raw) {
  CLEAVE_CHECK_INPUT(raw <= 2, "unknown value precision ", int{raw});
  return static_cast<ValuePrecision>(raw);
}

}  // namespace

const char* ToString(ValuePrecision precision) {
  switch (precision) {
    case ValuePrecision::kFp32: return "fp32";
    case ValuePrecision::kFp16: return "fp16";
    case ValuePrecision::kBf16: return "bf16";
  }
  return "unknown";
}

ValuePrecision ParseValuePrecision(const std::string& text) {
  if (text == "fp32") return ValuePrecision::kFp32;
  if (text == "fp16") return ValuePrecision::kFp16;
  if (text == "bf16") return ValuePrecision::kBf16;
  throw UserError("unknown value precision '" + text + "' (use fp32, fp16 or bf16)");
}

const std::vector<std::string>& ValuePrecisionNames() {
  static const std::vector<std::string> names = {ToString(ValuePrecision::kFp32),
                                                 ToString(ValuePrecision::kFp16),
                                                 ToString(ValuePrecision::kBf16)};
  return names;
}

size_t BytesPerValue(ValuePrecision precision) {
  return precision == ValuePrecision::kFp32 ? 4 : 2;
}

uint16_t FloatToHalf(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: Inf
  if (abs < 0x38800000u) {
    // Subnormal half (or zero): value = abs_float * 2^24, rounded to nearest even.
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to 0
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exponent;  // 14..24
    uint32_t half = mantissa >> shift;
    const uint32_t remainder = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  // Normal: rebias the exponent and round the mantissa from 23 to 10 bits.
  uint32_t half = ((abs >> 13) - (112u << 10));
  const uint32_t remainder = abs & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = (uint32_t{bits} & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t out;
  if (exponent == 0x1f) {
    out = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent == 0) {
    if (mantissa == 0) {
      out = sign;
    } else {
      // Normalise the subnormal.
      int e = -1;
      do {
        mantissa <<= 1;
        ++e;
      } while ((mantissa & 0x400u) == 0);
      out = sign | ((112u - e) << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else {
    out = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &out, 4);
  return value;
}

uint16_t FloatToBfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float Bfloat16ToFloat(uint16_t bits) {
  const uint32_t out = uint32_t{bits} << 16;
  float value;
  std::memcpy(&value, &out, 4);
  return value;
}

size_t BitmapBytes(uint64_t dense_numel) { return static_cast<size_t>((dense_numel + 7) / 8); }

size_t DeltaVarintBytes(const uint32_t* indices, size_t count) {
  size_t bytes = 0;
  uint64_t previous = 0;
  for (size_t i = 0; i < count; ++i) {
    // The first index is stored as is, later ones as gap - 1 (gaps are >= 1).
    bytes += VarintSize(i == 0 ? indices[0] : indices[i] - previous - 1);
    previous = indices[i];
  }
  return bytes;
}

std::string EncodeSparse(uint64_t dense_numel, const uint32_t* indices, const float* values,
                         size_t count, ValuePrecision precision) {
  CLEAVE_ENFORCE(dense_numel <= (uint64_t{1} << 32), "dense tensor too large for uint32 indices");
  CLEAVE_ENFORCE(count <= dense_numel, "more entries than elements");
  for (size_t i = 0; i < count; ++i) {
    CLEAVE_ENFORCE(indices[i] < dense_numel, "index ", indices[i], " out of range");
    CLEAVE_ENFORCE(i == 0 || indices[i] > indices[i - 1], "indices must be strictly increasing");
  }
  const size_t bitmap_bytes = BitmapBytes(dense_numel);
  const size_t varint_bytes = DeltaVarintBytes(indices, count);
  const IndexEncoding encoding =
      bitmap_bytes < varint_bytes ? IndexEncoding::kBitmap : IndexEncoding::kDeltaVarint;
  const size_t index_bytes = encoding == IndexEncoding::kBitmap ? bitmap_bytes : varint_bytes;

  std::string out;
  out.reserve(32 + index_bytes + count * BytesPerValue(precision));
  out.push_back(kMagic0);
  out.push_back(kMagic1);
  out.push_back(static_cast<char>(kVersion));
  out.push_back(static_cast<char>(precision));
  out.push_back(static_cast<char>(encoding));
  PutVarint(&out, dense_numel);
  PutVarint(&out, count);
  PutVarint(&out, index_bytes);
  if (encoding == IndexEncoding::kBitmap) {
    const size_t start = out.size();
    out.resize(start + bitmap_bytes, '\0');
    for (size_t i = 0; i < count; ++i) {
      out[start + indices[i] / 8] |= static_cast<char>(1u << (indices[i] % 8));
    }
  } else {
    uint64_t previous = 0;
    for (size_t i = 0; i < count; ++i) {
      PutVarint(&out, i == 0 ? indices[0] : indices[i] - previous - 1);
      previous = indices[i];
    }
  }
  AppendValues(&out, values, count, precision);
  return out;
}

DecodedSparse DecodeSparse(std::string_view bytes, const DecodeLimits& limits) {
  Reader reader(bytes);
  const uint8_t magic0 = reader.Byte("magic"), magic1 = reader.Byte("magic");
  CLEAVE_CHECK_INPUT(magic0 == kMagic0 && magic1 == kMagic1, "not a sparse payload (bad magic)");
  const uint8_t version = reader.Byte("version");
  CLEAVE_CHECK_INPUT(version == kVersion, "unknown sparse format version ", int{version});
  const ValuePrecision precision = CheckedPrecision(reader.Byte("precision"));
  const uint8_t raw_encoding = reader.Byte("index encoding");
  CLEAVE_CHECK_INPUT(raw_encoding <= 1, "unknown index encoding ", int{raw_encoding});
  DecodedSparse out;
  out.encoding = static_cast<IndexEncoding>(raw_encoding);
  out.dense_numel = reader.Varint("dense size");
  const uint64_t count = reader.Varint("count");
  const uint64_t index_bytes = reader.Varint("index length");
  CLEAVE_CHECK_INPUT(out.dense_numel <= limits.max_dense_numel &&
                         out.dense_numel <= (uint64_t{1} << 32),
                     "dense size ", out.dense_numel, " exceeds the limit ",
                     limits.max_dense_numel);
  CLEAVE_CHECK_INPUT(limits.expected_dense_numel == 0 ||
                         out.dense_numel == limits.expected_dense_numel,
                     "dense size ", out.dense_numel, ", expected ", limits.expected_dense_numel);
  CLEAVE_CHECK_INPUT(count <= out.dense_numel, "count ", count, " exceeds dense size ",
                     out.dense_numel);
  CLEAVE_CHECK_INPUT(count <= limits.max_count, "count ", count, " exceeds the limit ",
                     limits.max_count);
  // Check declared lengths against the bytes actually present before allocating anything.
  const uint64_t value_bytes = count * BytesPerValue(precision);
  CLEAVE_CHECK_INPUT(index_bytes <= reader.remaining() &&
                         value_bytes == reader.remaining() - index_bytes,
                     "sparse payload has ", reader.remaining(), " bytes after the header, ",
                     "header promises ", index_bytes, " index + ", value_bytes, " value bytes");
  const std::string_view index_data = reader.Take(index_bytes, "indices");
  out.indices.reserve(count);
  if (out.encoding == IndexEncoding::kBitmap) {
    CLEAVE_CHECK_INPUT(index_bytes == BitmapBytes(out.dense_numel), "bitmap has ", index_bytes,
                       " bytes, dense size ", out.dense_numel, " needs ",
                       BitmapBytes(out.dense_numel));
    for (size_t byte = 0; byte < index_data.size(); ++byte) {
      const auto bits = static_cast<uint8_t>(index_data[byte]);
      if (bits == 0) continue;
      for (unsigned bit = 0; bit < 8; ++bit) {
        if ((bits >> bit) & 1u) {
          const uint64_t index = uint64_t{byte} * 8 + bit;
          CLEAVE_CHECK_INPUT(index < out.dense_numel, "bitmap sets bit ", index,
                             " beyond dense size ", out.dense_numel);
          CLEAVE_CHECK_INPUT(out.indices.size() < count, "bitmap has more bits set than count ",
                             count);
          out.indices.push_back(static_cast<uint32_t>(index));
        }
      }
    }
    CLEAVE_CHECK_INPUT(out.indices.size() == count, "bitmap has ", out.indices.size(),
                       " bits set, count is ", count);
  } else {
    Reader indices(index_data);
    uint64_t previous = 0;
    for (uint64_t i = 0; i < count; ++i) {
      const uint64_t delta = indices.Varint("index");
      // First index as is; later ones are gap - 1, so strictly increasing by construction.
      const uint64_t index = i == 0 ? delta : previous + 1 + delta;
      CLEAVE_CHECK_INPUT(delta < out.dense_numel && index < out.dense_numel, "index ", index,
                         " at entry ", i, " is out of range (dense size ", out.dense_numel, ")");
      out.indices.push_back(static_cast<uint32_t>(index));
      previous = index;
    }
    CLEAVE_CHECK_INPUT(indices.remaining() == 0, "index data has ", indices.remaining(),
                       " trailing bytes");
  }
  out.values = ReadValues(reader.Take(value_bytes, "values"), count, precision,
                          limits.allow_nonfinite);
  return out;
}

std::string EncodeValues(const float* values, size_t count, ValuePrecision precision) {
  std::string out;
  AppendValues(&out, values, count, precision);
  return out;
}

std::vector<float> DecodeValues(std::string_view bytes, size_t expected_count,
                                ValuePrecision precision, bool allow_nonfinite) {
  CLEAVE_CHECK_INPUT(bytes.size() == expected_count * BytesPerValue(precision),
                     "values payload has ", bytes.size(), " bytes, expected ", expected_count,
                     " ", ToString(precision), " values");
  return ReadValues(bytes, expected_count, precision, allow_nonfinite);
}

}  // namespace cleave
