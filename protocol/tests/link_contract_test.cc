// The link contract: the typed spec parsed from the Join's CompressionConfig, and each
// direction's encoder and decoder run against each other without gRPC over every method x value
// precision x per-sample choice (the way gloo tests every algorithm over every transport). The
// messages are also compared byte for byte with the encodings the two ends used before the
// contract existed, so that the wire stays what it was.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "cleave/compress/compressor.h"
#include "cleave/compress/sparse_codec.h"
#include "cleave/core/error.h"
#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/client_model_codec.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::protocol {
namespace {

constexpr Method kMethods[] = {Method::kNone, Method::kTopK, Method::kGaussianK,
                               Method::kGaussianKPlus, Method::kRandomK};
constexpr ValuePrecision kPrecisions[] = {ValuePrecision::kFp32, ValuePrecision::kFp16,
                                          ValuePrecision::kBf16};

v1::CompressionSettings Settings(const std::string& method, double density,
                                 const std::string& precision, bool per_sample = false) {
  v1::CompressionSettings settings;
  settings.set_method(method);
  settings.set_density(density);
  settings.set_value_precision(precision);
  settings.set_per_sample(per_sample);
  return settings;
}

// The message of `what` (UserError expected), or "" when it did not throw one.
template <typename F>
std::string UserErrorOf(F what) {
  try {
    what();
  } catch (const UserError& error) {
    return error.what();
  }
  return "";
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ---- the spec ----

TEST(LinkSpecTest, AnEmptyConfigSendsEverythingDenseInFp32) {
  const LinkSpec spec = ParseLinkSpec(v1::CompressionConfig());
  for (const DirectionSpec* direction : {&spec.activations, &spec.gradients, &spec.updates}) {
    EXPECT_EQ(direction->method, Method::kNone);
    EXPECT_FALSE(direction->compressed());
    EXPECT_EQ(direction->density, 1.0);
    EXPECT_EQ(direction->precision, ValuePrecision::kFp32);
    EXPECT_FALSE(direction->per_sample);
  }
  EXPECT_EQ(Describe(spec),
            "act=none:1.000000:fp32;grad=none:1.000000:fp32;update=none:1.000000:fp32");
}

TEST(LinkSpecTest, ParsesDescribesAndWritesBackTheSameConfig) {
  v1::CompressionConfig config;
  *config.mutable_activations() = Settings("gaussiank", 0.01, "fp16", /*per_sample=*/true);
  *config.mutable_gradients() = Settings("topk", 0.5, "bf16");
  *config.mutable_updates() = Settings("gaussiank+", 0.1, "");
  const LinkSpec spec = ParseLinkSpec(config);
  EXPECT_EQ(spec.activations.method, Method::kGaussianK);
  EXPECT_EQ(spec.activations.density, 0.01);
  EXPECT_EQ(spec.activations.precision, ValuePrecision::kFp16);
  EXPECT_TRUE(spec.activations.per_sample);
  EXPECT_EQ(spec.gradients.method, Method::kTopK);
  EXPECT_EQ(spec.gradients.precision, ValuePrecision::kBf16);
  EXPECT_EQ(spec.updates.method, Method::kGaussianKPlus);
  EXPECT_EQ(spec.updates.precision, ValuePrecision::kFp32);  // empty: fp32
  const std::string described =
      "act=gaussiank:0.010000:fp16:per-sample;grad=topk:0.500000:bf16;"
      "update=gaussiank+:0.100000:fp32";
  EXPECT_EQ(Describe(spec), described);
  EXPECT_EQ(DescribeCompression(config), described);

  // Written back (the Join reply) it is the normalised config, and parses to the same spec.
  const v1::CompressionConfig written = ToProto(spec);
  EXPECT_EQ(written.updates().value_precision(), "fp32");
  EXPECT_EQ(written.SerializeAsString(), NormalizeCompression(config).SerializeAsString());
  EXPECT_EQ(Describe(ParseLinkSpec(written)), described);
  EXPECT_EQ(ToProto(ParseLinkSpec(written)).SerializeAsString(), written.SerializeAsString());
}

TEST(LinkSpecTest, EveryMethodAndPrecisionNameParses) {
  for (const Method method : kMethods) {
    for (const std::string& name : ValuePrecisionNames()) {  // int8 and int4 included
      const ValuePrecision precision = ParseValuePrecision(name);
      v1::CompressionConfig config;
      *config.mutable_activations() = Settings(MethodName(method), 0.25, ToString(precision));
      const DirectionSpec parsed = ParseLinkSpec(config).activations;
      EXPECT_EQ(parsed.method, method);
      EXPECT_EQ(parsed.precision, precision);
      EXPECT_EQ(parsed.density, method == Method::kNone ? 1.0 : 0.25);
    }
  }
}

TEST(LinkSpecTest, NoneSendsEverythingWhateverDensityAndPerSampleSay) {
  v1::CompressionConfig config;
  *config.mutable_activations() = Settings("none", 0.0, "fp16", /*per_sample=*/true);
  *config.mutable_gradients() = Settings("", 7.0, "");
  const LinkSpec spec = ParseLinkSpec(config);
  EXPECT_EQ(spec.activations.density, 1.0);
  EXPECT_FALSE(spec.activations.per_sample);
  EXPECT_EQ(spec.activations.precision, ValuePrecision::kFp16);
  EXPECT_EQ(spec.gradients.density, 1.0);
  const v1::CompressionConfig written = NormalizeCompression(config);
  EXPECT_EQ(written.activations().density(), 1.0);
  EXPECT_FALSE(written.activations().per_sample());
  EXPECT_EQ(written.gradients().method(), "none");
}

TEST(LinkSpecTest, EveryBadConfigIsOneUserErrorNamingTheDirection) {
  const char* directions[] = {"activation", "gradient", "update"};
  for (int d = 0; d < 3; ++d) {
    SCOPED_TRACE(directions[d]);
    auto with = [d](const v1::CompressionSettings& settings) {
      v1::CompressionConfig config;
      v1::CompressionSettings* target = d == 0   ? config.mutable_activations()
                                        : d == 1 ? config.mutable_gradients()
                                                 : config.mutable_updates();
      *target = settings;
      return config;
    };
    std::string error = UserErrorOf([&] { ParseLinkSpec(with(Settings("top-k", 0.1, "fp32"))); });
    EXPECT_TRUE(Contains(error, std::string("unknown ") + directions[d] +
                                    " compression method 'top-k' (use none, topk, gaussiank, "
                                    "gaussiank+, randomk)"))
        << error;
    error = UserErrorOf([&] { ParseLinkSpec(with(Settings("topk", 0.1, "fp8"))); });
    EXPECT_TRUE(Contains(error, "unknown value precision 'fp8' (use fp32, fp16, bf16, int8, int4)")) << error;
    for (const double density : {0.0, -0.5, 1.5, std::nan("")}) {
      error = UserErrorOf([&] { ParseLinkSpec(with(Settings("randomk", density, "fp32"))); });
      EXPECT_TRUE(Contains(error, std::string(directions[d]) + " density ")) << error;
      EXPECT_TRUE(Contains(error, "is outside (0, 1]")) << error;
    }
    error = UserErrorOf([&] { ParseLinkSpec(with(Settings("topk", 0.1, "fp32", true))); });
    if (d == 0) {
      EXPECT_EQ(error, "");  // per-sample is for the activations
    } else {
      EXPECT_EQ(error, "per-sample selection applies to the activations only");
    }
  }
}

// ---- helpers for the codecs ----

float Rounded(float value, ValuePrecision precision) {
  switch (precision) {
    case ValuePrecision::kFp16:
      return HalfToFloat(FloatToHalf(value));
    case ValuePrecision::kBf16:
      return Bfloat16ToFloat(FloatToBfloat16(value));
    default:  // fp32 (int8 / int4 are block-wise: CodecRounded)
      break;
  }
  return value;
}

std::vector<int64_t> SizesOf(const at::Tensor& tensor) {
  return std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end());
}

// The elements of a float tensor, flat.
std::vector<float> Elements(const at::Tensor& tensor) {
  const at::Tensor flat = tensor.contiguous().reshape({-1});
  return std::vector<float>(flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel());
}

// The flat positions where `tensor` is not zero, ascending.
std::vector<uint32_t> Support(const at::Tensor& tensor) {
  const std::vector<float> elements = Elements(tensor);
  std::vector<uint32_t> positions;
  for (size_t i = 0; i < elements.size(); ++i) {
    if (elements[i] != 0.0f) positions.push_back(static_cast<uint32_t>(i));
  }
  return positions;
}

bool IsSubset(const std::vector<uint32_t>& small, const std::vector<uint32_t>& large) {
  return std::includes(large.begin(), large.end(), small.begin(), small.end());
}

TensorSpec ActivationTensorSpec() {
  TensorSpec spec;
  spec.sample_shape = {4, 6, 6};
  spec.max_batch = 64;
  return spec;
}

// Activations that are never exactly zero, so that a zero after decoding means "not sent".
at::Tensor Activations(uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor x = at::randn({8, 4, 6, 6});
  return x + at::where(x >= 0, at::full_like(x, 0.01), at::full_like(x, -0.01));
}

// The positions one compressor call chooses (and how many a method must land on exactly).
bool LandsExactly(Method method) { return method != Method::kGaussianK; }

// What the client sent before the contract: the selection's indices, the values gathered again
// from the tensor.
v1::Tensor LegacyActivationMessage(const at::Tensor& activations, const DirectionSpec& spec,
                                   uint64_t seed) {
  v1::Tensor message;
  if (!spec.compressed()) {
    EncodeDense(activations, &message);
    return message;
  }
  auto compressor = MakeCompressor(spec, seed);
  std::vector<uint32_t> indices;
  if (spec.per_sample) {
    const int64_t row_numel = activations.numel() / activations.size(0);
    for (int64_t row = 0; row < activations.size(0); ++row) {
      for (uint32_t index : compressor->Compress(activations[row]).indices) {
        indices.push_back(static_cast<uint32_t>(row * row_numel) + index);
      }
    }
  } else {
    indices = compressor->Compress(activations).indices;
  }
  EncodeSparse(activations, indices, spec.precision, &message);
  return message;
}

// What the server sent before the contract (its three-branch reply).
v1::Tensor LegacyGradientMessage(const at::Tensor& gradient, const SentPositions& sent,
                                 const DirectionSpec& spec, uint64_t seed) {
  v1::Tensor message;
  if (spec.compressed()) {
    at::Tensor values = gradient.reshape({-1});
    if (!sent.all) {
      const std::vector<int64_t> positions(sent.indices.begin(), sent.indices.end());
      values = values.index_select(0, at::tensor(positions, at::kLong));
    }
    const Selection selection = MakeCompressor(spec, seed)->Compress(values);
    EncodeSparse(values, selection.indices, spec.precision, &message);
    message.clear_shape();
    for (int64_t d : gradient.sizes()) message.add_shape(d);
  } else if (!sent.all) {
    EncodeValuesAt(gradient, sent.indices, spec.precision, &message);
  } else {
    EncodeDense(gradient, &message);
  }
  return message;
}

// ---- activations and gradients: every method x precision x per-sample, both directions ----

using LinkParam = std::tuple<Method, ValuePrecision, bool>;

class LinkCodecTest : public ::testing::TestWithParam<LinkParam> {
 protected:
  // The spec as both ends get it: through the Join's config.
  static LinkSpec Spec(Method activations, Method gradients, ValuePrecision precision,
                       bool per_sample) {
    v1::CompressionConfig config;
    *config.mutable_activations() =
        Settings(MethodName(activations), 0.1, ToString(precision), per_sample);
    *config.mutable_gradients() = Settings(MethodName(gradients), 0.5, ToString(precision));
    return ParseLinkSpec(config);
  }
};

TEST_P(LinkCodecTest, ActivationsArriveAtTheChosenPositionsWithRoundedValues) {
  const auto [method, precision, per_sample] = GetParam();
  const LinkSpec spec = Spec(method, Method::kNone, precision, per_sample);
  const at::Tensor activations = Activations(1);
  ActivationEncoder encoder(spec.activations, /*seed=*/3);
  const ActivationSelection selection = encoder.Select(activations);
  ASSERT_EQ(selection.all, method == Method::kNone);

  const int64_t numel = activations.numel();
  if (!selection.all) {
    ASSERT_EQ(selection.values.size(), selection.indices.size());
    EXPECT_TRUE(std::is_sorted(selection.indices.begin(), selection.indices.end()));
    EXPECT_EQ(std::adjacent_find(selection.indices.begin(), selection.indices.end()),
              selection.indices.end());
    const std::vector<float> flat = Elements(activations);
    for (size_t i = 0; i < selection.indices.size(); ++i) {
      ASSERT_LT(selection.indices[i], numel);
      ASSERT_EQ(selection.values[i], flat[selection.indices[i]]);  // gathered once
    }
    const int64_t rows = activations.size(0), row_numel = numel / rows;
    const int64_t k = spec.activations.per_sample ? rows * std::llround(0.1 * row_numel)
                                                  : std::llround(0.1 * numel);
    if (LandsExactly(method)) {
      EXPECT_EQ(selection.count(numel), k);
    } else {
      EXPECT_NEAR(selection.count(numel), k, 0.5 * k);
    }
  }

  v1::Tensor message;
  encoder.Encode(activations, selection, &message);
  EXPECT_EQ(message.SerializeAsString(),
            LegacyActivationMessage(activations, spec.activations, 3).SerializeAsString());

  const ReceivedActivations received =
      ActivationDecoder(spec.activations, ActivationTensorSpec()).Decode(message);
  EXPECT_EQ(received.sent.all, selection.all);
  EXPECT_EQ(received.sent.indices, selection.indices);
  ASSERT_EQ(SizesOf(received.dense), SizesOf(activations));
  if (selection.all) {
    EXPECT_TRUE(at::equal(received.dense, activations));
  } else {
    EXPECT_EQ(Support(received.dense), selection.indices);
    const std::vector<float> flat = Elements(received.dense);
    for (size_t i = 0; i < selection.indices.size(); ++i) {
      ASSERT_EQ(flat[selection.indices[i]], Rounded(selection.values[i], precision));
    }
  }
}

TEST_P(LinkCodecTest, GradientsComeBackExactlyWhereTheActivationsWereSent) {
  const auto [activation_method, precision, per_sample] = GetParam();
  for (const Method gradient_method : kMethods) {
    SCOPED_TRACE(std::string("gradients ") + MethodName(gradient_method));
    const LinkSpec spec = Spec(activation_method, gradient_method, precision, per_sample);
    const at::Tensor activations = Activations(2);
    ActivationEncoder client(spec.activations, /*seed=*/5);
    const ActivationSelection selection = client.Select(activations);
    v1::Tensor up;
    client.Encode(activations, selection, &up);
    const ReceivedActivations received =
        ActivationDecoder(spec.activations, ActivationTensorSpec()).Decode(up);

    // Any gradient: the encoder alone decides what goes back, not zeros in the tensor.
    const at::Tensor gradient = Activations(4) * 3.0;
    GradientEncoder server(spec.gradients, /*seed=*/9);
    v1::Tensor down;
    server.Encode(gradient, received.sent, &down);
    EXPECT_EQ(
        down.SerializeAsString(),
        LegacyGradientMessage(gradient, received.sent, spec.gradients, 9).SerializeAsString());

    const at::Tensor decoded =
        GradientDecoder(spec.gradients).Decode(down, SizesOf(activations), selection);
    ASSERT_EQ(SizesOf(decoded), SizesOf(activations));
    const std::vector<uint32_t> support = Support(decoded);
    if (!selection.all) {
      EXPECT_TRUE(IsSubset(support, selection.indices)) << "a gradient value off the sent set";
    }
    // A dense gradient goes back in fp32; values and sparse payloads in the gradients' precision.
    const bool dense = selection.all && !spec.gradients.compressed();
    const std::vector<float> want = Elements(gradient), got = Elements(decoded);
    for (uint32_t position : support) {
      ASSERT_EQ(got[position],
                dense ? want[position] : Rounded(want[position], spec.gradients.precision));
    }
    const int64_t sent = selection.count(activations.numel());
    if (!spec.gradients.compressed()) {
      if (selection.all) {
        EXPECT_TRUE(at::equal(decoded, gradient));  // dense, fp32 whatever the precision says
      } else {
        EXPECT_EQ(support, selection.indices);
      }
    } else if (LandsExactly(gradient_method)) {
      EXPECT_EQ(static_cast<int64_t>(support.size()), std::llround(0.5 * sent));
    } else {
      EXPECT_NEAR(static_cast<double>(support.size()), 0.5 * sent, 0.5 * sent);
    }
  }
}

std::string LinkParamName(const ::testing::TestParamInfo<LinkParam>& info) {
  std::string method = MethodName(std::get<0>(info.param));
  std::replace(method.begin(), method.end(), '+', 'P');
  return method + "_" + ToString(std::get<1>(info.param)) +
         (std::get<2>(info.param) ? "_PerSample" : "_WholeBatch");
}

INSTANTIATE_TEST_SUITE_P(MethodsPrecisionsPerSample, LinkCodecTest,
                         ::testing::Combine(::testing::ValuesIn(kMethods),
                                            ::testing::ValuesIn(kPrecisions), ::testing::Bool()),
                         LinkParamName);

TEST(GradientCodecTest, AcceptsOnlyThePayloadItsSpecProduces) {
  const std::vector<int64_t> shape = {2, 3};
  const at::Tensor gradient = at::randn({2, 3});
  SentPositions sparse;
  sparse.all = false;
  sparse.indices = {1, 4};
  v1::Tensor values, dense;
  EncodeValuesAt(gradient, sparse.indices, ValuePrecision::kFp32, &values);
  EncodeDense(gradient, &dense);
  const GradientDecoder plain{DirectionSpec{}};
  EXPECT_NO_THROW(plain.Decode(values, shape, sparse));
  EXPECT_THROW(plain.Decode(dense, shape, sparse), InvalidInput);
  EXPECT_THROW(plain.Decode(values, shape, SentPositions{}), InvalidInput);
  EXPECT_THROW(plain.Decode(values, {2, 4}, sparse), InvalidInput);
  const GradientDecoder compressed{DirectionSpec{Method::kTopK, 0.5}};
  EXPECT_THROW(compressed.Decode(values, shape, sparse), InvalidInput);
  EXPECT_THROW(compressed.Decode(dense, shape, SentPositions{}), InvalidInput);

  // Relative indices beyond the sent set, and values that are not finite.
  v1::Tensor relative;
  GradientEncoder(DirectionSpec{Method::kTopK, 1.0}, 1).Encode(gradient, sparse, &relative);
  EXPECT_NO_THROW(compressed.Decode(relative, shape, sparse));
  SentPositions fewer = sparse;
  fewer.indices.pop_back();
  EXPECT_THROW(compressed.Decode(relative, shape, fewer), InvalidInput);
  at::Tensor bad = gradient.clone();
  bad.view(-1)[4] = std::nanf("");
  EncodeValuesAt(bad, sparse.indices, ValuePrecision::kFp32, &values);
  EXPECT_THROW(plain.Decode(values, shape, sparse), NotFinite);
}

TEST(GradientCodecTest, NothingSentMeansNothingComesBack) {
  const at::Tensor gradient = at::randn({2, 3});
  SentPositions none;
  none.all = false;
  for (const Method method : {Method::kNone, Method::kTopK}) {
    const DirectionSpec spec{method, 0.5};
    v1::Tensor message;
    GradientEncoder(spec, 1).Encode(gradient, none, &message);
    const at::Tensor decoded = GradientDecoder(spec).Decode(message, {2, 3}, none);
    EXPECT_TRUE(at::equal(decoded, at::zeros({2, 3}))) << MethodName(method);
  }
}

// ---- client-model updates (error feedback) and weights ----

using UpdateParam = std::tuple<Method, ValuePrecision>;
class UpdateCodecTest : public ::testing::TestWithParam<UpdateParam> {};

TEST_P(UpdateCodecTest, SparseWithoutGoingDenseAndTheSameBytesAsBefore) {
  const auto [method, precision] = GetParam();
  v1::CompressionConfig config;
  *config.mutable_updates() = Settings(MethodName(method), 0.1, ToString(precision));
  const DirectionSpec spec = ParseLinkSpec(config).updates;
  constexpr int64_t kParameters = 2000;
  UpdateEncoder client(spec, /*seed=*/7);
  const UpdateDecoder server(spec, kParameters, /*max_abs=*/100.0);
  // The path before the contract: error feedback, then dense -> sparse again.
  ErrorFeedback legacy(CompressorConfig{spec.method, spec.density, 7});
  at::manual_seed(11);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    const at::Tensor delta = at::randn({kParameters});
    v1::Tensor message;
    client.Encode(delta, &message);
    v1::Tensor before;
    if (!spec.compressed()) {
      EncodeDense(delta, &before);
    } else {
      const Selection selection = legacy.Compress("client_model", delta);
      EncodeSparse(Decompress(selection), selection.indices, spec.precision, &before);
      // What arrives: the accumulated values at the chosen positions, rounded.
      const std::vector<float> decoded = Elements(server.Decode(message));
      std::vector<uint32_t> support;
      for (size_t i = 0; i < decoded.size(); ++i) {
        if (decoded[i] != 0.0f) support.push_back(static_cast<uint32_t>(i));
      }
      EXPECT_EQ(support, selection.indices);
      for (size_t i = 0; i < selection.indices.size(); ++i) {
        ASSERT_EQ(decoded[selection.indices[i]], Rounded(selection.values[i], precision));
      }
      if (LandsExactly(method)) {
        EXPECT_EQ(static_cast<int64_t>(selection.indices.size()), kParameters / 10);
      }
    }
    EXPECT_EQ(message.SerializeAsString(), before.SerializeAsString());
    if (!spec.compressed()) {
      EXPECT_TRUE(at::equal(server.Decode(message), delta));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(MethodsPrecisions, UpdateCodecTest,
                         ::testing::Combine(::testing::ValuesIn(kMethods),
                                            ::testing::ValuesIn(kPrecisions)),
                         [](const ::testing::TestParamInfo<UpdateParam>& info) {
                           std::string method = MethodName(std::get<0>(info.param));
                           std::replace(method.begin(), method.end(), '+', 'P');
                           return method + "_" + ToString(std::get<1>(info.param));
                         });

TEST(UpdateEncoderTest, ResetForgetsTheResidual) {
  const DirectionSpec spec{Method::kTopK, 0.5};
  UpdateEncoder fresh(spec, 1), reset(spec, 1);
  const at::Tensor first = at::tensor({4.0f, 3.0f, 2.0f, 1.0f});
  const at::Tensor second = at::tensor({0.0f, 0.0f, 0.5f, 0.5f});
  v1::Tensor message, expected;
  reset.Encode(first, &message);  // keeps {2, 1} as residual
  reset.Reset();
  reset.Encode(second, &message);
  fresh.Encode(second, &expected);
  EXPECT_EQ(message.SerializeAsString(), expected.SerializeAsString());
}

TEST(UpdateDecoderTest, RefusesTheWrongCountOrValuesBeyondTheBound) {
  const DirectionSpec spec{Method::kTopK, 0.5};
  UpdateEncoder client(spec, 1);
  v1::Tensor message;
  client.Encode(at::tensor({1.0f, -2.0f, 3.0f, 0.5f}), &message);
  EXPECT_NO_THROW(UpdateDecoder(spec, 4, 3.0).Decode(message));
  EXPECT_THROW(UpdateDecoder(spec, 4, 2.5).Decode(message), OutOfBounds);
  EXPECT_THROW(UpdateDecoder(spec, 5, 3.0).Decode(message), InvalidInput);
  EXPECT_THROW(UpdateDecoder(DirectionSpec{}, 4, 3.0).Decode(message), InvalidInput);  // sparse
}

// ---- int8 / int4 over the link: positions exact, values as the codec rounds them, bounds ----

// The values a payload of these values decodes to (exact: the same blocks in the same order).
std::vector<float> CodecRounded(const std::vector<float>& values, ValuePrecision precision) {
  return DecodeValues(EncodeValues(values.data(), values.size(), precision), values.size(),
                      precision);
}

class IntegerPrecisionLinkTest : public ::testing::TestWithParam<ValuePrecision> {};

TEST_P(IntegerPrecisionLinkTest, ActivationsAndGradientsArriveWhereTheyWereSent) {
  const ValuePrecision precision = GetParam();
  v1::CompressionConfig config;
  *config.mutable_activations() = Settings("gaussiank+", 0.1, ToString(precision));
  *config.mutable_gradients() = Settings("none", 1.0, ToString(precision));
  const LinkSpec spec = ParseLinkSpec(config);
  const at::Tensor activations = Activations(1);
  ActivationEncoder client(spec.activations, /*seed=*/3);
  const ActivationSelection selection = client.Select(activations);
  v1::Tensor up;
  client.Encode(activations, selection, &up);
  const ReceivedActivations received =
      ActivationDecoder(spec.activations, ActivationTensorSpec()).Decode(up);
  // Small values may round to 0, so the sent set comes from the payload, not from the support.
  ASSERT_EQ(received.sent.indices, selection.indices);
  const std::vector<float> expected = CodecRounded(selection.values, precision);
  const std::vector<float> flat = Elements(received.dense);
  for (size_t i = 0; i < selection.indices.size(); ++i) {
    ASSERT_EQ(flat[selection.indices[i]], expected[i]);
    ASSERT_NEAR(expected[i], selection.values[i], 0.1 * 4.5);  // |x| < 4.5: half a step at most
  }
  EXPECT_TRUE(IsSubset(Support(received.dense), selection.indices));

  // Gradients back as values only, in the same order, in the same precision.
  const at::Tensor gradient = Activations(4) * 3.0;
  v1::Tensor down;
  GradientEncoder(spec.gradients, 9).Encode(gradient, received.sent, &down);
  const at::Tensor decoded =
      GradientDecoder(spec.gradients).Decode(down, SizesOf(activations), selection);
  const std::vector<float> want = Elements(gradient), got = Elements(decoded);
  std::vector<float> sent_values;
  for (uint32_t position : selection.indices) sent_values.push_back(want[position]);
  const std::vector<float> rounded = CodecRounded(sent_values, precision);
  for (size_t i = 0; i < selection.indices.size(); ++i) {
    ASSERT_EQ(got[selection.indices[i]], rounded[i]);
  }
  EXPECT_TRUE(IsSubset(Support(decoded), selection.indices));
}

TEST_P(IntegerPrecisionLinkTest, TheServersMagnitudeBoundAppliesToDecodedValues) {
  const ValuePrecision precision = GetParam();
  const DirectionSpec spec{Method::kTopK, 0.5, precision};
  UpdateEncoder client(spec, 1);
  v1::Tensor message;
  client.Encode(at::tensor({1.0f, -2.0f, 3.0f, 0.5f}), &message);
  EXPECT_NO_THROW(UpdateDecoder(spec, 4, 3.0).Decode(message));  // the block maximum is exact
  EXPECT_THROW(UpdateDecoder(spec, 4, 2.5).Decode(message), OutOfBounds);
  // A hostile scale: finite, so the codec accepts it; the bound refuses the values it makes.
  std::string payload = message.sparse();
  const float huge = 3e38f;
  const size_t scale_at = payload.size() - ValueBytes(precision, 2);
  std::memcpy(payload.data() + scale_at, &huge, sizeof(huge));
  message.set_sparse(payload);
  EXPECT_THROW(UpdateDecoder(spec, 4, 100.0).Decode(message), OutOfBounds);
  const float nan = std::nanf("");
  std::memcpy(payload.data() + scale_at, &nan, sizeof(nan));
  message.set_sparse(payload);
  EXPECT_THROW(UpdateDecoder(spec, 4, 100.0).Decode(message), InvalidInput);
}

INSTANTIATE_TEST_SUITE_P(Int8AndInt4, IntegerPrecisionLinkTest,
                         ::testing::Values(ValuePrecision::kInt8, ValuePrecision::kInt4),
                         [](const ::testing::TestParamInfo<ValuePrecision>& info) {
                           return std::string(ToString(info.param));
                         });

TEST(WeightsCodecTest, DenseRoundTripOfExactlyTheModelsSize) {
  const at::Tensor weights = at::randn({300});
  v1::Tensor message;
  EncodeWeights(weights, &message);
  ASSERT_EQ(message.payload_case(), v1::Tensor::kDense);
  EXPECT_TRUE(at::equal(DecodeWeights(message, 300), weights));
  EXPECT_THROW(DecodeWeights(message, 299), InvalidInput);
  EXPECT_THROW(DecodeWeights(message, 301), InvalidInput);
  at::Tensor bad = weights.clone();
  bad[7] = std::numeric_limits<float>::infinity();
  EncodeWeights(bad, &message);
  EXPECT_THROW(DecodeWeights(message, 300), NotFinite);
}

}  // namespace
}  // namespace cleave::protocol
