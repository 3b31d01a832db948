#include "cleave/compress/sparse_codec.h"

#include <cmath>
#include <cstring>

#include "block_quantization.h"
#include "cleave/core/error.h"
#include "golomb_rice.h"

namespace cleave {

namespace {

constexpr char kMagic0 = 'C', kMagic1 = 'S';
constexpr uint8_t kOldestVersion = 1;  // fp32/fp16/bf16, bitmap or delta-varint
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

unsigned IntegerBits(ValuePrecision precision) {
  return precision == ValuePrecision::kInt8 ? 8 : precision == ValuePrecision::kInt4 ? 4 : 0;
}

void AppendValues(std::string* out, const float* values, size_t count, ValuePrecision precision) {
  if (const unsigned bits = IntegerBits(precision)) {
    block_quantization::Append(out, values, count, bits);
    return;
  }
  const size_t width = precision == ValuePrecision::kFp32 ? 4 : 2;
  const size_t start = out->size();
  out->resize(start + count * width);
  char* dst = out->data() + start;
  for (size_t i = 0; i < count; ++i) {
    if (precision == ValuePrecision::kFp32) {
      std::memcpy(dst + 4 * i, &values[i], 4);
    } else {
      const uint16_t bits =
          precision == ValuePrecision::kFp16 ? FloatToHalf(values[i]) : FloatToBfloat16(values[i]);
      std::memcpy(dst + 2 * i, &bits, 2);
    }
  }
}

// `bytes` is ValueBytes(precision, count) long (the callers check it against the payload).
std::vector<float> ReadValues(std::string_view bytes, size_t count, ValuePrecision precision,
                              bool allow_nonfinite) {
  if (const unsigned bits = IntegerBits(precision)) {
    return block_quantization::Decode(bytes, count, bits, allow_nonfinite);
  }
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

// Version 1 knew three precisions and two index encodings; version 2 adds int8/int4 and
// Golomb-Rice.
ValuePrecision CheckedPrecision(uint8_t raw, uint8_t version) {
  const uint8_t last = version == kOldestVersion ? 2 : 4;
  CLEAVE_CHECK_INPUT(raw <= last, "unknown value precision ", int{raw}, " in a version ",
                     int{version}, " sparse payload");
  return static_cast<ValuePrecision>(raw);
}

IndexEncoding CheckedEncoding(uint8_t raw, uint8_t version) {
  const uint8_t last = version == kOldestVersion ? 1 : 2;
  CLEAVE_CHECK_INPUT(raw <= last, "unknown index encoding ", int{raw}, " in a version ",
                     int{version}, " sparse payload");
  return static_cast<IndexEncoding>(raw);
}

}  // namespace

const char* ToString(ValuePrecision precision) {
  switch (precision) {
    case ValuePrecision::kFp32:
      return "fp32";
    case ValuePrecision::kFp16:
      return "fp16";
    case ValuePrecision::kBf16:
      return "bf16";
    case ValuePrecision::kInt8:
      return "int8";
    case ValuePrecision::kInt4:
      return "int4";
  }
  return "unknown";
}

const std::vector<std::string>& ValuePrecisionNames() {
  static const std::vector<std::string> names = {
      ToString(ValuePrecision::kFp32), ToString(ValuePrecision::kFp16),
      ToString(ValuePrecision::kBf16), ToString(ValuePrecision::kInt8),
      ToString(ValuePrecision::kInt4)};
  return names;
}

std::string ValuePrecisionList() {
  std::string list;
  for (const std::string& name : ValuePrecisionNames()) list += (list.empty() ? "" : ", ") + name;
  return list;
}

ValuePrecision ParseValuePrecision(const std::string& text) {
  const std::vector<std::string>& names = ValuePrecisionNames();
  for (size_t i = 0; i < names.size(); ++i) {
    if (text == names[i]) return static_cast<ValuePrecision>(i);
  }
  throw UserError("unknown value precision '" + text + "' (use " + ValuePrecisionList() + ")");
}

uint64_t ValueBytes(ValuePrecision precision, uint64_t count) {
  if (const unsigned bits = IntegerBits(precision)) {
    return block_quantization::PayloadBytes(bits, count);
  }
  return count * (precision == ValuePrecision::kFp32 ? 4 : 2);
}

const char* ToString(IndexEncoding encoding) {
  switch (encoding) {
    case IndexEncoding::kBitmap:
      return "bitmap";
    case IndexEncoding::kDeltaVarint:
      return "delta-varint";
    case IndexEncoding::kGolombRice:
      return "golomb-rice";
  }
  return "unknown";
}

uint16_t FloatToHalf(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
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

size_t GolombRiceBytes(const uint32_t* indices, size_t count) {
  return golomb_rice::SectionBytes(indices, count, golomb_rice::ChooseParameter(indices, count));
}

size_t IndexBytes(IndexEncoding encoding, uint64_t dense_numel, const uint32_t* indices,
                  size_t count) {
  switch (encoding) {
    case IndexEncoding::kBitmap:
      return BitmapBytes(dense_numel);
    case IndexEncoding::kDeltaVarint:
      return DeltaVarintBytes(indices, count);
    case IndexEncoding::kGolombRice:
      return GolombRiceBytes(indices, count);
  }
  return 0;
}

namespace {

void CheckIndices(uint64_t dense_numel, const uint32_t* indices, size_t count) {
  CLEAVE_ENFORCE(dense_numel <= (uint64_t{1} << 32), "dense tensor too large for uint32 indices");
  CLEAVE_ENFORCE(count <= dense_numel, "more entries than elements");
  for (size_t i = 0; i < count; ++i) {
    CLEAVE_ENFORCE(indices[i] < dense_numel, "index ", indices[i], " out of range");
    CLEAVE_ENFORCE(i == 0 || indices[i] > indices[i - 1], "indices must be strictly increasing");
  }
}

// An index section's encoding and size (and the Golomb-Rice parameter, computed once).
struct IndexPlan {
  IndexEncoding encoding;
  size_t bytes = 0;
  unsigned rice_parameter = 0;
};

IndexPlan PlanIndices(IndexEncoding encoding, uint64_t dense_numel, const uint32_t* indices,
                      size_t count) {
  IndexPlan plan{encoding};
  if (encoding == IndexEncoding::kGolombRice) {
    plan.rice_parameter = golomb_rice::ChooseParameter(indices, count);
    plan.bytes = golomb_rice::SectionBytes(indices, count, plan.rice_parameter);
  } else {
    plan.bytes = IndexBytes(encoding, dense_numel, indices, count);
  }
  return plan;
}

// The smallest encoding; on a tie delta-varint, then the bitmap (what version 1 chose).
IndexPlan SmallestEncoding(uint64_t dense_numel, const uint32_t* indices, size_t count) {
  const IndexPlan bitmap = PlanIndices(IndexEncoding::kBitmap, dense_numel, indices, count);
  const IndexPlan varint = PlanIndices(IndexEncoding::kDeltaVarint, dense_numel, indices, count);
  const IndexPlan rice = PlanIndices(IndexEncoding::kGolombRice, dense_numel, indices, count);
  if (rice.bytes < bitmap.bytes && rice.bytes < varint.bytes) return rice;
  return bitmap.bytes < varint.bytes ? bitmap : varint;
}

void AppendIndices(std::string* out, const IndexPlan& plan, uint64_t dense_numel,
                   const uint32_t* indices, size_t count) {
  const IndexEncoding encoding = plan.encoding;
  if (encoding == IndexEncoding::kBitmap) {
    const size_t start = out->size();
    out->resize(start + BitmapBytes(dense_numel), '\0');
    for (size_t i = 0; i < count; ++i) {
      (*out)[start + indices[i] / 8] |= static_cast<char>(1u << (indices[i] % 8));
    }
  } else if (encoding == IndexEncoding::kDeltaVarint) {
    uint64_t previous = 0;
    for (size_t i = 0; i < count; ++i) {
      PutVarint(out, i == 0 ? indices[0] : indices[i] - previous - 1);
      previous = indices[i];
    }
  } else {
    golomb_rice::AppendSection(out, indices, count, plan.rice_parameter);
  }
}

struct Header {
  uint8_t version = 0;
  ValuePrecision precision = ValuePrecision::kFp32;
  IndexEncoding encoding = IndexEncoding::kDeltaVarint;
  uint64_t dense_numel = 0, count = 0, index_bytes = 0;
};

// Reads and checks the header against the limits and against the bytes that follow it.
Header ReadHeader(Reader* reader, const DecodeLimits& limits) {
  const uint8_t magic0 = reader->Byte("magic"), magic1 = reader->Byte("magic");
  CLEAVE_CHECK_INPUT(magic0 == kMagic0 && magic1 == kMagic1, "not a sparse payload (bad magic)");
  Header h;
  h.version = reader->Byte("version");
  CLEAVE_CHECK_INPUT(h.version >= kOldestVersion && h.version <= kSparseFormatVersion,
                     "unknown sparse format version ", int{h.version}, " (this build reads ",
                     int{kOldestVersion}, " to ", int{kSparseFormatVersion}, ")");
  h.precision = CheckedPrecision(reader->Byte("precision"), h.version);
  h.encoding = CheckedEncoding(reader->Byte("index encoding"), h.version);
  h.dense_numel = reader->Varint("dense size");
  h.count = reader->Varint("count");
  h.index_bytes = reader->Varint("index length");
  CLEAVE_CHECK_INPUT(
      h.dense_numel <= limits.max_dense_numel && h.dense_numel <= (uint64_t{1} << 32),
      "dense size ", h.dense_numel, " exceeds the limit ", limits.max_dense_numel);
  CLEAVE_CHECK_INPUT(
      limits.expected_dense_numel == 0 || h.dense_numel == limits.expected_dense_numel,
      "dense size ", h.dense_numel, ", expected ", limits.expected_dense_numel);
  CLEAVE_CHECK_INPUT(h.count <= h.dense_numel, "count ", h.count, " exceeds dense size ",
                     h.dense_numel);
  CLEAVE_CHECK_INPUT(h.count <= limits.max_count, "count ", h.count, " exceeds the limit ",
                     limits.max_count);
  // Declared lengths against the bytes actually present, before anything is allocated.
  const uint64_t value_bytes = ValueBytes(h.precision, h.count);
  CLEAVE_CHECK_INPUT(
      h.index_bytes <= reader->remaining() && value_bytes == reader->remaining() - h.index_bytes,
      "sparse payload has ", reader->remaining(), " bytes after the header, ", "header promises ",
      h.index_bytes, " index + ", value_bytes, " ", ToString(h.precision), " value bytes for ",
      h.count, " values");
  return h;
}

void DecodeBitmap(std::string_view data, const Header& h, std::vector<uint32_t>* out) {
  CLEAVE_CHECK_INPUT(data.size() == BitmapBytes(h.dense_numel), "bitmap has ", data.size(),
                     " bytes, dense size ", h.dense_numel, " needs ", BitmapBytes(h.dense_numel));
  for (size_t byte = 0; byte < data.size(); ++byte) {
    const auto bits = static_cast<uint8_t>(data[byte]);
    if (bits == 0) continue;
    for (unsigned bit = 0; bit < 8; ++bit) {
      if ((bits >> bit) & 1u) {
        const uint64_t index = uint64_t{byte} * 8 + bit;
        CLEAVE_CHECK_INPUT(index < h.dense_numel, "bitmap sets bit ", index, " beyond dense size ",
                           h.dense_numel);
        CLEAVE_CHECK_INPUT(out->size() < h.count, "bitmap has more bits set than count ", h.count);
        out->push_back(static_cast<uint32_t>(index));
      }
    }
  }
  CLEAVE_CHECK_INPUT(out->size() == h.count, "bitmap has ", out->size(), " bits set, count is ",
                     h.count);
}

void DecodeDeltaVarints(std::string_view data, const Header& h, std::vector<uint32_t>* out) {
  Reader indices(data);
  uint64_t previous = 0;
  for (uint64_t i = 0; i < h.count; ++i) {
    const uint64_t delta = indices.Varint("index");
    // First index as is; later ones are gap - 1, so strictly increasing by construction.
    const uint64_t index = i == 0 ? delta : previous + 1 + delta;
    CLEAVE_CHECK_INPUT(delta < h.dense_numel && index < h.dense_numel, "index ", index,
                       " at entry ", i, " is out of range (dense size ", h.dense_numel, ")");
    out->push_back(static_cast<uint32_t>(index));
    previous = index;
  }
  CLEAVE_CHECK_INPUT(indices.remaining() == 0, "index data has ", indices.remaining(),
                     " trailing bytes");
}

}  // namespace

namespace {

// `indices` checked (CheckIndices).
std::string EncodePlanned(uint64_t dense_numel, const uint32_t* indices, const float* values,
                          size_t count, ValuePrecision precision, const IndexPlan& plan) {
  const size_t index_bytes = plan.bytes;
  const IndexEncoding encoding = plan.encoding;
  std::string out;
  out.reserve(32 + index_bytes + ValueBytes(precision, count));
  out.push_back(kMagic0);
  out.push_back(kMagic1);
  out.push_back(static_cast<char>(kSparseFormatVersion));
  out.push_back(static_cast<char>(precision));
  out.push_back(static_cast<char>(encoding));
  PutVarint(&out, dense_numel);
  PutVarint(&out, count);
  PutVarint(&out, index_bytes);
  const size_t index_start = out.size();
  AppendIndices(&out, plan, dense_numel, indices, count);
  CLEAVE_ENFORCE(out.size() - index_start == index_bytes, "index size computed wrongly");
  AppendValues(&out, values, count, precision);
  return out;
}

}  // namespace

std::string EncodeSparse(uint64_t dense_numel, const uint32_t* indices, const float* values,
                         size_t count, ValuePrecision precision) {
  CheckIndices(dense_numel, indices, count);
  return EncodePlanned(dense_numel, indices, values, count, precision,
                       SmallestEncoding(dense_numel, indices, count));
}

std::string EncodeSparse(uint64_t dense_numel, const uint32_t* indices, const float* values,
                         size_t count, ValuePrecision precision, IndexEncoding encoding) {
  CheckIndices(dense_numel, indices, count);
  CLEAVE_ENFORCE(static_cast<unsigned>(encoding) <= 2, "unknown index encoding");
  CLEAVE_ENFORCE(static_cast<unsigned>(precision) <= 4, "unknown value precision");
  return EncodePlanned(dense_numel, indices, values, count, precision,
                       PlanIndices(encoding, dense_numel, indices, count));
}

DecodedSparse DecodeSparse(std::string_view bytes, const DecodeLimits& limits) {
  Reader reader(bytes);
  const Header h = ReadHeader(&reader, limits);
  const std::string_view index_data = reader.Take(h.index_bytes, "indices");
  DecodedSparse out;
  out.dense_numel = h.dense_numel;
  out.encoding = h.encoding;
  out.indices.reserve(h.count);  // h.count <= the bytes present (ReadHeader)
  switch (h.encoding) {
    case IndexEncoding::kBitmap:
      DecodeBitmap(index_data, h, &out.indices);
      break;
    case IndexEncoding::kDeltaVarint:
      DecodeDeltaVarints(index_data, h, &out.indices);
      break;
    case IndexEncoding::kGolombRice:
      golomb_rice::DecodeSection(index_data, h.count, h.dense_numel, &out.indices);
      break;
  }
  out.values = ReadValues(reader.Take(reader.remaining(), "values"), h.count, h.precision,
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
  CLEAVE_CHECK_INPUT(
      static_cast<unsigned>(precision) <= static_cast<unsigned>(ValuePrecision::kInt4),
      "unknown value precision ", static_cast<unsigned>(precision));
  CLEAVE_CHECK_INPUT(bytes.size() == ValueBytes(precision, expected_count), "values payload has ",
                     bytes.size(), " bytes, expected ", expected_count, " ", ToString(precision),
                     " values (", ValueBytes(precision, expected_count), " bytes)");
  return ReadValues(bytes, expected_count, precision, allow_nonfinite);
}

}  // namespace cleave
