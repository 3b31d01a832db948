#include "cleave/leakage/leakage_measurement.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "cleave/client/activation_compressor.h"
#include "cleave/core/error.h"
#include "cleave/privacy/distance_correlation.h"
#include "cleave/protocol/activation_codec.h"

namespace cleave::leakage {

at::Tensor TransmittedActivations(torch::nn::Sequential& bottom, const at::Tensor& inputs,
                                  const TransmissionSettings& transmission, int64_t send_batch_size,
                                  uint64_t seed, double* density_sent) {
  CLEAVE_CHECK_USER(send_batch_size >= 1, "the send batch size must be at least 1");
  client::ActivationCompressor compressor(transmission, seed);

  at::NoGradGuard no_grad;
  bottom->eval();
  std::vector<at::Tensor> received;
  int64_t sent = 0, total = 0;
  for (int64_t start = 0; start < inputs.size(0); start += send_batch_size) {
    const at::Tensor batch = inputs.slice(0, start, start + send_batch_size);
    const at::Tensor activations = bottom->forward(batch).contiguous();
    const client::SelectedActivations selected = compressor.Select(activations);
    v1::Tensor message;
    compressor.Encode(activations, selected, &message);
    // Decoded as the server decodes it: what the server (or anyone holding its view) sees.
    protocol::TensorSpec spec;
    spec.sample_shape.assign(activations.sizes().begin() + 1, activations.sizes().end());
    spec.max_batch = activations.size(0);
    received.push_back(protocol::ActivationDecoder(transmission, spec).Decode(message).dense);
    sent += selected.count(activations.numel());
    total += activations.numel();
  }
  CLEAVE_CHECK_USER(!received.empty(), "no inputs to send");
  if (density_sent) *density_sent = total > 0 ? static_cast<double>(sent) / total : 1.0;
  return at::cat(received, 0);
}

DistanceCorrelationEstimate MeasureDistanceCorrelation(const at::Tensor& inputs,
                                                       const at::Tensor& activations,
                                                       int64_t batch_size, uint64_t seed) {
  const int64_t rows = inputs.size(0);
  CLEAVE_CHECK_USER(activations.size(0) == rows, "dCor needs as many activations (",
                    activations.size(0), ") as inputs (", rows, ")");
  CLEAVE_CHECK_USER(rows >= 4, "dCor needs at least 4 samples, got ", rows);
  CLEAVE_CHECK_USER(batch_size >= 4, "the dCor batch size must be at least 4, got ", batch_size);
  DistanceCorrelationEstimate estimate;
  estimate.batch_size = std::min(batch_size, rows);
  at::NoGradGuard no_grad;
  for (int64_t start = 0; start + estimate.batch_size <= rows; start += estimate.batch_size) {
    const at::Tensor x = inputs.slice(0, start, start + estimate.batch_size);
    const at::Tensor z = activations.slice(0, start, start + estimate.batch_size);
    const privacy::DistanceCorrelations dcor = privacy::BothDistanceCorrelations(x, z);
    estimate.dcor += dcor.plain.item<double>();
    estimate.dcor_bias_corrected += dcor.bias_corrected.item<double>();
    estimate.baseline += privacy::IndependenceBaseline(x, z, seed + estimate.batches);
    ++estimate.batches;
  }
  estimate.dcor /= estimate.batches;
  estimate.dcor_bias_corrected /= estimate.batches;
  estimate.baseline /= estimate.batches;
  return estimate;
}

ClientAndAuxiliary SplitOffAuxiliary(const Dataset& train, int64_t auxiliary_samples,
                                     int64_t client_limit, uint64_t seed) {
  CLEAVE_CHECK_USER(auxiliary_samples >= 1 && client_limit >= 0,
                    "--aux-samples must be at least 1 and --train-limit at least 0");
  CLEAVE_CHECK_USER(auxiliary_samples < train.size(), "--aux-samples ", auxiliary_samples,
                    " leaves no training data for the client (", train.size(), " samples)");
  const std::vector<int64_t> order = SeededPermutation(train.size(), seed);
  const int64_t client_end = client_limit > 0
                                 ? std::min<int64_t>(train.size(), auxiliary_samples + client_limit)
                                 : train.size();
  ClientAndAuxiliary split;
  split.auxiliary = train.Subset({order.begin(), order.begin() + auxiliary_samples});
  split.client = train.Subset({order.begin() + auxiliary_samples, order.begin() + client_end});
  return split;
}

namespace {

// UnSplit on the first test images' transmitted activations: no auxiliary data, no weights.
void MeasureInversion(const at::Tensor& test_sent, const Dataset& test,
                      const LeakageOptions& options, LeakageReport* report) {
  if (options.inversion_samples <= 0 || !options.surrogate) return;
  const int64_t n = std::min(options.inversion_samples, test.size());
  const std::vector<int64_t> input_shape(test.inputs.sizes().begin() + 1,
                                         test.inputs.sizes().end());
  privacy::InversionOptions inversion = options.inversion;
  inversion.seed = options.seed + 2;
  const at::Tensor reconstructions = privacy::InvertWithoutAuxiliaryData(
      options.surrogate, test_sent.slice(0, 0, n), input_shape, inversion);
  const at::Tensor truth = test.inputs.slice(0, 0, n).to(at::kFloat);
  report->inversion_samples = n;
  if (input_shape.size() == 3 && input_shape[1] >= 11 && input_shape[2] >= 11) {
    report->inversion_ssim = privacy::SsimUpToPolarity(truth, reconstructions);
  }
  report->grid_inversions =
      reconstructions.slice(0, 0, std::min<int64_t>(options.grid_images, n)).clone();
}

}  // namespace

LeakageReport MeasureLeakage(torch::nn::Sequential& bottom, const Dataset& auxiliary,
                             const Dataset& test, const LeakageOptions& options) {
  CLEAVE_CHECK_USER(auxiliary.size() >= 1, "the attacker needs at least one auxiliary sample");
  CLEAVE_CHECK_USER(test.size() >= 4, "leakage needs at least 4 test samples, got ", test.size());
  LeakageReport report;
  report.auxiliary_samples = auxiliary.size();
  report.test_samples = test.size();

  const at::Tensor test_sent =
      TransmittedActivations(bottom, test.inputs, options.transmission, options.send_batch_size,
                             options.seed, &report.density_sent);
  report.dcor =
      MeasureDistanceCorrelation(test.inputs, test_sent, options.dcor_batch_size, options.seed);

  // The attacker sees the same kind of transmissions for its own auxiliary inputs.
  const at::Tensor auxiliary_sent = TransmittedActivations(
      bottom, auxiliary.inputs, options.transmission, options.send_batch_size, options.seed + 1);
  const std::vector<int64_t> activation_shape(test_sent.sizes().begin() + 1,
                                              test_sent.sizes().end());
  const std::vector<int64_t> input_shape(test.inputs.sizes().begin() + 1,
                                         test.inputs.sizes().end());
  privacy::ReconstructionAttackOptions attack_options = options.attack;
  attack_options.seed = options.seed;
  privacy::ReconstructionAttack attack(activation_shape, input_shape, attack_options);
  const std::vector<double> losses = attack.Train(auxiliary_sent, auxiliary.inputs);
  report.attack_final_loss = losses.empty() ? 0 : losses.back();
  // Scored in chunks (the decoder's feature maps for a whole test set would take gigabytes);
  // every figure is a per-image mean, so chunk means weighted by their size give the same value.
  constexpr int64_t kChunk = 500;
  for (int64_t start = 0; start < test.size(); start += kChunk) {
    const int64_t end = std::min(start + kChunk, test.size());
    const privacy::ReconstructionQuality quality =
        attack.Evaluate(test_sent.slice(0, start, end), test.inputs.slice(0, start, end));
    const double weight = static_cast<double>(end - start) / test.size();
    report.attack_mse += weight * quality.mse;
    report.attack_psnr += weight * quality.psnr;
    report.attack_ssim += weight * quality.ssim;
    if (start == 0) {
      const int64_t shown = std::min<int64_t>(options.grid_images, end);
      report.grid_originals = test.inputs.slice(0, 0, shown).clone();
      report.grid_reconstructions = quality.reconstructions.slice(0, 0, shown).clone();
    }
  }
  MeasureInversion(test_sent, test, options, &report);
  return report;
}

}  // namespace cleave::leakage
