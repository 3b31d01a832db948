#include "cleave/leakage/leakage_measurement.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "cleave/client/activation_compressor.h"
#include "cleave/core/error.h"
#include "cleave/privacy/activation_noise.h"
#include "cleave/privacy/distance_correlation.h"
#include "cleave/protocol/activation_codec.h"

namespace cleave::leakage {

Transmission Transmit(torch::nn::Sequential& bottom, const at::Tensor& inputs,
                      const TransmissionSettings& transmission, int64_t send_batch_size,
                      uint64_t seed, double noise_sigma) {
  CLEAVE_CHECK_USER(send_batch_size >= 1, "the send batch size must be at least 1");
  client::ActivationCompressor compressor(transmission, seed);
  privacy::ActivationNoise noise(noise_sigma, seed + 3);

  at::NoGradGuard no_grad;
  bottom->eval();
  std::vector<at::Tensor> received, masks;
  int64_t sent = 0, total = 0;
  for (int64_t start = 0; start < inputs.size(0); start += send_batch_size) {
    const at::Tensor batch = inputs.slice(0, start, start + send_batch_size);
    const at::Tensor activations = noise.Apply(bottom->forward(batch)).contiguous();
    const client::SelectedActivations selected = compressor.Select(activations);
    v1::Tensor message;
    compressor.Encode(activations, selected, &message);
    // Decoded as the server decodes it: what the server (or anyone holding its view) sees.
    protocol::TensorSpec spec;
    spec.sample_shape.assign(activations.sizes().begin() + 1, activations.sizes().end());
    spec.max_batch = activations.size(0);
    received.push_back(protocol::ActivationDecoder(transmission, spec).Decode(message).dense);
    // Dense batches' masks are all ones: made only if another batch is sparse.
    masks.push_back(selected.all ? at::Tensor() : selected.mask.to(at::kCPU, at::kFloat));
    sent += selected.count(activations.numel());
    total += activations.numel();
  }
  CLEAVE_CHECK_USER(!received.empty(), "no inputs to send");
  Transmission out;
  out.values = at::cat(received, 0);
  out.density_sent = total > 0 ? static_cast<double>(sent) / total : 1.0;
  out.sparse = sent < total;
  if (!out.sparse) return out;
  for (size_t i = 0; i < masks.size(); ++i) {
    if (!masks[i].defined()) masks[i] = at::ones(received[i].sizes(), at::kFloat);
  }
  out.mask = at::cat(masks, 0);
  return out;
}

at::Tensor TransmittedActivations(torch::nn::Sequential& bottom, const at::Tensor& inputs,
                                  const TransmissionSettings& transmission, int64_t send_batch_size,
                                  uint64_t seed, double* density_sent, double noise_sigma) {
  Transmission sent =
      Transmit(bottom, inputs, transmission, send_batch_size, seed, noise_sigma);
  if (density_sent) *density_sent = sent.density_sent;
  return sent.values;
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

// Trains a decoder on the first `pairs` auxiliary (sent, input) pairs, then scores it on the test
// set. Scored in chunks (the decoder's feature maps for a whole test set would take gigabytes);
// every figure is a per-image mean, so chunk means weighted by their size give the same value.
AttackScores RunDecoder(const at::Tensor& auxiliary_sent, const at::Tensor& auxiliary_inputs,
                        int64_t pairs, const at::Tensor& test_sent, const at::Tensor& test_inputs,
                        privacy::ReconstructionAttackOptions attack_options,
                        const LeakageOptions& options) {
  const std::vector<int64_t> activation_shape(test_sent.sizes().begin() + 1,
                                              test_sent.sizes().end());
  const std::vector<int64_t> input_shape(test_inputs.sizes().begin() + 1, test_inputs.sizes().end());
  attack_options.seed = options.seed;
  privacy::ReconstructionAttack attack(activation_shape, input_shape, attack_options);
  const std::vector<double> losses =
      attack.Train(auxiliary_sent.slice(0, 0, pairs), auxiliary_inputs.slice(0, 0, pairs));
  AttackScores scores;
  scores.auxiliary_samples = pairs;
  scores.final_loss = losses.empty() ? 0 : losses.back();
  scores.mse = scores.psnr = scores.ssim = 0;
  constexpr int64_t kChunk = 500;
  const int64_t n = test_inputs.size(0);
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t end = std::min(start + kChunk, n);
    const privacy::ReconstructionQuality quality =
        attack.Evaluate(test_sent.slice(0, start, end), test_inputs.slice(0, start, end));
    const double weight = static_cast<double>(end - start) / n;
    scores.mse += weight * quality.mse;
    scores.psnr += weight * quality.psnr;
    scores.ssim += weight * quality.ssim;
    if (start == 0) {
      scores.grid_reconstructions =
          quality.reconstructions.slice(0, 0, std::min<int64_t>(options.grid_images, end)).clone();
    }
  }
  return scores;
}

}  // namespace

LeakageReport MeasureLeakage(torch::nn::Sequential& bottom, const Dataset& auxiliary,
                             const Dataset& test, const LeakageOptions& options) {
  CLEAVE_CHECK_USER(auxiliary.size() >= 1, "the attacker needs at least one auxiliary sample");
  CLEAVE_CHECK_USER(test.size() >= 4, "leakage needs at least 4 test samples, got ", test.size());
  LeakageReport report;
  report.test_samples = test.size();

  const Transmission test_sent =
      Transmit(bottom, test.inputs, options.transmission, options.send_batch_size, options.seed,
               options.activation_noise);
  report.density_sent = test_sent.density_sent;
  report.dcor = MeasureDistanceCorrelation(test.inputs, test_sent.values, options.dcor_batch_size,
                                           options.seed);

  // The attacker sees the same kind of transmissions for its own auxiliary inputs.
  const Transmission auxiliary_sent =
      Transmit(bottom, auxiliary.inputs, options.transmission, options.send_batch_size,
               options.seed + 1, options.activation_noise);
  const int64_t pairs = options.attack_auxiliary_samples > 0
                            ? std::min(options.attack_auxiliary_samples, auxiliary.size())
                            : auxiliary.size();
  const AttackScores decoder = RunDecoder(auxiliary_sent.values, auxiliary.inputs, pairs,
                                          test_sent.values, test.inputs, options.attack, options);
  report.auxiliary_samples = decoder.auxiliary_samples;
  report.attack_mse = decoder.mse;
  report.attack_psnr = decoder.psnr;
  report.attack_ssim = decoder.ssim;
  report.attack_final_loss = decoder.final_loss;
  report.grid_originals =
      test.inputs.slice(0, 0, std::min<int64_t>(options.grid_images, test.size())).clone();
  report.grid_reconstructions = decoder.grid_reconstructions;
  if (options.strong_auxiliary_samples > 0) {
    report.strong_attack = RunDecoder(
        auxiliary_sent.values, auxiliary.inputs,
        std::min(options.strong_auxiliary_samples, auxiliary.size()), test_sent.values,
        test.inputs, options.strong_attack, options);
  }
  if (test_sent.sparse) {  // a dense transmission's mask is all ones: nothing to attack
    report.mask_attack = RunDecoder(auxiliary_sent.mask, auxiliary.inputs, pairs, test_sent.mask,
                                    test.inputs, options.attack, options);
  }
  MeasureInversion(test_sent.values, test, options, &report);
  return report;
}

}  // namespace cleave::leakage
