// The compression contract of a link, typed: what each direction sends (method, density, value
// precision, per-sample choice), parsed and validated once from the Join's CompressionConfig and
// written back to it for the Join reply. Both ends build their codecs (activation_codec.h,
// gradient_codec.h, client_model_codec.h) from it; no method or precision string is compared
// anywhere else.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cleave/compress/compressor.h"
#include "cleave/compress/method.h"
#include "cleave/compress/sparse_codec.h"
#include "cleave/protocol/cleave.pb.h"

namespace cleave::protocol {

struct DirectionSpec {
  Method method = Method::kNone;
  double density = 1.0;  // fraction of elements kept, (0, 1]; 1 for kNone
  ValuePrecision precision = ValuePrecision::kFp32;
  bool per_sample = false;  // activations only: round(density * row size) in each batch row

  bool compressed() const { return method != Method::kNone; }
};

// The compressor a direction selects with; its calls are seeded from `seed`.
std::unique_ptr<Compressor> MakeCompressor(const DirectionSpec& spec, uint64_t seed);

struct LinkSpec {
  DirectionSpec activations;  // client -> server
  DirectionSpec gradients;    // server -> client, relative to the positions the activations took
  DirectionSpec updates;      // client-model weight deltas (rounds), with error feedback
};

// Defaults: an empty method is none, an empty precision fp32; none means density 1 and no
// per-sample choice. Throws UserError naming the direction for an unknown method or precision
// (listing the valid ones), a density outside (0, 1], or per-sample on gradients or updates.
LinkSpec ParseLinkSpec(const v1::CompressionConfig& config);
// One direction ("activation", "gradient", "update" in messages), without the per-sample rule.
DirectionSpec ParseDirectionSpec(const v1::CompressionSettings& settings, const char* direction);

v1::CompressionConfig ToProto(const LinkSpec& spec);
v1::CompressionSettings ToProto(const DirectionSpec& spec);

// "act=gaussiank:0.010000:fp16:per-sample;grad=none:1.000000:fp32;update=..." (logs, tests).
std::string Describe(const LinkSpec& spec);
std::string Describe(const DirectionSpec& spec);

// The proto in, the proto out: ToProto(ParseLinkSpec(config)) and Describe(ParseLinkSpec(config)).
v1::CompressionConfig NormalizeCompression(const v1::CompressionConfig& config);
std::string DescribeCompression(const v1::CompressionConfig& config);

}  // namespace cleave::protocol
