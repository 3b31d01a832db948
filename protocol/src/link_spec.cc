#include "cleave/protocol/link_spec.h"

#include "cleave/core/error.h"

namespace cleave::protocol {

namespace {

Method ParseMethodOf(const std::string& text, const char* direction) {
  try {
    return ParseMethod(text.empty() ? MethodName(Method::kNone) : text);
  } catch (const UserError&) {
    throw UserError(detail::Concat("unknown ", direction, " compression method '", text, "' (use ",
                                   MethodList(), ")"));
  }
}

}  // namespace

DirectionSpec ParseDirectionSpec(const v1::CompressionSettings& settings, const char* direction) {
  DirectionSpec spec;
  spec.method = ParseMethodOf(settings.method(), direction);
  if (spec.compressed()) {
    spec.density = settings.density();
    spec.per_sample = settings.per_sample();
  }
  CLEAVE_CHECK_USER(spec.density > 0.0 && spec.density <= 1.0, direction, " density ", spec.density,
                    " is outside (0, 1]");
  if (!settings.value_precision().empty()) {
    spec.precision = ParseValuePrecision(settings.value_precision());
  }
  return spec;
}

LinkSpec ParseLinkSpec(const v1::CompressionConfig& config) {
  LinkSpec spec;
  spec.activations = ParseDirectionSpec(config.activations(), "activation");
  spec.gradients = ParseDirectionSpec(config.gradients(), "gradient");
  spec.updates = ParseDirectionSpec(config.updates(), "update");
  // The gradients travel at the positions the activations took; only those are chosen per sample.
  CLEAVE_CHECK_USER(!spec.gradients.per_sample && !spec.updates.per_sample,
                    "per-sample selection applies to the activations only");
  return spec;
}

std::unique_ptr<Compressor> MakeCompressor(const DirectionSpec& spec, uint64_t seed) {
  return ::cleave::MakeCompressor(CompressorConfig{spec.method, spec.density, seed});
}

v1::CompressionSettings ToProto(const DirectionSpec& spec) {
  v1::CompressionSettings settings;
  settings.set_method(MethodName(spec.method));
  settings.set_density(spec.density);
  settings.set_value_precision(ToString(spec.precision));
  settings.set_per_sample(spec.per_sample);
  return settings;
}

v1::CompressionConfig ToProto(const LinkSpec& spec) {
  v1::CompressionConfig config;
  *config.mutable_activations() = ToProto(spec.activations);
  *config.mutable_gradients() = ToProto(spec.gradients);
  *config.mutable_updates() = ToProto(spec.updates);
  return config;
}

std::string Describe(const DirectionSpec& spec) {
  return std::string(MethodName(spec.method)) + ":" + std::to_string(spec.density) + ":" +
         ToString(spec.precision) + (spec.per_sample ? ":per-sample" : "");
}

std::string Describe(const LinkSpec& spec) {
  return "act=" + Describe(spec.activations) + ";grad=" + Describe(spec.gradients) +
         ";update=" + Describe(spec.updates);
}

v1::CompressionConfig NormalizeCompression(const v1::CompressionConfig& config) {
  return ToProto(ParseLinkSpec(config));
}

std::string DescribeCompression(const v1::CompressionConfig& config) {
  return Describe(ParseLinkSpec(config));
}

}  // namespace cleave::protocol
