// Aggregation rules against hand-computed references and RoundCoordinator's running sum, and
// what one scaled or sign-flipped delta can do to each.
#include "cleave/server/robust_aggregation.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <tuple>

#include "cleave/core/error.h"

namespace cleave::server {
namespace {

ClientDelta Delta(std::vector<float> values, int64_t samples = 1, double scale = 1.0) {
  return {at::tensor(values, at::kFloat), samples, scale};
}

AggregationOptions Method(Aggregation method) {
  AggregationOptions options;
  options.method = method;
  return options;
}

// What the weights change by.
at::Tensor Change(const AggregateResult& result) {
  return at::zeros_like(result.step).add_(result.step, result.step_scale);
}

at::Tensor Step(const std::vector<ClientDelta>& deltas, Aggregation method) {
  return Change(Aggregate(deltas, Method(method)));
}

constexpr Aggregation kAll[] = {Aggregation::kMean, Aggregation::kClippedMean, Aggregation::kMedian,
                                Aggregation::kTrimmedMean, Aggregation::kTrustMean};

TEST(AggregationNameTest, RoundTripsAndIsDistinct) {
  std::set<std::string> names;
  for (Aggregation method : kAll) {
    EXPECT_EQ(ParseAggregation(AggregationName(method)), method);
    names.insert(AggregationName(method));
  }
  EXPECT_EQ(names, (std::set<std::string>{"mean", "clipped-mean", "median", "trimmed-mean",
                                          "trust-mean"}));
}

TEST(AggregationNameTest, UnknownNameThrowsListingTheValidOnes) {
  for (const std::string bad : {"", "Median", "avg", "trimmed_mean", "mean "}) {
    try {
      ParseAggregation(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const UserError& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find("'" + bad + "'"), std::string::npos) << message;
      for (Aggregation method : kAll) {
        EXPECT_NE(message.find(AggregationName(method)), std::string::npos) << message;
      }
    }
  }
}

class BadAggregationOptionsTest : public ::testing::TestWithParam<std::tuple<double, double>> {};

TEST_P(BadAggregationOptionsTest, Throw) {
  AggregationOptions options;
  std::tie(options.clip_factor, options.trim_fraction) = GetParam();
  EXPECT_THROW(CheckAggregationOptions(options), UserError);
  options.method = Aggregation::kMedian;
  EXPECT_THROW(Aggregate({Delta({1})}, options), UserError);
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
INSTANTIATE_TEST_SUITE_P(ClipAndTrim, BadAggregationOptionsTest,
                         ::testing::Values(std::make_tuple(0.99, 0.2), std::make_tuple(0.0, 0.2),
                                           std::make_tuple(-2.0, 0.2), std::make_tuple(kNaN, 0.2),
                                           std::make_tuple(kInf, 0.2), std::make_tuple(2.0, -0.01),
                                           std::make_tuple(2.0, 0.5), std::make_tuple(2.0, 1.0),
                                           std::make_tuple(2.0, kNaN)));

TEST(AggregationOptionsTest, BoundariesAreAccepted) {
  for (const auto& [clip, trim] : {std::make_tuple(1.0, 0.0), std::make_tuple(1e9, 0.49)}) {
    AggregationOptions options;
    options.clip_factor = clip;
    options.trim_fraction = trim;
    EXPECT_NO_THROW(CheckAggregationOptions(options)) << clip << " " << trim;
  }
}

TEST(AggregateTest, EmptyOrMismatchedInputIsAProgrammingError) {
  for (Aggregation method : kAll) {
    EXPECT_THROW(Aggregate({}, Method(method)), Error);
    EXPECT_THROW(Aggregate({Delta({1, 2}), Delta({1, 2, 3})}, Method(method)), Error);
    EXPECT_THROW(Aggregate({Delta({1, 2}, /*samples=*/0)}, Method(method)), Error);
    EXPECT_THROW(Aggregate({Delta({1, 2}, 1, /*scale=*/0.0)}, Method(method)), Error);
    EXPECT_THROW(Aggregate({Delta({1, NAN})}, Method(method)), Error);
  }
}

TEST(AggregateTest, MeanByHand) {
  // (10 * 1 * [1, 2, -3] + 30 * 0.5 * [3, 0, 1]) / (10 + 30) = [55, 20, -15] / 40
  const AggregateResult result = Aggregate({Delta({1, 2, -3}, 10, 1.0), Delta({3, 0, 1}, 30, 0.5)},
                                           Method(Aggregation::kMean));
  EXPECT_TRUE(result.step.equal(at::tensor({55.f, 20.f, -15.f}))) << result.step;
  EXPECT_DOUBLE_EQ(result.step_scale, 1.0 / 40);
  EXPECT_TRUE(Change(result).equal(at::tensor({1.375f, 0.5f, -0.375f}))) << Change(result);
  EXPECT_EQ(result.clipped, 0);
}

// RoundCoordinator's rule: aggregate += samples * scale * delta (float32, arrival order), then
// weights += aggregate / sum(samples) as one fused add_.
TEST(AggregateTest, MeanIsTheRoundCoordinatorsRuleBitForBit) {
  at::manual_seed(7);
  const int64_t p = 4099;
  const at::Tensor weights = at::randn({p});
  std::vector<ClientDelta> deltas;
  at::Tensor aggregate = at::zeros({p});
  int64_t samples = 0;
  for (int i = 0; i < 5; ++i) {
    ClientDelta d{at::randn({p}) * 0.01, 17 + 31 * i, 1.0 / (1.0 + i % 3)};
    aggregate.add_(d.delta, static_cast<double>(d.samples) * d.scale);
    samples += d.samples;
    deltas.push_back(d);
  }
  const at::Tensor expected = weights.clone().add_(aggregate, 1.0 / static_cast<double>(samples));
  for (Aggregation method : {Aggregation::kMean, Aggregation::kClippedMean}) {
    const AggregateResult result = Aggregate(deltas, Method(method));
    EXPECT_TRUE(weights.clone().add_(result.step, result.step_scale).equal(expected))
        << AggregationName(method);
    EXPECT_EQ(result.clipped, 0);  // norms of same-sized random deltas are within 2x
  }
}

TEST(AggregateTest, MedianByHandIgnoresSamplesAndUsesTheStalenessScale) {
  // Scaled: [1, 5, -2], [3, -1, 0], 0.5 * [8, 4, 14] = [4, 2, 7].
  const std::vector<ClientDelta> deltas = {Delta({1, 5, -2}, 1000), Delta({3, -1, 0}, 1),
                                           Delta({8, 4, 14}, 1, 0.5)};
  EXPECT_TRUE(Step(deltas, Aggregation::kMedian).equal(at::tensor({3.f, 2.f, 0.f})))
      << Step(deltas, Aggregation::kMedian);
}

TEST(AggregateTest, MedianOfAnEvenCountIsTheMeanOfTheMiddleTwo) {
  const std::vector<ClientDelta> deltas = {Delta({1, 10}), Delta({2, -10}), Delta({4, 0}),
                                           Delta({100, 1})};
  EXPECT_TRUE(Step(deltas, Aggregation::kMedian).equal(at::tensor({3.f, 0.5f})))
      << Step(deltas, Aggregation::kMedian);
  // Two: their mean. One: itself.
  EXPECT_TRUE(
      Step({Delta({1, -3}), Delta({2, 4})}, Aggregation::kMedian).equal(at::tensor({1.5f, 0.5f})));
  EXPECT_TRUE(
      Step({Delta({1, -3}, 5, 0.5)}, Aggregation::kMedian).equal(at::tensor({0.5f, -1.5f})));
}

TEST(AggregateTest, TrimmedMeanByHand) {
  // n = 5, 20%: one dropped at each end. {1, 2, 3, 7, 100} -> 4; {-50, 0, 1, 2, 3} -> 1.
  const std::vector<ClientDelta> five = {Delta({3, -50}), Delta({100, 2}), Delta({1, 3}),
                                         Delta({7, 0}), Delta({2, 1}, 7)};
  EXPECT_TRUE(Step(five, Aggregation::kTrimmedMean).equal(at::tensor({4.f, 1.f})))
      << Step(five, Aggregation::kTrimmedMean);
  // 40% of 5: two at each end, the median remains.
  AggregationOptions options = Method(Aggregation::kTrimmedMean);
  options.trim_fraction = 0.4;
  EXPECT_TRUE(Change(Aggregate(five, options)).equal(at::tensor({3.f, 1.f})));
  // 0% still drops one at each end once there are three.
  options.trim_fraction = 0.0;
  EXPECT_TRUE(
      Change(Aggregate({Delta({1}), Delta({-9}), Delta({50})}, options)).equal(at::tensor({1.f})));
}

TEST(AggregateTest, TrimmedMeanDropsFloorOfTheFractionAtEachEnd) {
  // n = 10, 20%: k = 2. Kept: 1..6 -> 3.5 (k = 1 would give 21 / 8).
  std::vector<ClientDelta> ten;
  for (float v : {-1000.f, 6.f, 1.f, 900.f, 2.f, 1e4f, 3.f, -900.f, 5.f, 4.f}) {
    ten.push_back(Delta({v}));
  }
  EXPECT_TRUE(Step(ten, Aggregation::kTrimmedMean).equal(at::tensor({3.5f})))
      << Step(ten, Aggregation::kTrimmedMean);
  // 25% of 10 is 2.5: still k = 2.
  AggregationOptions options = Method(Aggregation::kTrimmedMean);
  options.trim_fraction = 0.25;
  EXPECT_TRUE(Change(Aggregate(ten, options)).equal(at::tensor({3.5f})));
  // 30% of 10: k = 3, kept 2..5.
  options.trim_fraction = 0.3;
  EXPECT_TRUE(Change(Aggregate(ten, options)).equal(at::tensor({3.5f})));
  options.trim_fraction = 0.1;  // k = 1: -900, 1..6, 900 -> 21 / 8
  EXPECT_TRUE(Change(Aggregate(ten, options)).equal(at::tensor({21.f / 8.f})));
}

TEST(AggregateTest, TrimmedMeanOfFewerThanThreeIsTheMedian) {
  // Scaled: [1, -3] and 0.25 * [2, 40] = [0.5, 10]; their median, not the weighted mean.
  const std::vector<ClientDelta> two = {Delta({1, -3}), Delta({2, 40}, 9, 0.25)};
  EXPECT_TRUE(Step(two, Aggregation::kTrimmedMean).equal(at::tensor({0.75f, 3.5f})))
      << Step(two, Aggregation::kTrimmedMean);
  EXPECT_FALSE(Step(two, Aggregation::kMean).equal(at::tensor({0.75f, 3.5f})));
  EXPECT_TRUE(
      Step({Delta({1, -3}, 3, 0.5)}, Aggregation::kTrimmedMean).equal(at::tensor({0.5f, -1.5f})));
}

TEST(AggregateTest, ClippedMeanByHand) {
  // Norms 5, 1, 1: median 1, clipped to 2 x 1: [3, 4] -> [1.2, 1.6]. Mean of three.
  const AggregateResult result =
      Aggregate({Delta({3, 4}), Delta({0, 1}), Delta({1, 0})}, Method(Aggregation::kClippedMean));
  EXPECT_EQ(result.clipped, 1);
  EXPECT_DOUBLE_EQ(result.clip_norm, 2.0);
  EXPECT_TRUE(at::allclose(Change(result), at::tensor({2.2f / 3, 2.6f / 3}), 1e-6, 1e-7))
      << Change(result);
  // With an even count the median norm is the mean of the middle two: norms 1, 3, 5, 13 -> 4;
  // factor 1.5 clips only the 13 to 6.
  AggregationOptions options = Method(Aggregation::kClippedMean);
  options.clip_factor = 1.5;
  const AggregateResult even =
      Aggregate({Delta({1, 0}), Delta({0, 3}), Delta({3, 4}), Delta({5, 12})}, options);
  EXPECT_DOUBLE_EQ(even.clip_norm, 6.0);
  EXPECT_EQ(even.clipped, 1);
  const float x = (1 + 0 + 3 + 5 * 6.f / 13) / 4, y = (0 + 3 + 4 + 12 * 6.f / 13) / 4;
  EXPECT_TRUE(at::allclose(Change(even), at::tensor({x, y}), 1e-6, 1e-7)) << Change(even);
}

// Honest hospitals send nearly the same delta; one attacker sends something else.
struct Round {
  std::vector<ClientDelta> deltas;  // honest first, the attacker last
  at::Tensor honest_mean;           // [P] double
  at::Tensor honest_min, honest_max;
};

enum class Attack { kScaled, kSignFlipped };

Round RoundWithAttacker(int honest, Attack attack) {
  at::manual_seed(11);
  const int64_t p = 257;
  const at::Tensor base = at::randn({p});
  Round round;
  std::vector<at::Tensor> values;
  for (int i = 0; i < honest; ++i) {
    values.push_back(base + 1e-3 * at::randn({p}));
    round.deltas.push_back({values.back(), 100});
  }
  const at::Tensor stacked = at::stack(values).to(at::kDouble);
  round.honest_mean = stacked.mean(0);
  round.honest_min = std::get<0>(stacked.min(0));
  round.honest_max = std::get<0>(stacked.max(0));
  round.deltas.push_back({attack == Attack::kScaled ? values[0] * 1e6 : -values[0], 100});
  return round;
}

double MaxDistance(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

class RobustAggregationTest
    : public ::testing::TestWithParam<std::tuple<Aggregation, Attack, int>> {};

TEST_P(RobustAggregationTest, OneAttackerCannotMoveTheStepOutOfTheHonestRange) {
  const auto [method, attack, honest] = GetParam();
  const Round round = RoundWithAttacker(honest, attack);
  const at::Tensor step = Step(round.deltas, method).to(at::kDouble);
  // Per coordinate, the median and the trimmed mean of n values of which one is arbitrary lie
  // between the smallest and largest honest value.
  EXPECT_TRUE(step.ge(round.honest_min).all().item<bool>());
  EXPECT_TRUE(step.le(round.honest_max).all().item<bool>());
  EXPECT_LT(MaxDistance(step, round.honest_mean), 5e-3);
  // ...while the plain mean is dragged away.
  EXPECT_GT(MaxDistance(Step(round.deltas, Aggregation::kMean), round.honest_mean), 0.3);
}

INSTANTIATE_TEST_SUITE_P(
    MedianAndTrimmed, RobustAggregationTest,
    ::testing::Combine(::testing::Values(Aggregation::kMedian, Aggregation::kTrimmedMean),
                       ::testing::Values(Attack::kScaled, Attack::kSignFlipped),
                       ::testing::Values(3, 4, 5)),
    [](const ::testing::TestParamInfo<RobustAggregationTest::ParamType>& info) {
      std::string name = AggregationName(std::get<0>(info.param));
      name.erase(std::remove(name.begin(), name.end(), '-'), name.end());
      name += std::get<1>(info.param) == Attack::kScaled ? "_scaled_" : "_signflipped_";
      return name + std::to_string(std::get<2>(info.param)) + "honest";
    });

// The rule written out on plain vectors: weights ReLU(cos(d, ref)), each d rescaled to |ref|.
std::vector<double> TrustReference(const std::vector<std::vector<double>>& points,
                                   const std::vector<double>& reference) {
  auto dot = [](const std::vector<double>& a, const std::vector<double>& b) {
    double sum = 0;
    for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
    return sum;
  };
  const double reference_norm = std::sqrt(dot(reference, reference));
  std::vector<double> sum(reference.size(), 0.0);
  double trust_sum = 0;
  for (const auto& p : points) {
    const double norm = std::sqrt(dot(p, p));
    const double trust = std::max(0.0, dot(p, reference) / (norm * reference_norm));
    for (size_t i = 0; i < p.size(); ++i) sum[i] += trust * reference_norm / norm * p[i];
    trust_sum += trust;
  }
  for (double& v : sum) v /= trust_sum;
  return sum;
}

TEST(TrustMeanTest, ByHand) {
  AggregationOptions options;
  options.method = Aggregation::kTrustMean;
  // First pass against the coordinate-wise median (0, 2): (2, 2) has cosine 1/sqrt(2), (0, 3)
  // cosine 1, (-8, -8) cosine -1/sqrt(2) (no weight): (1, 3) / (1 + 1/sqrt(2)). The second pass
  // weighs the deltas against that.
  const std::vector<ClientDelta> deltas = {{at::tensor({2.0f, 2.0f}), 10, 1.0},
                                           {at::tensor({0.0f, 3.0f}), 10, 1.0},
                                           {at::tensor({-8.0f, -8.0f}), 10, 1.0}};
  const std::vector<std::vector<double>> points = {{2, 2}, {0, 3}, {-8, -8}};
  const std::vector<double> first = TrustReference(points, {0, 2});
  const double t = 1.0 / std::sqrt(2.0);
  EXPECT_NEAR(first[0], 1 / (1 + t), 1e-12);
  EXPECT_NEAR(first[1], 3 / (1 + t), 1e-12);
  const std::vector<double> expected = TrustReference(points, first);
  const at::Tensor step = Aggregate(deltas, options).step.to(at::kDouble);
  EXPECT_NEAR(step[0].item<double>(), expected[0], 1e-6);
  EXPECT_NEAR(step[1].item<double>(), expected[1], 1e-6);
}

TEST(TrustMeanTest, ASignFlippedOrScaledDeltaGetsNoSay) {
  AggregationOptions options;
  options.method = Aggregation::kTrustMean;
  at::manual_seed(3);
  const at::Tensor direction = at::randn({500});
  std::vector<ClientDelta> deltas;
  for (int i = 0; i < 2; ++i) deltas.push_back({direction + 0.3 * at::randn({500}), 64, 1.0});
  const at::Tensor honest_mean = (deltas[0].delta + deltas[1].delta) / 2;
  for (double factor : {-4.0, 10.0}) {
    std::vector<ClientDelta> round = deltas;
    round.push_back({factor * (direction + 0.3 * at::randn({500})), 64, 1.0});
    const at::Tensor step = Aggregate(round, options).step;
    options.method = Aggregation::kMean;
    const AggregateResult mean = Aggregate(round, options);
    options.method = Aggregation::kTrustMean;
    const double scale = honest_mean.norm().item<double>();
    EXPECT_LT((step - honest_mean).norm().item<double>(), 0.3 * scale) << factor;
    EXPECT_GT((mean.step * mean.step_scale - honest_mean).norm().item<double>(), 0.9 * scale)
        << factor;
  }
}

TEST(TrustMeanTest, OfIdenticalDeltasIsThatDeltaScaledByStaleness) {
  AggregationOptions options;
  options.method = Aggregation::kTrustMean;
  const at::Tensor delta = at::randn({33});
  const at::Tensor step = Aggregate({{delta, 5, 0.5}, {delta, 7, 0.5}}, options).step;
  EXPECT_TRUE(at::allclose(step, delta * 0.5, 1e-6, 1e-7));
}

TEST(ClippedMeanTest, BoundsAScaledAttackersContribution) {
  for (int honest : {3, 4, 5}) {
    const Round round = RoundWithAttacker(honest, Attack::kScaled);
    const AggregateResult result = Aggregate(round.deltas, Method(Aggregation::kClippedMean));
    EXPECT_EQ(result.clipped, 1);
    // Equal samples: step = (sum of honest + attacker clipped) / n.
    const double n = static_cast<double>(round.deltas.size());
    const at::Tensor attacker_part =
        Change(result).to(at::kDouble) - round.honest_mean * (static_cast<double>(honest) / n);
    const double honest_norm = round.deltas[0].delta.to(at::kDouble).norm().item<double>();
    EXPECT_NEAR(result.clip_norm, 2.0 * honest_norm, 1e-2 * honest_norm);
    EXPECT_LE(attacker_part.norm().item<double>(), result.clip_norm / n * (1 + 1e-5));
    EXPECT_GE(attacker_part.norm().item<double>(), result.clip_norm / n * (1 - 1e-5));
    // The unclipped mean lets it through a million-fold.
    const at::Tensor unclipped = Step(round.deltas, Aggregation::kMean).to(at::kDouble) -
                                 round.honest_mean * (static_cast<double>(honest) / n);
    EXPECT_GT(unclipped.norm().item<double>(), 1e5 * honest_norm / n);
  }
}

}  // namespace
}  // namespace cleave::server
