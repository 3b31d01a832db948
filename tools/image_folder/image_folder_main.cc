// cleave-image-folder: writes image folders in the layout cleave-client --dataset images reads
// (DIR/<class>/<file>), from Fashion-MNIST or synthetic patterns a small model learns quickly.
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <random>

#include "cleave/core/command_line.h"
#include "cleave/core/dataset.h"
#include "cleave/core/error.h"
#include "cleave/core/image_file.h"
#include "cleave/core/image_folder.h"

namespace {

constexpr const char* kDescription =
    R"(cleave-image-folder: writes image folders (one subfolder per class) for
cleave-client --dataset images.

  cleave-image-folder fashion-mnist --out fmnist/train --split train
  cleave-image-folder fashion-mnist --out fmnist/test --split test --format jpeg
  cleave-image-folder synthetic --out toy --classes 3 --per-class 20 --size 16x16 --channels 3

Fashion-MNIST class folders are 0-tshirt, 1-trouser, ... 9-boot, so that their sorted order is
the label order. Synthetic class k is a bright horizontal band in the k-th of `classes` stripes
of the image, over seeded noise.

Exit codes: 0 ok, 1 internal error, 2 bad flags or files.)";

const char* const kFashionClasses[] = {"0-tshirt", "1-trouser", "2-pullover", "3-dress", "4-coat",
                                       "5-sandal", "6-shirt",   "7-sneaker",  "8-bag",   "9-boot"};

// Writes `image` as DIR/<cls>/<name>.png or .jpg.
void Put(const std::string& dir, const std::string& cls, const std::string& name, bool jpeg,
         const cleave::Image& image) {
  const std::filesystem::path folder = std::filesystem::path(dir) / cls;
  std::error_code error;
  std::filesystem::create_directories(folder, error);
  CLEAVE_CHECK_USER(!error, "cannot create '", folder.string(), "': ", error.message());
  const std::string path = (folder / name).string();
  if (jpeg) {
    cleave::WriteJpeg(path + ".jpg", image, 95);
  } else {
    cleave::WritePng(path + ".png", image);
  }
}

struct Common {
  std::string out, format = "png", prefix;
};

void AddCommon(CLI::App* command, Common* common) {
  command->add_option("--out", common->out, "Folder to write (class subfolders inside)")
      ->required();
  command->add_option("--format", common->format, "png, jpeg, or mixed (alternating)")
      ->check(CLI::IsMember({"png", "jpeg", "mixed"}))
      ->capture_default_str();
  command->add_option("--prefix", common->prefix, "Prefix of every file name");
}

bool IsJpeg(const Common& common, int64_t index) {
  return common.format == "jpeg" || (common.format == "mixed" && index % 2 == 1);
}

int64_t WriteFashionMnist(const Common& common, const std::string& data_dir,
                          const std::string& split, int64_t limit) {
  const cleave::Dataset data =
      cleave::LoadFashionMnist(data_dir, split == "train" ? cleave::FashionMnistSplit::kTrain
                                                          : cleave::FashionMnistSplit::kTest);
  const int64_t count = limit > 0 ? std::min(limit, data.size()) : data.size();
  const at::Tensor bytes = data.inputs.narrow(0, 0, count).mul(255).round().to(at::kByte);
  const uint8_t* pixels = bytes.contiguous().data_ptr<uint8_t>();
  const int64_t* labels = data.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    cleave::Image image{28, 28, 1, {pixels + i * 784, pixels + (i + 1) * 784}};
    char name[32];
    std::snprintf(name, sizeof(name), "%05lld", static_cast<long long>(i));
    Put(common.out, kFashionClasses[labels[i]], common.prefix + name, IsJpeg(common, i), image);
  }
  return count;
}

struct Synthetic {
  int64_t classes = 3, per_class = 20, channels = 1;
  std::string size = "16x16";
  uint64_t seed = 1;
};

// Class k: noise in [0, 80) with rows of the k-th band at 220 (colour: tinted per class).
cleave::Image SyntheticImage(const Synthetic& s, int64_t height, int64_t width, int64_t k,
                             std::mt19937_64& random) {
  cleave::Image image{height, width, s.channels, {}};
  std::uniform_int_distribution<int> noise(0, 79);
  for (int64_t y = 0; y < height; ++y) {
    const bool band = y * s.classes / height == k;
    for (int64_t x = 0; x < width * s.channels; ++x) {
      const int tint = s.channels == 3 && x % 3 == k % 3 ? 35 : 0;
      image.pixels.push_back(static_cast<uint8_t>(band ? 220 - tint : noise(random) + tint));
    }
  }
  return image;
}

int64_t WriteSynthetic(const Common& common, const Synthetic& s) {
  CLEAVE_CHECK_USER(s.classes >= 1 && s.classes <= 1000, "--classes must be in 1..1000");
  CLEAVE_CHECK_USER(s.per_class >= 0, "--per-class must be >= 0");
  const std::vector<int64_t> size = cleave::ParseImageSize(s.size, "--size");
  CLEAVE_CHECK_USER(size[0] >= s.classes, "--size needs at least one row per class");
  std::mt19937_64 random(s.seed);
  for (int64_t k = 0; k < s.classes; ++k) {
    for (int64_t i = 0; i < s.per_class; ++i) {
      char cls[32], name[32];
      std::snprintf(cls, sizeof(cls), "class-%03lld", static_cast<long long>(k));
      std::snprintf(name, sizeof(name), "%05lld", static_cast<long long>(i));
      Put(common.out, cls, common.prefix + name, IsJpeg(common, i),
          SyntheticImage(s, size[0], size[1], k, random));
    }
  }
  return s.classes * s.per_class;
}

int Run(int argc, char** argv) {
  CLI::App app(kDescription, "cleave-image-folder");
  app.require_subcommand(1);
  Common common;
  std::string data_dir = cleave::kDefaultFashionMnistDir, split = "train";
  int64_t limit = 0;
  CLI::App* fashion = app.add_subcommand("fashion-mnist", "Fashion-MNIST IDX files as images");
  AddCommon(fashion, &common);
  fashion->add_option("--data-dir", data_dir, "Fashion-MNIST IDX files")->capture_default_str();
  fashion->add_option("--split", split, "train or test")
      ->check(CLI::IsMember({"train", "test"}))
      ->capture_default_str();
  fashion->add_option("--limit", limit, "Only the first N images (0: all)")->capture_default_str();
  Synthetic s;
  CLI::App* synthetic = app.add_subcommand("synthetic", "Seeded patterns, one band per class");
  AddCommon(synthetic, &common);
  synthetic->add_option("--classes", s.classes, "Number of classes")->capture_default_str();
  synthetic->add_option("--per-class", s.per_class, "Images per class")->capture_default_str();
  synthetic->add_option("--size", s.size, "HxW")->capture_default_str();
  synthetic->add_option("--channels", s.channels, "1 or 3")
      ->check(CLI::IsMember({1, 3}))
      ->capture_default_str();
  synthetic->add_option("--seed", s.seed, "Seed of the noise")->capture_default_str();
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  const int64_t written = fashion->parsed() ? WriteFashionMnist(common, data_dir, split, limit)
                                            : WriteSynthetic(common, s);
  std::printf("wrote %lld images under %s\n", static_cast<long long>(written), common.out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return cleave::RunCommand("cleave-image-folder", [&] { return Run(argc, argv); });
}
