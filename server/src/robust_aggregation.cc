#include "cleave/server/robust_aggregation.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "cleave/core/error.h"

namespace cleave::server {

Aggregation ParseAggregation(const std::string& name) {
  if (name == "mean") return Aggregation::kMean;
  if (name == "clipped-mean") return Aggregation::kClippedMean;
  if (name == "median") return Aggregation::kMedian;
  if (name == "trimmed-mean") return Aggregation::kTrimmedMean;
  if (name == "trust-mean") return Aggregation::kTrustMean;
  throw UserError("unknown aggregation '" + name +
                  "' (use mean, clipped-mean, median, trimmed-mean or trust-mean)");
}

const char* AggregationName(Aggregation aggregation) {
  switch (aggregation) {
    case Aggregation::kMean:
      return "mean";
    case Aggregation::kClippedMean:
      return "clipped-mean";
    case Aggregation::kMedian:
      return "median";
    case Aggregation::kTrimmedMean:
      return "trimmed-mean";
    case Aggregation::kTrustMean:
      return "trust-mean";
  }
  return "?";
}

void CheckAggregationOptions(const AggregationOptions& options) {
  CLEAVE_CHECK_USER(std::isfinite(options.clip_factor) && options.clip_factor >= 1.0,
                    "the aggregation clip factor must be a finite number >= 1 (got ",
                    options.clip_factor, ")");
  CLEAVE_CHECK_USER(options.trim_fraction >= 0.0 && options.trim_fraction < 0.5,
                    "the aggregation trim fraction must be in [0, 0.5) (got ",
                    options.trim_fraction, ")");
}

namespace {

// sum(samples * scale * coefficient * delta) as step and 1 / sum(samples) as step_scale,
// accumulated in float32 in input order exactly as RoundCoordinator's running aggregate
// (coefficient 1 gives the same bits).
void WeightedMean(const std::vector<ClientDelta>& deltas, const std::vector<double>& coefficients,
                  AggregateResult* result) {
  at::Tensor sum = at::zeros_like(deltas.front().delta);
  int64_t samples = 0;
  for (size_t i = 0; i < deltas.size(); ++i) {
    sum.add_(deltas[i].delta,
             static_cast<double>(deltas[i].samples) * deltas[i].scale * coefficients[i]);
    samples += deltas[i].samples;
  }
  result->step = std::move(sum);
  result->step_scale = 1.0 / static_cast<double>(samples);
}

// The middle of n sorted values (the mean of the two middle ones when n is even).
double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
}

// Per coordinate: the staleness-scaled deltas sorted, [n, P]. Sorting float32 values is exact.
at::Tensor SortedScaledDeltas(const std::vector<ClientDelta>& deltas) {
  std::vector<at::Tensor> scaled;
  scaled.reserve(deltas.size());
  for (const ClientDelta& d : deltas) scaled.push_back(d.delta.mul(d.scale));
  return std::get<0>(at::stack(scaled).sort(/*dim=*/0));
}

at::Tensor CoordinateMedian(const at::Tensor& sorted) {
  const int64_t n = sorted.size(0);
  if (n % 2 == 1) return sorted[n / 2].clone();
  return sorted.narrow(0, n / 2 - 1, 2).to(at::kDouble).mean(0).to(at::kFloat);
}

// Each row of `points` [n, P] (double) weighted by ReLU(cos(row, reference)) and rescaled to the
// reference's norm; the reference itself when no row has a positive cosine.
at::Tensor TrustWeighted(const at::Tensor& points, const at::Tensor& reference) {
  const double reference_norm = reference.norm().item<double>();
  at::Tensor sum = at::zeros_like(reference);
  double trust_sum = 0;
  for (int64_t i = 0; i < points.size(0); ++i) {
    const double norm = points[i].norm().item<double>();
    if (norm == 0 || reference_norm == 0) continue;
    const double trust =
        std::max(0.0, (points[i] * reference).sum().item<double>() / (norm * reference_norm));
    sum.add_(points[i], trust * reference_norm / norm);
    trust_sum += trust;
  }
  return trust_sum > 0 ? sum / trust_sum : reference;
}

// FLTrust's rule (Cao et al., NDSS 2021) with the round's coordinate-wise median standing in for
// the server's own update (this server has no data): a sign-flipped delta gets no say and a
// scaled one no extra length. The median is pulled per coordinate towards what an attacker
// prefers, so the rule is applied twice: the second time against the first result, which no
// longer counts the attacker.
at::Tensor TrustWeightedMean(const at::Tensor& points) {
  const at::Tensor median = CoordinateMedian(std::get<0>(points.sort(/*dim=*/0)));
  return TrustWeighted(points, TrustWeighted(points, median));
}

}  // namespace

AggregateResult Aggregate(const std::vector<ClientDelta>& deltas,
                          const AggregationOptions& options) {
  CLEAVE_ENFORCE(!deltas.empty(), "nothing to aggregate");
  CheckAggregationOptions(options);
  const int64_t size = deltas.front().delta.numel();
  for (const ClientDelta& d : deltas) {
    CLEAVE_ENFORCE(d.delta.defined() && d.delta.dim() == 1 && d.delta.numel() == size &&
                       d.delta.scalar_type() == at::kFloat,
                   "deltas must be [", size, "] float32");
    CLEAVE_ENFORCE(d.samples > 0, "a delta's sample count must be positive (", d.samples, ")");
    CLEAVE_ENFORCE(d.scale > 0.0 && d.scale <= 1.0, "a delta's scale must be in (0, 1] (", d.scale,
                   ")");
    CLEAVE_ENFORCE(d.delta.isfinite().all().item<bool>(), "deltas must be finite");
  }

  AggregateResult result;
  const int64_t n = static_cast<int64_t>(deltas.size());
  switch (options.method) {
    case Aggregation::kMean:
      WeightedMean(deltas, std::vector<double>(deltas.size(), 1.0), &result);
      break;
    case Aggregation::kClippedMean: {
      std::vector<double> norms;
      for (const ClientDelta& d : deltas) {
        norms.push_back(
            at::linalg_vector_norm(d.delta, 2, c10::nullopt, false, at::kDouble).item<double>());
      }
      result.clip_norm = options.clip_factor * Median(norms);
      std::vector<double> coefficients(deltas.size(), 1.0);
      for (size_t i = 0; i < norms.size(); ++i) {
        if (norms[i] > result.clip_norm) {
          coefficients[i] = result.clip_norm / norms[i];
          ++result.clipped;
        }
      }
      WeightedMean(deltas, coefficients, &result);
      break;
    }
    case Aggregation::kMedian:
      result.step = CoordinateMedian(SortedScaledDeltas(deltas));
      break;
    case Aggregation::kTrimmedMean: {
      const int64_t k = std::max<int64_t>(
          1, static_cast<int64_t>(std::floor(options.trim_fraction * static_cast<double>(n))));
      const at::Tensor sorted = SortedScaledDeltas(deltas);
      result.step = n >= 2 * k + 1
                        ? sorted.narrow(0, k, n - 2 * k).to(at::kDouble).mean(0).to(at::kFloat)
                        : CoordinateMedian(sorted);
      break;
    }
    case Aggregation::kTrustMean: {
      std::vector<at::Tensor> scaled;
      for (const ClientDelta& d : deltas) scaled.push_back(d.delta.to(at::kDouble).mul(d.scale));
      result.step = TrustWeightedMean(at::stack(scaled)).to(at::kFloat);
      break;
    }
  }
  return result;
}

}  // namespace cleave::server
