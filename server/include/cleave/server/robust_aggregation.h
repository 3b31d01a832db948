// How a round's client-model deltas become one step of the client-side weights. A hospital with a
// valid certificate can still send a scaled or sign-flipped delta; the robust rules bound what one
// such delta can do: norm clipping, coordinate-wise median and trimmed mean (Yin et al. 2018,
// "Byzantine-robust distributed learning"; Flower's FedMedian and FedTrimmedAvg).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cleave::server {

enum class Aggregation {
  kMean,         // sum(samples * scale * delta) / sum(samples): the plain rule
  kClippedMean,  // the same, after clipping each delta's L2 norm to clip_factor x the median norm
  kMedian,       // coordinate-wise median of scale * delta, unweighted
  kTrimmedMean,  // coordinate-wise mean of scale * delta without the extremes, unweighted
  // FLTrust's rule (Cao et al. 2021) with the coordinate-wise median as the reference: each
  // scale * delta weighted by ReLU(cosine with the reference) and rescaled to its norm, so a
  // sign-flipped delta gets no weight and a scaled one no extra length; applied a second time
  // against the first result (which no longer counts the attacker); unweighted by samples
  kTrustMean,
};
// "mean", "clipped-mean", "median", "trimmed-mean", "trust-mean"; throws UserError
// listing them otherwise.
Aggregation ParseAggregation(const std::string& name);
const char* AggregationName(Aggregation aggregation);

struct AggregationOptions {
  Aggregation method = Aggregation::kMean;
  // clipped-mean: a delta whose norm exceeds clip_factor x the median norm of the round's deltas
  // is scaled down to that norm.
  double clip_factor = 2.0;
  // trimmed-mean: per coordinate, k = max(1, floor(trim_fraction * n)) values are dropped at each
  // end; with fewer than 2k + 1 deltas (n < 3) the median is used instead.
  double trim_fraction = 0.2;
};
// Throws UserError unless clip_factor is finite and >= 1 and trim_fraction is in [0, 0.5).
void CheckAggregationOptions(const AggregationOptions& options);

// One accepted update of a round.
struct ClientDelta {
  at::Tensor delta;     // [P] float32, finite: new minus old client-side weights
  int64_t samples = 0;  // > 0: how many samples it was trained on (weights the means)
  double scale = 1.0;   // in (0, 1]: the staleness discount, 1 / (1 + staleness)
};

// The weights change by step_scale * step. Apply it as weights.add_(step, step_scale): for the
// means, step is the float32 sum of samples * scale * delta and step_scale 1 / sum(samples), and
// add_ fuses the multiply-add exactly as RoundCoordinator always has (multiplying first rounds
// twice and changes about one weight in ten by an ulp). The median and trimmed mean have
// step_scale 1.
struct AggregateResult {
  at::Tensor step;  // [P] float32
  double step_scale = 1.0;
  int64_t clipped = 0;   // clipped-mean: deltas whose norm was clipped
  double clip_norm = 0;  // clipped-mean: the norm they were clipped to
};

// Combines a round's deltas (at least one, all of the same size) into a step. The means add up
// samples * scale * delta in float32 in the given order, as RoundCoordinator always has, so
// "mean" (and "clipped-mean" when nothing is clipped) give the same weights bit for bit; the
// median and trimmed mean sort exact float32 values and average the ones they keep in double.
AggregateResult Aggregate(const std::vector<ClientDelta>& deltas,
                          const AggregationOptions& options);

}  // namespace cleave::server
