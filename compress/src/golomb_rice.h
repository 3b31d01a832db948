// Golomb-Rice coding of sorted indices, one of the sparse codec's index sections: a u8 parameter
// k, then for each entry its value v (the first index, then gap - 1) as (v >> k) zero bits, a one
// bit and the k low bits of v. Bits fill each byte from its least significant bit up; the last
// byte is padded with zero bits. Random positions (what a Gaussian-k mask looks like) have
// geometric gaps, for which this is within a few percent of their entropy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cleave::golomb_rice {

constexpr unsigned kMaxParameter = 31;  // values are < 2^32

// The parameter for these indices: an estimate from the mean value, then the cheapest of it and
// its two neighbours (exact sizes).
unsigned ChooseParameter(const uint32_t* indices, size_t count);

// Bytes of the index section (parameter byte included) with parameter k.
size_t SectionBytes(const uint32_t* indices, size_t count, unsigned k);

void AppendSection(std::string* out, const uint32_t* indices, size_t count, unsigned k);

// Decodes `count` indices from an untrusted section into `out` (strictly increasing and below
// dense_numel by construction and by check); throws InvalidInput naming what is wrong.
void DecodeSection(std::string_view section, uint64_t count, uint64_t dense_numel,
                   std::vector<uint32_t>* out);

}  // namespace cleave::golomb_rice
