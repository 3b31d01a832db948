#include "cleave/privacy/distance_correlation.h"

#include <ATen/ATen.h>

#include <vector>

#include "cleave/core/dataset.h"
#include "cleave/core/error.h"

namespace cleave::privacy {

namespace {

// Small enough not to bias the value, large enough that sqrt has a finite slope (and clamp_min
// passes no gradient below it).
constexpr double kSquaredDistanceFloor = 1e-18;

// A distance variance below this fraction of the squared mean distance is rounding noise (all
// rows equal up to the floor): dCor is then defined as 0 instead of a ratio of two noises.
constexpr double kRelativeVarianceFloor = 1e-12;

// Euclidean pairwise distances of the flattened rows, in double and from column-centred rows:
// |a|^2 + |b|^2 - 2ab cancels badly for rows with large norms (images, wide activations, a
// common offset); centring removes the offset, which distances do not depend on.
// With `float_gram` (measurement) on the CPU, the row products alone are taken in float, as a 1x1
// convolution: oneDNN's float kernels do it about ten times faster than the reference BLAS's
// dgemm (what Debian's LibTorch links by default; 0.04 s against 0.5 s at 500 x 6272 on this
// 2-core machine), and the centred rows keep its rounding small (2.8e-7 of the largest product
// measured there).
at::Tensor PairwiseDistances(const at::Tensor& batch, bool float_gram = false) {
  at::Tensor flat = batch.reshape({batch.size(0), -1}).to(at::kDouble);
  flat = flat - flat.mean(0, /*keepdim=*/true);
  at::Tensor gram, norms;
  // Not on CUDA: its convolutions may round through TF32, and its dgemm is fast.
  if (float_gram && flat.is_cpu()) {
    const at::Tensor rows = flat.to(at::kFloat).view({flat.size(0), flat.size(1), 1, 1});
    gram = at::conv2d(rows, rows).view({flat.size(0), flat.size(0)}).to(at::kDouble);
    // The norms from the same products, so that the diagonal cancels exactly.
    norms = gram.diagonal().unsqueeze(1);
  } else {
    // The transpose made contiguous: the reference BLAS multiplies untransposed operands about
    // twice as fast, with the same sums in the same order.
    gram = flat.matmul(flat.t().contiguous());
    norms = flat.pow(2).sum(1, /*keepdim=*/true);
  }
  // The floor keeps the gradient of sqrt finite on the diagonal and for duplicate rows.
  return (norms + norms.t() - 2 * gram).clamp_min(kSquaredDistanceFloor).sqrt();
}

at::Tensor DoubleCentred(const at::Tensor& distances) {
  return distances - distances.mean(0, true) - distances.mean(1, true) + distances.mean();
}

// U-centring (Szekely & Rizzo 2014): zero diagonal, sums over n-2, correction over (n-1)(n-2).
at::Tensor UCentred(const at::Tensor& distances) {
  const int64_t n = distances.size(0);
  const at::Tensor d = distances * (1 - at::eye(n, distances.options()));
  const at::Tensor rows = d.sum(1, true) / (n - 2);
  const at::Tensor cols = d.sum(0, true) / (n - 2);
  const at::Tensor total = d.sum() / ((n - 1) * (n - 2));
  return (d - rows - cols + total) * (1 - at::eye(n, distances.options()));
}

void CheckBatches(const at::Tensor& x, const at::Tensor& z, int64_t min_rows) {
  CLEAVE_CHECK_USER(x.dim() >= 1 && z.dim() >= 1 && x.size(0) == z.size(0),
                    "dCor needs two batches with the same number of rows");
  CLEAVE_CHECK_USER(x.size(0) >= min_rows, "dCor needs at least ", min_rows, " rows, got ",
                    x.size(0));
}

// dCov^2 / sqrt(dVarX^2 dVarZ^2) from centred matrices a, b of the distances dx, dz. Stays on
// the device (no host sync): the zero-variance test is a tensor condition.
at::Tensor Correlation(const at::Tensor& dx, const at::Tensor& dz, const at::Tensor& a,
                       const at::Tensor& b, double normaliser) {
  const at::Tensor dcov2 = (a * b).sum() / normaliser;
  const at::Tensor dvar_x = (a * a).sum() / normaliser;
  const at::Tensor dvar_z = (b * b).sum() / normaliser;
  const at::Tensor varies = (dvar_x > kRelativeVarianceFloor * dx.mean().detach().pow(2)) &
                            (dvar_z > kRelativeVarianceFloor * dz.mean().detach().pow(2));
  // Zero variance on either side: dCor is defined as 0 with a zero gradient. The where() sits
  // inside the sqrt: sqrt'(0) = inf would turn the unselected branch's zero gradient into NaN.
  const at::Tensor safe = at::where(varies, dvar_x * dvar_z, at::ones_like(dvar_x)).sqrt();
  return at::where(varies, dcov2 / safe, at::zeros_like(dcov2));
}

at::Tensor PlainFromDistances(const at::Tensor& dx, const at::Tensor& dz) {
  const double n = static_cast<double>(dx.size(0));
  const at::Tensor dcor2 = Correlation(dx, dz, DoubleCentred(dx), DoubleCentred(dz), n * n);
  // sqrt with a floor: dCor^2 >= 0 in exact arithmetic, tiny negatives come from rounding.
  return dcor2.clamp_min(kSquaredDistanceFloor).sqrt();
}

at::Tensor BiasCorrectedFromDistances(const at::Tensor& dx, const at::Tensor& dz) {
  const double n = static_cast<double>(dx.size(0));
  return Correlation(dx, dz, UCentred(dx), UCentred(dz), n * (n - 3));
}

}  // namespace

at::Tensor DistanceCorrelation(const at::Tensor& x, const at::Tensor& z) {
  CheckBatches(x, z, 2);
  return PlainFromDistances(PairwiseDistances(x), PairwiseDistances(z)).to(z.scalar_type());
}

at::Tensor BiasCorrectedDistanceCorrelation(const at::Tensor& x, const at::Tensor& z) {
  CheckBatches(x, z, 4);
  return BiasCorrectedFromDistances(PairwiseDistances(x), PairwiseDistances(z)).to(z.scalar_type());
}

DistanceCorrelations BothDistanceCorrelations(const at::Tensor& x, const at::Tensor& z) {
  CheckBatches(x, z, 4);
  const at::Tensor dx = PairwiseDistances(x, /*float_gram=*/true);
  const at::Tensor dz = PairwiseDistances(z, /*float_gram=*/true);
  return {PlainFromDistances(dx, dz).to(z.scalar_type()),
          BiasCorrectedFromDistances(dx, dz).to(z.scalar_type())};
}

double IndependenceBaseline(const at::Tensor& x, const at::Tensor& z, uint64_t seed,
                            bool bias_corrected) {
  CheckBatches(x, z, bias_corrected ? 4 : 2);
  const std::vector<int64_t> order = SeededPermutation(z.size(0), seed);
  const at::Tensor shuffled = z.index_select(0, at::tensor(order, at::kLong).to(z.device()));
  // A measurement, taken like BothDistanceCorrelations' (row products in float on the CPU).
  const at::Tensor dx = PairwiseDistances(x, /*float_gram=*/true);
  const at::Tensor dz = PairwiseDistances(shuffled, /*float_gram=*/true);
  const at::Tensor value =
      bias_corrected ? BiasCorrectedFromDistances(dx, dz) : PlainFromDistances(dx, dz);
  return value.item<double>();
}

at::Tensor NoPeekLoss(const at::Tensor& x, const at::Tensor& z, double alpha) {
  return alpha * DistanceCorrelation(x, z);
}

}  // namespace cleave::privacy
