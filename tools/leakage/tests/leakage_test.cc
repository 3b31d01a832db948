// cleave_leakage: transmitted activations match the wire, dCor batching, the attacker's data
// split, a leakage measurement of a CNN cut, and a small sweep with its CSV, table and plot.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/container/functional.h>
#include <torch/nn/modules/container/sequential.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/leakage/leakage_measurement.h"
#include "cleave/leakage/leakage_sweep.h"
#include "cleave/privacy/distance_correlation.h"
#include "cleave/privacy/image_quality.h"
#include "cleave/test_support/temp_dir.h"
#include "cleave/test_support/tiny_data.h"

namespace cleave::leakage {
namespace {

using test_support::SmoothImages;

// Labelled by the sign of the first of 20 features.
Dataset Tabular(int64_t rows, uint64_t seed) { return test_support::FirstFeatureData(rows, seed); }

ModelSpec TabularSpec() { return test_support::MlpSpec(20, {32, 16}, 2); }

int64_t Lines(const std::string& text) {
  return static_cast<int64_t>(std::count(text.begin(), text.end(), '\n'));
}

TEST(TransmittedActivationsTest, DenseIsTheBottomModelOutput) {
  SplitModel model = BuildSplitModel({}, 3);
  const Dataset data = SmoothImages(50, 1);
  double density = 0;
  const at::Tensor sent = TransmittedActivations(model.bottom, data.inputs, {}, 16, 1, &density);
  at::NoGradGuard no_grad;
  model.bottom->eval();
  const at::Tensor expected = model.bottom->forward(data.inputs);
  ASSERT_EQ(sent.sizes(), expected.sizes());
  EXPECT_TRUE(at::allclose(sent, expected, 1e-6, 1e-6));
  EXPECT_EQ(density, 1.0);
}

TEST(TransmittedActivationsTest, SparseKeepsTheSelectedValuesRoundedToThePrecision) {
  SplitModel model = BuildSplitModel({}, 3);
  const Dataset data = SmoothImages(40, 2);
  double density = 0;
  const at::Tensor sent = TransmittedActivations(
      model.bottom, data.inputs, {Method::kGaussianKPlus, 0.05, ValuePrecision::kFp16}, 20, 1,
      &density);
  at::NoGradGuard no_grad;
  model.bottom->eval();
  const at::Tensor dense = model.bottom->forward(data.inputs);
  EXPECT_NEAR(density, 0.05, 1e-3);  // gaussiank+ lands on k
  const at::Tensor kept = sent != 0;
  EXPECT_NEAR(kept.to(at::kDouble).mean().item<double>(), 0.05, 2e-3);
  // Values where something was sent are the dense values rounded to fp16, not the originals.
  const at::Tensor rounded = dense.to(at::kHalf).to(at::kFloat);
  EXPECT_TRUE(at::equal(sent.masked_select(kept), rounded.masked_select(kept)));
  EXPECT_FALSE(at::equal(sent.masked_select(kept), dense.masked_select(kept)));
  // The largest magnitudes of each sent batch are kept.
  const at::Tensor first = dense.slice(0, 0, 20).abs().flatten();
  const double threshold = std::get<0>(first.topk(first.numel() / 20)).min().item<double>();
  EXPECT_TRUE(sent.slice(0, 0, 20)
                  .abs()
                  .flatten()
                  .ge(threshold * 0.999)
                  .eq(kept.slice(0, 0, 20).flatten())
                  .all()
                  .item<bool>());
}

TEST(TransmittedActivationsTest, RejectsADensityOutsideTheUnitInterval) {
  SplitModel model = BuildSplitModel({}, 3);
  const Dataset data = SmoothImages(8, 2);
  EXPECT_THROW(TransmittedActivations(model.bottom, data.inputs,
                                      {Method::kTopK, 1.5, ValuePrecision::kFp32}, 8, 1),
               UserError);
  EXPECT_THROW(TransmittedActivations(model.bottom, data.inputs,
                                      {Method::kTopK, 0.0, ValuePrecision::kFp32}, 8, 1),
               UserError);
}

TEST(MeasureDistanceCorrelationTest, AveragesFullBatchesOfTheStatedSize) {
  at::manual_seed(4);
  const at::Tensor x = at::randn({10, 3}), z = x.pow(3) + 0.1 * at::randn({10, 3});
  const DistanceCorrelationEstimate estimate = MeasureDistanceCorrelation(x, z, 4, 1);
  EXPECT_EQ(estimate.batch_size, 4);
  EXPECT_EQ(estimate.batches, 2);  // rows 8 and 9 do not make a full batch
  const double expected = (privacy::DistanceCorrelation(x.slice(0, 0, 4), z.slice(0, 0, 4)) +
                           privacy::DistanceCorrelation(x.slice(0, 4, 8), z.slice(0, 4, 8)))
                              .item<double>() /
                          2;
  EXPECT_NEAR(estimate.dcor, expected, 1e-6);
  // Fewer rows than the batch: one batch of all of them.
  const DistanceCorrelationEstimate one = MeasureDistanceCorrelation(x, z, 1024, 1);
  EXPECT_EQ(one.batch_size, 10);
  EXPECT_EQ(one.batches, 1);
}

TEST(MeasureDistanceCorrelationTest, SeparatesDependenceFromTheBaseline) {
  at::manual_seed(5);
  const at::Tensor x = at::randn({512, 8});
  const DistanceCorrelationEstimate same = MeasureDistanceCorrelation(x, 2 * x + 1, 256, 1);
  EXPECT_NEAR(same.dcor, 1.0, 1e-6);
  EXPECT_LT(same.baseline, 0.45);  // about 0.31 at n = 256
  EXPECT_GT(same.dcor_bias_corrected, 0.99);
  const DistanceCorrelationEstimate independent =
      MeasureDistanceCorrelation(x, at::randn({512, 4}), 256, 1);
  EXPECT_NEAR(independent.dcor, independent.baseline, 0.1);
  EXPECT_LT(std::fabs(independent.dcor_bias_corrected), 0.05);
}

TEST(MeasureDistanceCorrelationTest, RejectsMismatchedOrTinyInputs) {
  EXPECT_THROW(MeasureDistanceCorrelation(at::randn({8, 2}), at::randn({7, 2}), 4, 1), UserError);
  EXPECT_THROW(MeasureDistanceCorrelation(at::randn({3, 2}), at::randn({3, 2}), 4, 1), UserError);
  EXPECT_THROW(MeasureDistanceCorrelation(at::randn({8, 2}), at::randn({8, 2}), 2, 1), UserError);
}

TEST(SplitOffAuxiliaryTest, GivesTheAttackerRowsTheClientNeverSees) {
  Dataset data = Tabular(100, 1);
  data.inputs.select(1, 1).copy_(at::arange(100));  // row ids, to check disjointness
  const ClientAndAuxiliary split = SplitOffAuxiliary(data, 30, 50, 7);
  ASSERT_EQ(split.auxiliary.size(), 30);
  ASSERT_EQ(split.client.size(), 50);
  std::set<int64_t> ids;
  for (const Dataset* part : {&split.auxiliary, &split.client}) {
    for (int64_t i = 0; i < part->size(); ++i) {
      ids.insert(static_cast<int64_t>(part->inputs[i][1].item<float>()));
    }
  }
  EXPECT_EQ(ids.size(), 80u);
  const ClientAndAuxiliary again = SplitOffAuxiliary(data, 30, 50, 7);
  EXPECT_TRUE(at::equal(again.auxiliary.inputs, split.auxiliary.inputs));
  EXPECT_EQ(SplitOffAuxiliary(data, 30, 0, 7).client.size(), 70);
  EXPECT_THROW(SplitOffAuxiliary(data, 100, 0, 7), UserError);
  EXPECT_THROW(SplitOffAuxiliary(data, 0, 0, 7), UserError);
}

TEST(MeasureLeakageTest, AnUntrainedConvBlockRevealsItsInputs) {
  SplitModel model = BuildSplitModel({}, 3);
  const Dataset auxiliary = SmoothImages(256, 1), test = SmoothImages(64, 2);
  LeakageOptions options;
  options.dcor_batch_size = 32;
  options.attack.epochs = 8;
  options.attack.learning_rate = 3e-3;
  options.attack.width = 16;
  options.grid_images = 5;
  const LeakageReport report = MeasureLeakage(model.bottom, auxiliary, test, options);
  EXPECT_EQ(report.dcor.batch_size, 32);
  EXPECT_EQ(report.dcor.batches, 2);
  // A random conv + ReLU + pool keeps the inputs' geometry: dCor near 1, and the bias-corrected
  // dCor^2 far from 0. (The plain baseline of such smooth images at n = 32 is itself high.)
  EXPECT_GT(report.dcor.dcor, 0.9);
  EXPECT_GT(report.dcor.dcor, report.dcor.baseline);
  EXPECT_GT(report.dcor.dcor_bias_corrected, 0.8);
  EXPECT_EQ(report.auxiliary_samples, 256);
  EXPECT_EQ(report.test_samples, 64);
  // The attacker beats guessing the mean image (the test images' variance around their mean).
  const double guess_mse =
      (test.inputs - auxiliary.inputs.mean(0, true)).pow(2).mean().item<double>();
  EXPECT_LT(report.attack_mse, 0.7 * guess_mse);
  // Far better than the mean image, whose SSIM is near 0 (measured: 0.91 against 0.07).
  const double guess_ssim = privacy::Ssim(
      test.inputs, auxiliary.inputs.mean(0, true).expand_as(test.inputs).contiguous());
  EXPECT_GT(report.attack_ssim, 0.6);
  EXPECT_GT(report.attack_ssim, guess_ssim + 0.3);
  EXPECT_LE(report.attack_ssim, 1.0);
  EXPECT_TRUE(std::isfinite(report.attack_psnr));
  ASSERT_EQ(report.grid_originals.sizes(), (at::IntArrayRef{5, 1, 28, 28}));
  ASSERT_EQ(report.grid_reconstructions.sizes(), (at::IntArrayRef{5, 1, 28, 28}));
  EXPECT_TRUE(at::equal(report.grid_originals, test.inputs.slice(0, 0, 5)));
}

// A "bottom" that sends its input unchanged, and one that sends noise unrelated to it.
torch::nn::Sequential IdentityBottom() {
  return torch::nn::Sequential(torch::nn::Functional([](const at::Tensor& x) { return x * 1; }));
}
torch::nn::Sequential UnrelatedBottom() {
  return torch::nn::Sequential(
      torch::nn::Functional([](const at::Tensor& x) { return at::rand_like(x); }));
}

// Leakage of a bottom's 20%-sparse transmission, with only the decoders (no dCor of interest).
LeakageReport SparseLeakage(torch::nn::Sequential bottom) {
  at::manual_seed(5);
  const Dataset auxiliary = SmoothImages(384, 1), test = SmoothImages(64, 2);
  LeakageOptions options;
  options.transmission = {Method::kGaussianKPlus, 0.2, ValuePrecision::kFp32};
  options.send_batch_size = 32;
  options.dcor_batch_size = 32;
  options.attack.epochs = 6;
  options.attack.learning_rate = 3e-3;
  options.attack.width = 16;
  return MeasureLeakage(bottom, auxiliary, test, options);
}

TEST(MeasureLeakageTest, TheMaskAloneRevealsInputsWhenTheSelectionFollowsThem) {
  // Activations = the image; Gaussian-k sends its brightest 20% of pixels: the mask of sent
  // positions is a thresholded image, and a decoder given only the mask recovers its structure.
  const LeakageReport informative = SparseLeakage(IdentityBottom());
  EXPECT_NEAR(informative.density_sent, 0.2, 0.01);
  EXPECT_EQ(informative.mask_attack.auxiliary_samples, 384);
  ASSERT_EQ(informative.mask_attack.grid_reconstructions.sizes(), (at::IntArrayRef{8, 1, 28, 28}));
  // Sent positions chosen on noise unrelated to the images: the mask says nothing.
  const LeakageReport random = SparseLeakage(UnrelatedBottom());
  EXPECT_GT(informative.mask_attack.ssim, 0.4) << "random mask " << random.mask_attack.ssim;
  EXPECT_LT(random.mask_attack.ssim, 0.5 * informative.mask_attack.ssim);
  EXPECT_LT(random.mask_attack.ssim, 0.2);
}

TEST(MeasureLeakageTest, NoMaskAttackOnADenseLinkAndTheStrongDecoderOnlyWhenAsked) {
  SplitModel model = BuildSplitModel({}, 3);
  const Dataset auxiliary = SmoothImages(64, 1), test = SmoothImages(32, 2);
  LeakageOptions options;
  options.dcor_batch_size = 16;
  options.attack.epochs = 1;
  options.attack_auxiliary_samples = 40;
  const LeakageReport dense = MeasureLeakage(model.bottom, auxiliary, test, options);
  EXPECT_EQ(dense.auxiliary_samples, 40);
  EXPECT_EQ(dense.mask_attack.auxiliary_samples, 0);
  EXPECT_TRUE(std::isnan(dense.mask_attack.ssim));
  EXPECT_EQ(dense.strong_attack.auxiliary_samples, 0);
  EXPECT_TRUE(std::isnan(dense.strong_attack.ssim));
  options.strong_auxiliary_samples = 1000;  // capped at what the attacker holds
  options.strong_attack.epochs = 1;
  options.strong_attack.width = 24;
  const LeakageReport strong = MeasureLeakage(model.bottom, auxiliary, test, options);
  EXPECT_EQ(strong.auxiliary_samples, 40);
  EXPECT_EQ(strong.strong_attack.auxiliary_samples, 64);
  EXPECT_TRUE(std::isfinite(strong.strong_attack.ssim));
  EXPECT_EQ(strong.attack_ssim, dense.attack_ssim);  // the default decoder is unchanged
}

TEST(MeasureLeakageTest, TheNoiseDefenceIsMeasuredOnWhatIsSent) {
  const Dataset data = SmoothImages(40, 1);
  torch::nn::Sequential bottom = IdentityBottom();
  const at::Tensor noisy = TransmittedActivations(bottom, data.inputs, {}, 16, 1, nullptr, 0.5);
  EXPECT_NEAR((noisy - data.inputs).std().item<double>(), 0.5, 0.02);
  EXPECT_TRUE(noisy.equal(TransmittedActivations(bottom, data.inputs, {}, 16, 1, nullptr, 0.5)));
  EXPECT_TRUE(data.inputs.equal(TransmittedActivations(bottom, data.inputs, {}, 16, 1)));

  // Large noise on identity activations: dCor and the decoder both fall.
  const Dataset auxiliary = SmoothImages(256, 3), test = SmoothImages(64, 4);
  LeakageOptions options;
  options.dcor_batch_size = 64;
  options.attack.epochs = 6;
  options.attack.learning_rate = 3e-3;
  options.attack.width = 16;
  const LeakageReport clean = MeasureLeakage(bottom, auxiliary, test, options);
  options.activation_noise = 3.0;
  const LeakageReport defended = MeasureLeakage(bottom, auxiliary, test, options);
  EXPECT_GT(clean.attack_ssim, 0.6);
  EXPECT_LT(defended.attack_ssim, 0.5 * clean.attack_ssim) << "clean " << clean.attack_ssim;
  EXPECT_LT(defended.dcor.dcor_bias_corrected, 0.5 * clean.dcor.dcor_bias_corrected);
}

class SweepTest : public ::testing::Test {
 protected:
  test_support::TempDir dir_;
};

TEST(MeasureLeakageTest, InversionWithoutAuxiliaryDataRunsOnlyWhenAsked) {
  SplitModel model = BuildSplitModel({}, 3);
  const Dataset auxiliary = SmoothImages(64, 1), test = SmoothImages(32, 2);
  LeakageOptions options;
  options.dcor_batch_size = 16;
  options.attack.epochs = 1;
  options.grid_images = 4;
  const LeakageReport off = MeasureLeakage(model.bottom, auxiliary, test, options);
  EXPECT_TRUE(std::isnan(off.inversion_ssim));
  EXPECT_EQ(off.inversion_samples, 0);
  options.inversion_samples = 16;
  options.inversion.rounds = 10;
  options.surrogate = [](uint64_t seed) { return BuildSplitModel({}, seed).bottom; };
  const LeakageReport on = MeasureLeakage(model.bottom, auxiliary, test, options);
  EXPECT_EQ(on.inversion_samples, 16);
  ASSERT_TRUE(std::isfinite(on.inversion_ssim));
  EXPECT_GE(on.inversion_ssim, -1.0);
  EXPECT_LE(on.inversion_ssim, 1.0);
  ASSERT_EQ(on.grid_inversions.sizes(), (at::IntArrayRef{4, 1, 28, 28}));
}

TEST_F(SweepTest, NoPeekLowersLeakageAndTheOutputsDescribeEverySetting) {
  SweepOptions options;
  options.model = TabularSpec();
  options.alphas = {0, 10};
  options.densities = {1.0, 0.5};
  options.epochs = 2;
  options.batch_size = 128;
  options.server_learning_rate = options.client_learning_rate = 1e-2;
  options.leakage.dcor_batch_size = 512;
  options.leakage.attack.epochs = 2;
  const Dataset train = Tabular(2560, 1), auxiliary = Tabular(512, 3), test = Tabular(1024, 2);
  int64_t seen = 0;
  std::FILE* log = std::tmpfile();
  const std::vector<SweepRow> rows =
      RunSweep(train, auxiliary, test, options, nullptr, log, [&](const SweepRow&) { ++seen; });
  std::fclose(log);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(seen, 4);
  EXPECT_EQ(rows[0].method, Method::kNone);
  EXPECT_EQ(rows[2].method, Method::kGaussianKPlus);
  EXPECT_NEAR(rows[2].leakage.density_sent, 0.5, 0.01);
  for (const SweepRow& row : rows) {
    EXPECT_EQ(row.leakage.dcor.batch_size, 512);
    EXPECT_EQ(row.train_samples, 2 * 2560);
    EXPECT_TRUE(std::isnan(row.leakage.attack_ssim));  // tabular inputs: no SSIM
    // Two balanced classes decided by one feature. Measured: 0.97 at alpha 0, 0.85 at alpha 10
    // (NoPeek at that weight costs accuracy).
    EXPECT_GT(row.test_accuracy, row.alpha == 0 ? 0.93 : 0.75) << "alpha " << row.alpha;
  }
  // alpha 10 against alpha 0 at each density (bias-corrected: the plain estimate at n = 512 has
  // a floor of about 0.2).
  EXPECT_LT(rows[1].leakage.dcor.dcor_bias_corrected,
            0.8 * rows[0].leakage.dcor.dcor_bias_corrected);
  EXPECT_LT(rows[3].leakage.dcor.dcor_bias_corrected,
            0.8 * rows[2].leakage.dcor.dcor_bias_corrected);
  // The plain dCor of the last epoch's batches (n = 128; measured 0.58 at alpha 10).
  EXPECT_GT(rows[1].train_dcor_last_epoch, 0.3);
  EXPECT_LE(rows[1].train_dcor_last_epoch, 1.0);
  EXPECT_EQ(rows[0].train_dcor_last_epoch, 0.0);

  const std::string csv = SweepCsv(rows);
  EXPECT_EQ(Lines(csv), 5);
  EXPECT_EQ(csv.rfind("alpha,act_noise,density,seed,method,", 0), 0u);
  EXPECT_NE(csv.find("\n10,0,0.5,1,gaussiank+,fp32,"), std::string::npos);
  const std::string json = SweepJson(rows);
  EXPECT_EQ(std::count(json.begin(), json.end(), '{'), 4);
  EXPECT_NE(json.find("\"method\": \"gaussiank+\""), std::string::npos);
  EXPECT_NE(json.find("\"attack_ssim\": null"), std::string::npos);
  const std::string table = SweepMarkdown(rows);
  EXPECT_EQ(Lines(table), 6);
  EXPECT_NE(table.find("dCor (n = 512)"), std::string::npos);

  const std::string png = dir_.File("leakage.png");
  const std::string script = SweepGnuplotScript(rows, png);
  EXPECT_NE(script.find("\"a10 d0.5\""), std::string::npos);  // one labelled point per setting
  EXPECT_NE(script.find("\"vanilla\""), std::string::npos);
  const std::string script_path = dir_.File("leakage.gp");
  WriteFileAtomic(script_path, script);
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) GTEST_SKIP() << "no gnuplot";
  std::string why_not;
  ASSERT_TRUE(RunGnuplot(script_path, &why_not)) << why_not;
  const std::string bytes = ReadFile(png, "plot");
  ASSERT_GT(bytes.size(), 8u);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
}

TEST_F(SweepTest, NoiseSettingsAndSeedsMultiplyTheSettings) {
  SweepOptions options;
  options.model = TabularSpec();
  options.alphas = {0, 1};
  options.densities = {1.0};
  options.noises = {0, 3};
  options.seeds = {4, 5};
  options.epochs = 1;
  options.max_steps_per_epoch = 4;
  options.batch_size = 64;
  options.leakage.dcor_batch_size = 256;
  options.leakage.attack.epochs = 1;
  const Dataset data = Tabular(256, 1);
  const std::vector<SweepRow> rows = RunSweep(data, data, data, options, nullptr, nullptr);
  ASSERT_EQ(rows.size(), 8u);
  EXPECT_EQ(rows[0].seed, 4u);
  EXPECT_EQ(rows[7].seed, 5u);
  EXPECT_EQ(SettingLabel(rows[0]), "vanilla");
  EXPECT_EQ(SettingLabel(rows[1]), "n3");
  EXPECT_EQ(SettingLabel(rows[3]), "a1 n3");
  // Noise of sigma 3 on an untrained MLP's activations hides most of the inputs.
  EXPECT_LT(rows[1].leakage.dcor.dcor_bias_corrected,
            0.5 * rows[0].leakage.dcor.dcor_bias_corrected);
  // Another seed, another model.
  EXPECT_NE(rows[0].test_loss, rows[4].test_loss);
}

TEST(RunSweepTest, RejectsBadSettings) {
  SweepOptions options;
  options.model = TabularSpec();
  const Dataset data = Tabular(64, 1);
  options.densities = {0};
  EXPECT_THROW(RunSweep(data, data, data, options, nullptr, nullptr), UserError);
  options.densities = {1};
  options.alphas = {-1};
  EXPECT_THROW(RunSweep(data, data, data, options, nullptr, nullptr), UserError);
  options.alphas = {};
  EXPECT_THROW(RunSweep(data, data, data, options, nullptr, nullptr), UserError);
  options.alphas = {0};
  options.noises = {-1};
  EXPECT_THROW(RunSweep(data, data, data, options, nullptr, nullptr), UserError);
  options.noises = {};
  EXPECT_THROW(RunSweep(data, data, data, options, nullptr, nullptr), UserError);
}

}  // namespace
}  // namespace cleave::leakage
