#include "golomb_rice.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cleave/core/error.h"

namespace cleave::golomb_rice {

namespace {

// Value i of the sequence: the first index as is, later ones gap - 1 (gaps are >= 1).
inline uint64_t ValueAt(const uint32_t* indices, size_t i) {
  return i == 0 ? indices[0] : uint64_t{indices[i]} - indices[i - 1] - 1;
}

uint64_t StreamBits(const uint32_t* indices, size_t count, unsigned k) {
  uint64_t bits = uint64_t{count} * (k + 1);
  for (size_t i = 0; i < count; ++i) bits += ValueAt(indices, i) >> k;
  return bits;
}

class BitWriter {
 public:
  explicit BitWriter(std::string* out) : out_(out) {}
  // width <= 32
  void Put(uint64_t bits, unsigned width) {
    accumulator_ |= bits << filled_;
    filled_ += width;
    while (filled_ >= 8) {
      out_->push_back(static_cast<char>(accumulator_ & 0xffu));
      accumulator_ >>= 8;
      filled_ -= 8;
    }
  }
  void Zeros(uint64_t count) {
    for (; count > 32; count -= 32) Put(0, 32);
    Put(0, static_cast<unsigned>(count));
  }
  void Flush() {
    if (filled_ > 0) out_->push_back(static_cast<char>(accumulator_ & 0xffu));
    accumulator_ = 0;
    filled_ = 0;
  }

 private:
  std::string* out_;
  uint64_t accumulator_ = 0;
  unsigned filled_ = 0;
};

// A bit reader over untrusted bytes: every read is bounds-checked.
class BitReader {
 public:
  explicit BitReader(std::string_view bytes) : bytes_(bytes), total_(uint64_t{bytes.size()} * 8) {}
  uint64_t remaining() const { return total_ - position_; }

  // The count of zero bits before the next one bit (which is consumed); more than `cap` zeros
  // is an error, so a hostile run costs at most cap / 57 word reads.
  uint64_t Unary(uint64_t cap, uint64_t entry) {
    uint64_t zeros = 0;
    for (;;) {
      const unsigned available = static_cast<unsigned>(std::min<uint64_t>(57, remaining()));
      CLEAVE_CHECK_INPUT(available > 0, "Golomb-Rice bit stream truncated at entry ", entry);
      const uint64_t word = Peek() & Mask(available);
      if (word != 0) {
        const auto run = static_cast<unsigned>(__builtin_ctzll(word));
        zeros += run;
        CLEAVE_CHECK_INPUT(zeros <= cap, "Golomb-Rice unary run of ", zeros, " at entry ", entry,
                           " is longer than the dense size allows (", cap, ")");
        position_ += run + 1;
        return zeros;
      }
      zeros += available;
      position_ += available;
      CLEAVE_CHECK_INPUT(zeros <= cap, "Golomb-Rice unary run at entry ", entry,
                         " is longer than the dense size allows (", cap, ")");
    }
  }

  uint64_t Bits(unsigned width, uint64_t entry) {
    CLEAVE_CHECK_INPUT(remaining() >= width, "Golomb-Rice bit stream truncated at entry ", entry);
    const uint64_t value = Peek() & Mask(width);
    position_ += width;
    return value;
  }

 private:
  static uint64_t Mask(unsigned width) {
    return width >= 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
  }
  // The next up to 57 bits (zeros past the end).
  uint64_t Peek() const {
    const size_t byte = static_cast<size_t>(position_ / 8);
    uint64_t word = 0;
    if (byte < bytes_.size()) {
      std::memcpy(&word, bytes_.data() + byte, std::min<size_t>(8, bytes_.size() - byte));
    }
    return word >> (position_ % 8);  // little-endian hosts only, like the rest of the codec
  }

  std::string_view bytes_;
  uint64_t total_;
  uint64_t position_ = 0;
};

}  // namespace

unsigned ChooseParameter(const uint32_t* indices, size_t count) {
  if (count == 0) return 0;
  // Sum of the values = last index - (count - 1).
  const double mean = (static_cast<double>(indices[count - 1]) - static_cast<double>(count - 1)) /
                      static_cast<double>(count);
  const unsigned estimate =
      mean < 2 ? 0 : std::min(kMaxParameter, static_cast<unsigned>(std::log2(mean)));
  unsigned best = estimate;
  uint64_t best_bits = StreamBits(indices, count, estimate);
  for (unsigned k : {estimate - 1, estimate + 1}) {
    if (k > kMaxParameter) continue;  // also estimate - 1 wrapped below zero
    const uint64_t bits = StreamBits(indices, count, k);
    if (bits < best_bits) {
      best = k;
      best_bits = bits;
    }
  }
  return best;
}

size_t SectionBytes(const uint32_t* indices, size_t count, unsigned k) {
  return 1 + static_cast<size_t>((StreamBits(indices, count, k) + 7) / 8);
}

void AppendSection(std::string* out, const uint32_t* indices, size_t count, unsigned k) {
  out->push_back(static_cast<char>(k));
  BitWriter writer(out);
  const uint64_t low_mask = (uint64_t{1} << k) - 1;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t value = ValueAt(indices, i);
    writer.Zeros(value >> k);
    writer.Put(1, 1);
    if (k > 0) writer.Put(value & low_mask, k);
  }
  writer.Flush();
}

void DecodeSection(std::string_view section, uint64_t count, uint64_t dense_numel,
                   std::vector<uint32_t>* out) {
  CLEAVE_CHECK_INPUT(!section.empty(), "Golomb-Rice index section has no parameter byte");
  const auto k = static_cast<uint8_t>(section[0]);
  CLEAVE_CHECK_INPUT(k <= kMaxParameter, "Golomb-Rice parameter ", int{k}, " exceeds ",
                     kMaxParameter);
  BitReader reader(section.substr(1));
  // Every entry takes at least k + 1 bits: refuse a count the stream cannot hold up front.
  CLEAVE_CHECK_INPUT(count <= reader.remaining() / (k + 1), "Golomb-Rice stream of ",
                     reader.remaining(), " bits cannot hold ", count, " entries with parameter ",
                     int{k});
  // No value reaches dense_numel, so no quotient exceeds (dense_numel - 1) >> k.
  const uint64_t cap = dense_numel == 0 ? 0 : (dense_numel - 1) >> k;
  uint64_t previous = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t quotient = reader.Unary(cap, i);
    const uint64_t value = (quotient << k) | reader.Bits(k, i);
    const uint64_t index = i == 0 ? value : previous + 1 + value;
    CLEAVE_CHECK_INPUT(index < dense_numel, "index ", index, " at entry ", i,
                       " is out of range (dense size ", dense_numel, ")");
    out->push_back(static_cast<uint32_t>(index));
    previous = index;
  }
  const uint64_t left = reader.remaining();
  CLEAVE_CHECK_INPUT(left < 8, "Golomb-Rice index data has ", left / 8, " trailing bytes");
  CLEAVE_CHECK_INPUT(reader.Bits(static_cast<unsigned>(left), count) == 0,
                     "Golomb-Rice padding bits are not zero");
}

}  // namespace cleave::golomb_rice
