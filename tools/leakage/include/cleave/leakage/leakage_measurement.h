// How much a trained client's transmitted activations reveal about its raw inputs: distance
// correlation (plain, bias-corrected, and the independence baseline at the same batch size) and a
// reconstruction attack by an attacker who holds auxiliary (input, activation) pairs.
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/modules/container/sequential.h>

#include <cstdint>
#include <limits>
#include <string>

#include "cleave/core/dataset.h"
#include "cleave/privacy/model_inversion.h"
#include "cleave/privacy/reconstruction_attack.h"
#include "cleave/protocol/link_spec.h"

namespace cleave::leakage {

// What the server asks the client to send (the Join reply's activation direction): compressor,
// density, value precision of sparse payloads, per-sample choice.
using TransmissionSettings = protocol::DirectionSpec;

// The activations the server receives for `inputs`: the bottom model's output (eval mode, no
// gradient), selected by the client's ActivationCompressor in batches of `send_batch_size` (the
// selection is per sent tensor, so the batch matters), encoded and decoded exactly as on the wire
// (value rounding included); zeros where nothing was sent. Returns [N, cut shape...] on the CPU.
// `density_sent` (optional) receives the fraction of elements actually sent.
// `noise_sigma` > 0: the noise defence (privacy::ActivationNoise, seeded from `seed`) is added to
// the bottom's output before selection, as cleave-client --act-noise does.
at::Tensor TransmittedActivations(torch::nn::Sequential& bottom, const at::Tensor& inputs,
                                  const TransmissionSettings& transmission, int64_t send_batch_size,
                                  uint64_t seed, double* density_sent = nullptr,
                                  double noise_sigma = 0);

// What TransmittedActivations computes, with the selection kept: `mask` [N, cut shape...] is 1
// where an element was sent and 0 elsewhere; undefined when everything was sent (not sparse).
struct Transmission {
  at::Tensor values;
  at::Tensor mask;
  double density_sent = 1.0;
  bool sparse = false;  // some elements were not sent
};
Transmission Transmit(torch::nn::Sequential& bottom, const at::Tensor& inputs,
                      const TransmissionSettings& transmission, int64_t send_batch_size,
                      uint64_t seed, double noise_sigma = 0);

struct DistanceCorrelationEstimate {
  double dcor = 0;                 // plain sample dCor, mean over batches
  double dcor_bias_corrected = 0;  // U-centred estimate of dCor^2, mean over batches
  double baseline = 0;             // plain dCor of the inputs against shuffled activations
  int64_t batch_size = 0;          // rows per batch every figure was computed on
  int64_t batches = 0;
};

// dCor(inputs, activations) over consecutive batches of `batch_size` rows (only full batches;
// one smaller batch when fewer rows than that are given, at least 4). Throws UserError when the
// row counts differ or fewer than 4 rows are given.
DistanceCorrelationEstimate MeasureDistanceCorrelation(const at::Tensor& inputs,
                                                       const at::Tensor& activations,
                                                       int64_t batch_size, uint64_t seed);

struct LeakageOptions {
  TransmissionSettings transmission;
  int64_t send_batch_size = 64;    // batch the client sends (the compressor selects per batch)
  int64_t dcor_batch_size = 1024;  // rows per dCor estimate
  privacy::ReconstructionAttackOptions attack;
  int64_t grid_images = 8;  // originals and reconstructions kept for the PNG grid
  // Pairs the default decoder (and the mask-only one) trains on: the first ones of the auxiliary
  // set; 0: all of it.
  int64_t attack_auxiliary_samples = 0;
  // A stronger decoder (wider, more pairs), reported beside the default one; 0 pairs: not run.
  privacy::ReconstructionAttackOptions strong_attack;
  int64_t strong_auxiliary_samples = 0;
  // Noise defence on the sent activations (cleave-client --act-noise): sigma, 0 = off.
  double activation_noise = 0;
  uint64_t seed = 1;
  // Inversion without auxiliary data (UnSplit) on the first `inversion_samples` test images
  // (0: not run); `surrogate` builds the bottom's architecture with fresh random weights.
  int64_t inversion_samples = 0;
  privacy::InversionOptions inversion;
  privacy::SurrogateFactory surrogate;
};

// One decoder's scores on the test set (auxiliary_samples 0: not run).
struct AttackScores {
  double mse = std::numeric_limits<double>::quiet_NaN();
  double psnr = std::numeric_limits<double>::quiet_NaN();
  double ssim = std::numeric_limits<double>::quiet_NaN();  // NaN also when inputs are not images
  double final_loss = 0;
  int64_t auxiliary_samples = 0;
  at::Tensor grid_reconstructions;  // of the first grid images
};

struct LeakageReport {
  DistanceCorrelationEstimate dcor;  // on the test set
  double density_sent = 1.0;         // fraction of activation elements transmitted (test set)
  double attack_mse = 0;             // per image, averaged over the test set
  double attack_psnr = 0;            // dB, per image, averaged
  double attack_ssim = 0;            // per image, averaged (NaN when inputs are not images)
  double attack_final_loss = 0;      // decoder's training MSE in its last epoch
  int64_t auxiliary_samples = 0;     // pairs the attacker trained on
  int64_t test_samples = 0;          // inputs the attack and dCor were scored on
  at::Tensor grid_originals;         // [grid_images, input shape...]
  at::Tensor grid_reconstructions;   // the attacker's reconstructions of the same images
  // The stronger decoder (LeakageOptions::strong_*), and the mask-only decoder: trained on the
  // selection mask alone (1 where sent, values dropped), run when the transmission is sparse.
  AttackScores strong_attack;
  AttackScores mask_attack;
  // Inversion without auxiliary data: SSIM up to polarity (NaN when not run or not images).
  double inversion_ssim = std::numeric_limits<double>::quiet_NaN();
  int64_t inversion_samples = 0;
  at::Tensor grid_inversions;  // its reconstructions of the grid images (when run)
};

// The attacker's auxiliary pairs come from the training data but never from what the client
// trains on or is tested on: a seeded permutation of `train` gives `auxiliary_samples` rows to the
// attacker and the next `client_limit` rows (0: all the rest) to the client. Throws UserError
// when the training data cannot hold both.
struct ClientAndAuxiliary {
  Dataset client;
  Dataset auxiliary;
};
ClientAndAuxiliary SplitOffAuxiliary(const Dataset& train, int64_t auxiliary_samples,
                                     int64_t client_limit, uint64_t seed);

// Measures a trained bottom model: dCor between raw test inputs and transmitted activations, and
// the reconstruction attack trained on `auxiliary` (disjoint from `test`) and scored on `test`.
LeakageReport MeasureLeakage(torch::nn::Sequential& bottom, const Dataset& auxiliary,
                             const Dataset& test, const LeakageOptions& options);

}  // namespace cleave::leakage
