// SelectTopKBySampling (sparsify.h): exact top-k at about one read of the data.
//
// A seeded sample of cache lines brackets the k-th largest magnitude between a low threshold
// (almost surely below it) and a high one (almost surely above it). One parallel pass over x
// stores every element above the low threshold (the candidates, a little more than k) and, apart,
// the few in the band between the two thresholds. The k-th magnitude is then found exactly by a
// radix select over the band alone (everything above the band is in), and one parallel pass over
// the candidates writes the chosen ones. Compaction uses AVX-512 or AVX2 where the CPU has them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "append_above.h"
#include "cleave/kernels/sparsify.h"
#include "compact_x86.h"
#include "parallel.h"

namespace cleave::kernels {

// Room for n entries that is never zeroed (only what is written gets touched) and is kept.
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> data;
  size_t capacity = 0;
  T* Reserve(size_t n) {
    if (capacity < n) {
      data.reset(new T[n]);
      capacity = n;
    }
    return data.get();
  }
};

struct SelectionWorkspace::Impl {
  // One contiguous range [begin, end) of x and its candidates, in ascending index order.
  struct Chunk {
    size_t begin = 0, end = 0;
    bool stored = false;  // candidates kept in indices/values (sparse selections), else only counted
    Buffer<uint32_t> indices;
    Buffer<float> values;
    size_t count = 0;
    Buffer<float> band;  // the candidates' values that are in the band, in order
    size_t band_count = 0;
    std::vector<uint32_t> histogram;  // of the band, current radix level
    size_t greater = 0;               // candidates above the k-th magnitude
    size_t equal = 0;                 // candidates equal to it
    size_t offset = 0, ties = 0;      // where its chosen ones go; how many ties it takes
  };
  std::vector<Chunk> chunks;
  std::vector<float> sample;
};

SelectionWorkspace::SelectionWorkspace() : impl_(std::make_unique<Impl>()) {}
SelectionWorkspace::~SelectionWorkspace() = default;
SelectionWorkspace::SelectionWorkspace(SelectionWorkspace&&) noexcept = default;
SelectionWorkspace& SelectionWorkspace::operator=(SelectionWorkspace&&) noexcept = default;

namespace {

using Chunk = SelectionWorkspace::Impl::Chunk;
using detail::MagnitudeBits;

constexpr int kRadixBits = 11;  // 2,048 bins a level: cheap to clear and scan
constexpr size_t kExactBelow = size_t{1} << 14;
constexpr uint32_t kAll = 0x7fffffffu;  // a high threshold that puts every candidate in the band
// Above this fraction of candidates, they are only counted and the output is compacted from x in
// a second pass: reading x again costs less than writing and re-reading them.
constexpr double kStoreBelow = 0.05;

// Candidates are the elements whose magnitude bits are > low; the band, those also <= high.
struct Bracket {
  uint32_t low, high;
  double fraction;  // of the elements expected above low
};

// The sample's values at the rank of k, minus and plus a spare of 3 standard deviations of the
// count (as if the 16 values of a line were one draw: they are correlated in structured data).
// A wrong bracket costs another pass, never a wrong answer.
Bracket SampleBracket(const float* x, size_t n, size_t k, uint64_t seed,
                      std::vector<float>* sample) {
  constexpr size_t kGroupSize = 16;
  const size_t groups = std::clamp<size_t>(n / 1024, 256, 4096);  // 3-25% of n for 2^14-2^22
  std::mt19937_64 rng(seed);
  sample->clear();
  for (size_t g = 0; g < groups; ++g) {
    const size_t start = static_cast<size_t>(rng() % (n - kGroupSize));
    for (size_t i = start; i < start + kGroupSize; ++i) {
      const float magnitude = std::fabs(x[i]);
      sample->push_back(magnitude == magnitude ? magnitude : 0.0f);  // NaN would break the ordering
    }
  }
  const double size = static_cast<double>(sample->size());
  const double expected = static_cast<double>(k) * size / static_cast<double>(n);
  const double spare = 3 * std::sqrt(kGroupSize * expected) + kGroupSize;
  const auto low_rank = std::min(sample->size() - 1, static_cast<size_t>(expected + spare));
  auto at_rank = [&](size_t rank, size_t end) {
    std::nth_element(sample->begin(), sample->begin() + static_cast<long>(rank),
                     sample->begin() + static_cast<long>(end), std::greater<float>());
    return (*sample)[rank];
  };
  const float low = at_rank(low_rank, sample->size());
  const double high_rank = expected - spare;
  // Ranks above low_rank now hold the larger values: the high threshold is among them.
  const float high = high_rank < 1 ? std::numeric_limits<float>::infinity()
                                   : at_rank(static_cast<size_t>(high_rank), low_rank);
  return {MagnitudeBits(low), std::max(MagnitudeBits(low), MagnitudeBits(high)),
          static_cast<double>(low_rank + 1) / size};
}

// The portable collection: sparse selections visit the set bits of 16-element masks; dense ones
// store every element in the band and advance by the comparison (no branch to mispredict).
detail::Collected CollectScalar(const float* x, Bracket bracket, Chunk* chunk) {
  float* band = chunk->band.data.get();
  detail::Collected out;
  if (chunk->stored) {
    uint32_t* indices = chunk->indices.data.get();
    float* values = chunk->values.data.get();
    float low;
    std::memcpy(&low, &bracket.low, sizeof(low));
    detail::ForEachAbove(x, chunk->begin, chunk->end, low, [&](size_t at) {
      indices[out.count] = static_cast<uint32_t>(at);
      values[out.count++] = x[at];
      if (MagnitudeBits(x[at]) <= bracket.high) band[out.band++] = x[at];
    });
    return out;
  }
  size_t count = 0, in_band = 0;  // locals, so that the stores cannot alias them
  for (size_t i = chunk->begin; i < chunk->end; ++i) {
    const uint32_t magnitude = MagnitudeBits(x[i]);
    const size_t above = magnitude > bracket.low;
    band[in_band] = x[i];
    count += above;
    in_band += above & static_cast<size_t>(magnitude <= bracket.high);
  }
  out.count = count;
  out.band = in_band;
  return out;
}

// The candidates of every chunk (one per thread). Returns how many in all.
size_t CollectCandidates(const float* x, size_t n, Bracket bracket, std::vector<Chunk>* chunks) {
  const int threads = detail::ThreadsFor(n);
  chunks->resize(static_cast<size_t>(threads));
  detail::ParallelChunks(n, threads, [&](int c, size_t begin, size_t end) {
    Chunk& chunk = (*chunks)[static_cast<size_t>(c)];
    chunk.begin = begin;
    chunk.end = end;
    chunk.stored = bracket.fraction <= kStoreBelow;
    const size_t room = end - begin + 16;  // whole vectors are stored
    uint32_t* indices = chunk.stored ? chunk.indices.Reserve(room) : nullptr;
    float* values = chunk.stored ? chunk.values.Reserve(room) : nullptr;
    float* band = chunk.band.Reserve(room);
    const detail::Collected got =
        detail::HaveAvx512()
            ? detail::CollectAvx512(x, begin, end, bracket.low, bracket.high, indices, values, band)
        : detail::HaveAvx2()
            ? detail::CollectAvx2(x, begin, end, bracket.low, bracket.high, indices, values, band)
            : CollectScalar(x, bracket, &chunk);
    chunk.count = got.count;
    chunk.band_count = got.band;
  });
  size_t total = 0;
  for (const Chunk& chunk : *chunks) total += chunk.count;
  return total;
}

// Each chunk's histogram of bin_of(magnitude bits) over its band, `bins` bins (bin_of returns
// `bins` for values that belong to none), one thread per chunk.
template <typename BinOf>
void BandHistograms(std::vector<Chunk>* chunks, size_t bins, BinOf bin_of) {
  const int count = static_cast<int>(chunks->size());
  detail::ParallelChunks(chunks->size(), count, [&](int c, size_t, size_t) {
    Chunk& chunk = (*chunks)[static_cast<size_t>(c)];
    chunk.histogram.assign(bins, 0);
    const float* band = chunk.band.data.get();
    for (size_t i = 0; i < chunk.band_count; ++i) {
      const uint32_t bin = bin_of(MagnitudeBits(band[i]));
      if (bin < bins) ++chunk.histogram[bin];
    }
  });
}

// The bin, counted from the top, that holds the k-th largest of the chunks' summed histograms
// (which hold at least k); *above gets the count in the bins over it. Adds each chunk's count
// over that bin to its `greater`.
size_t BinOfKth(std::vector<Chunk>* chunks, size_t bins, size_t k, size_t* above) {
  size_t cumulative = 0, bin = bins;
  while (bin > 0) {
    --bin;
    size_t count = 0;
    for (const Chunk& chunk : *chunks) count += chunk.histogram[bin];
    if (cumulative + count >= k) break;
    cumulative += count;
  }
  for (Chunk& chunk : *chunks) {
    for (size_t b = bin + 1; b < bins; ++b) chunk.greater += chunk.histogram[b];
  }
  *above = cumulative;
  return bin;
}

// The magnitude bits of the k-th largest band value, exactly, every band value being in
// [base, top]: a radix select of (bits - base), kRadixBits at a time from the top, each level
// over the values that share the bits chosen so far. Adds each chunk's band values above the
// k-th to its `greater` and sets `equal`.
uint32_t KthInBand(std::vector<Chunk>* chunks, uint32_t base, uint32_t top, size_t k) {
  int chosen = 32 - __builtin_clz((top - base) | 1u);  // the offset's bits from here up are known
  uint32_t prefix = 0;                                  // their value
  while (true) {
    const int shift = std::max(0, chosen - kRadixBits);
    const size_t bins = size_t{1} << (chosen - shift);
    BandHistograms(chunks, bins, [=](uint32_t bits) {
      const uint32_t offset = bits - base;
      const bool matches = chosen >= 32 || (offset >> chosen) == prefix;
      return matches ? (offset >> shift) & static_cast<uint32_t>(bins - 1)
                     : static_cast<uint32_t>(bins);
    });
    size_t above = 0;
    const auto bin = static_cast<uint32_t>(BinOfKth(chunks, bins, k, &above));
    k -= above;
    prefix = (prefix << (chosen - shift)) | bin;
    chosen = shift;
    if (chosen == 0) {
      for (Chunk& chunk : *chunks) chunk.equal = chunk.histogram[bin];
      return base + prefix;
    }
  }
}

// Writes, in order, the entries above kth and those equal to it while *ties lasts, `share` of
// them in all (portable): every entry is stored and the position advances when it is chosen (no
// branch to mispredict), stopping at the share so that nothing lands past it.
size_t CompactScalar(const uint32_t* indices, size_t first_index, const float* values,
                     size_t count, uint32_t kth, size_t* ties, size_t share, uint32_t* out_indices,
                     float* out_values) {
  size_t written = 0, ties_left = *ties;
  for (size_t i = 0; i < count && written < share; ++i) {
    const uint32_t bits = MagnitudeBits(values[i]);
    const size_t tie = static_cast<size_t>(bits == kth) & static_cast<size_t>(ties_left > 0);
    out_indices[written] = indices != nullptr ? indices[i] : static_cast<uint32_t>(first_index + i);
    out_values[written] = values[i];
    written += static_cast<size_t>(bits > kth) | tie;
    ties_left -= tie;
  }
  *ties = ties_left;
  return written;
}

// Writes every candidate above the k-th magnitude and the first (in index order) of those equal
// to it, k in all, each chunk at its own offset, in parallel: from the stored candidates, or
// from x itself.
size_t WriteTopK(const float* x, std::vector<Chunk>* chunks, uint32_t kth_bits, size_t k,
                 uint32_t* indices, float* values) {
  size_t greater = 0;
  for (const Chunk& chunk : *chunks) greater += chunk.greater;
  size_t ties_left = k - greater, offset = 0;
  for (Chunk& chunk : *chunks) {
    chunk.offset = offset;
    chunk.ties = std::min(ties_left, chunk.equal);
    ties_left -= chunk.ties;
    offset += chunk.greater + chunk.ties;
  }
  const int count = static_cast<int>(chunks->size());
  detail::ParallelChunks(chunks->size(), count, [&](int c, size_t, size_t) {
    Chunk& chunk = (*chunks)[static_cast<size_t>(c)];
    const uint32_t* from_indices = chunk.stored ? chunk.indices.data.get() : nullptr;
    const float* from_values = chunk.stored ? chunk.values.data.get() : x + chunk.begin;
    const size_t count = chunk.stored ? chunk.count : chunk.end - chunk.begin;
    if (detail::HaveAvx512()) {
      detail::CompactAvx512(from_indices, chunk.begin, from_values, count, kth_bits, &chunk.ties,
                            indices + chunk.offset, values + chunk.offset);
    } else if (detail::HaveAvx2()) {
      detail::CompactAvx2(from_indices, chunk.begin, from_values, count, kth_bits, &chunk.ties,
                          indices + chunk.offset, values + chunk.offset);
    } else {
      CompactScalar(from_indices, chunk.begin, from_values, count, kth_bits, &chunk.ties,
                    chunk.greater + chunk.ties, indices + chunk.offset, values + chunk.offset);
    }
  });
  return offset;
}

// Small inputs: the exact TopK, without the zeros (which the sampled path never selects).
size_t SmallTopK(const float* x, size_t n, size_t k, uint32_t* indices, float* values) {
  const size_t count = TopK(x, n, k, indices, values);
  size_t kept = 0;
  for (size_t i = 0; i < count; ++i) {
    if (values[i] == 0.0f) continue;
    indices[kept] = indices[i];
    values[kept] = values[i];
    ++kept;
  }
  return kept;
}

// Collects the candidates, widening the bracket while there are fewer than k of them (the sample
// overestimated; zeros are never candidates) or more than k above the band (it underestimated).
size_t CollectAtLeastK(const float* x, size_t n, size_t k, Bracket* bracket,
                       std::vector<Chunk>* chunks) {
  for (int attempt = 0;; ++attempt) {
    const size_t found = CollectCandidates(x, n, *bracket, chunks);
    size_t band = 0;
    for (const Chunk& chunk : *chunks) band += chunk.band_count;
    if (found >= k && found - band < k) return found;
    if (found >= k || bracket->low == 0) {  // too many above the band, or nothing left to widen
      if (bracket->high == kAll) return found;
      bracket->high = kAll;
    } else {
      float low;
      std::memcpy(&low, &bracket->low, sizeof(low));
      *bracket = attempt < 2 ? Bracket{MagnitudeBits(low / 2), kAll, 2 * bracket->fraction}
                             : Bracket{0, kAll, 1.0};
    }
  }
}

}  // namespace

size_t SelectTopKBySampling(const float* x, size_t n, size_t k, uint64_t seed, uint32_t* indices,
                            float* values, SelectionWorkspace* workspace) {
  k = std::min(k, n);
  if (k == 0) return 0;
  if (n < kExactBelow) return SmallTopK(x, n, k, indices, values);
  SelectionWorkspace::Impl& work = workspace->impl();
  Bracket bracket = SampleBracket(x, n, k, seed, &work.sample);
  const size_t found = CollectAtLeastK(x, n, k, &bracket, &work.chunks);
  if (found <= k) {  // all of them: everything above the low threshold
    for (Chunk& chunk : work.chunks) {
      chunk.greater = chunk.count;
      chunk.equal = 0;
    }
    return WriteTopK(x, &work.chunks, bracket.low, found, indices, values);
  }
  size_t above_band = 0;
  for (Chunk& chunk : work.chunks) {
    chunk.greater = chunk.count - chunk.band_count;
    above_band += chunk.greater;
  }
  const uint32_t kth = KthInBand(&work.chunks, bracket.low + 1, bracket.high, k - above_band);
  return WriteTopK(x, &work.chunks, kth, k, indices, values);
}

size_t SelectTopKBySampling(const float* x, size_t n, size_t k, uint64_t seed, uint32_t* indices,
                            float* values) {
  SelectionWorkspace workspace;
  return SelectTopKBySampling(x, n, k, seed, indices, values, &workspace);
}

}  // namespace cleave::kernels
