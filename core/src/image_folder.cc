#include "cleave/core/image_folder.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <system_error>

#include "cleave/core/error.h"
#include "cleave/core/image_file.h"

namespace cleave {
namespace {

namespace fs = std::filesystem;

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

void CheckDirectory(const std::string& dir) {
  std::error_code error;
  const fs::file_status status = fs::status(dir, error);
  CLEAVE_CHECK_USER(!error && fs::exists(status), "image folder '", dir,
                    "' does not exist or cannot be read",
                    error ? ": " + error.message() : std::string());
  CLEAVE_CHECK_USER(fs::is_directory(status), "image folder '", dir, "' is not a directory");
}

// Entries of `dir` (directories or not), sorted by name; hidden entries skipped.
std::vector<fs::directory_entry> SortedEntries(const std::string& dir) {
  std::error_code error;
  fs::directory_iterator it(dir, error);
  CLEAVE_CHECK_USER(!error, "cannot read image folder '", dir, "': ", error.message());
  std::vector<fs::directory_entry> entries;
  for (; it != fs::directory_iterator(); it.increment(error)) {
    CLEAVE_CHECK_USER(!error, "cannot read image folder '", dir, "': ", error.message());
    if (it->path().filename().string().rfind('.', 0) == 0) continue;
    entries.push_back(*it);
  }
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.path().filename() < b.path().filename(); });
  return entries;
}

// The class list: the given names (each subfolder must be one of them) or the sorted subfolders.
std::vector<std::string> ResolveClasses(const std::string& dir,
                                        const std::vector<std::string>& given) {
  const std::vector<std::string> folders = ListClassFolders(dir);
  if (given.empty()) {
    CLEAVE_CHECK_USER(!folders.empty(), "image folder '", dir,
                      "' has no class subfolders (expected ", dir, "/<class>/<image files>)");
    return folders;
  }
  const std::set<std::string> unique(given.begin(), given.end());
  CLEAVE_CHECK_USER(unique.size() == given.size(), "the class list '", JoinNames(given),
                    "' names a class twice");
  for (const std::string& folder : folders) {
    CLEAVE_CHECK_USER(unique.count(folder) > 0, "image folder '", dir, "' has a subfolder '",
                      folder, "' that is not one of the classes (", JoinNames(given), ")");
  }
  return given;  // a listed class without a subfolder: warned about by LoadImageFolder
}

// The image files of one class folder in name order; counts what is skipped.
std::vector<std::string> ImageFiles(const fs::path& folder, int64_t* skipped) {
  std::vector<std::string> files;
  for (const fs::directory_entry& entry : SortedEntries(folder.string())) {
    std::error_code error;
    if (entry.is_regular_file(error) && HasImageExtension(entry.path().filename().string())) {
      files.push_back(entry.path().string());
    } else {
      ++*skipped;
    }
  }
  return files;
}

// Decoded, converted to the requested channels (if fixed) and resized (if asked).
FloatImage LoadOne(const std::string& path, const ImageFolderOptions& options) {
  FloatImage image = ToFloat(ReadImageFile(path));
  if (options.channels != 0) image = ConvertChannels(image, options.channels);
  if (options.height > 0) image = ResizeBilinear(image, options.height, options.width);
  return image;
}

void CheckOptions(const ImageFolderOptions& options) {
  CLEAVE_CHECK_USER(options.channels == 0 || options.channels == 1 || options.channels == 3,
                    "images have 1 or 3 channels, not ", options.channels);
  CLEAVE_CHECK_USER(
      (options.height == 0) == (options.width == 0) && options.height >= 0 && options.width >= 0,
      "bad image size ", options.height, "x", options.width);
  CLEAVE_CHECK_USER(options.mean.size() == options.std.size(),
                    "normalisation needs as many means as standard deviations");
}

// [N, C, H, W] from HWC images, (value - mean) / std per channel.
at::Tensor Pack(std::vector<FloatImage>* images, int64_t channels,
                const ImageFolderOptions& options, const std::string& dir) {
  const size_t stats = options.mean.size();
  CLEAVE_CHECK_USER(stats == 0 || stats == 1 || stats == static_cast<size_t>(channels),
                    "normalisation gives ", stats, " means and deviations for ", channels,
                    "-channel images (give 1 or ", channels, ")");
  const FloatImage& first = images->front();
  const int64_t h = first.height, w = first.width, n = static_cast<int64_t>(images->size());
  at::Tensor out = at::empty({n, channels, h, w}, at::kFloat);
  float* o = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    FloatImage& image = (*images)[static_cast<size_t>(i)];
    image = ConvertChannels(image, channels);
    for (int64_t c = 0; c < channels; ++c) {
      const float mean = stats == 0 ? 0.0f : options.mean[stats == 1 ? 0 : c];
      const float inv_std = stats == 0 ? 1.0f : 1.0f / options.std[stats == 1 ? 0 : c];
      float* plane = o + (i * channels + c) * h * w;
      for (int64_t p = 0; p < h * w; ++p) {
        plane[p] = (image.pixels[static_cast<size_t>(p * channels + c)] - mean) * inv_std;
      }
    }
    image = FloatImage{};  // freed as we go
  }
  CLEAVE_CHECK_USER(at::isfinite(out).all().item<bool>(), "image folder '", dir,
                    "' gives non-finite values after normalisation");
  return out;
}

}  // namespace

std::vector<std::string> ListClassFolders(const std::string& dir) {
  CheckDirectory(dir);
  std::vector<std::string> folders;
  for (const fs::directory_entry& entry : SortedEntries(dir)) {
    std::error_code error;
    if (entry.is_directory(error)) folders.push_back(entry.path().filename().string());
  }
  return folders;
}

Dataset LoadImageFolder(const std::string& dir, const ImageFolderOptions& options) {
  CheckOptions(options);
  const std::vector<std::string> classes = ResolveClasses(dir, options.class_names);
  std::vector<FloatImage> images;
  std::vector<int64_t> labels;
  std::vector<std::string> without_images;  // no subfolder, or no image in it
  int64_t skipped = 0;
  bool any_colour = false;
  for (size_t label = 0; label < classes.size(); ++label) {
    const fs::path folder = fs::path(dir) / classes[label];
    std::error_code error;
    const std::vector<std::string> files =
        fs::is_directory(folder, error) ? ImageFiles(folder, &skipped) : std::vector<std::string>{};
    if (files.empty()) without_images.push_back(classes[label]);
    for (const std::string& file : files) {
      images.push_back(LoadOne(file, options));
      labels.push_back(static_cast<int64_t>(label));
      any_colour = any_colour || images.back().channels == 3;
      const FloatImage& first = images.front();
      CLEAVE_CHECK_USER(images.back().height == first.height && images.back().width == first.width,
                        "images differ in size: '", file, "' is ", images.back().height, "x",
                        images.back().width, ", the first is ", first.height, "x", first.width,
                        " (resize them to one size: --image-size HxW)");
    }
  }
  if (skipped > 0) {
    spdlog::warn("image folder '{}': skipped {} entries that are not .png/.jpg/.jpeg files", dir,
                 skipped);
  }
  CLEAVE_CHECK_USER(!images.empty(), "image folder '", dir,
                    "' has no images (.png, .jpg or .jpeg files in its class subfolders ",
                    JoinNames(classes), ")");
  if (!without_images.empty()) {
    spdlog::warn("image folder '{}' has no images of class {} (no subfolder or an empty one)", dir,
                 JoinNames(without_images));
  }
  Dataset data;
  const int64_t channels = options.channels != 0 ? options.channels : (any_colour ? 3 : 1);
  data.inputs = Pack(&images, channels, options, dir);
  data.labels = at::tensor(labels, at::kLong);
  data.num_classes = static_cast<int64_t>(classes.size());
  return data;
}

std::vector<int64_t> ParseImageSize(const std::string& text, const std::string& flag) {
  const size_t x = text.find('x');
  std::vector<int64_t> size;
  if (x != std::string::npos && text.find('x', x + 1) == std::string::npos) {
    for (const std::string& part : {text.substr(0, x), text.substr(x + 1)}) {
      char* end = nullptr;
      const long long value = std::strtoll(part.c_str(), &end, 10);
      if (part.empty() || *end != '\0' || value <= 0 || value > 65535) break;
      size.push_back(value);
    }
  }
  CLEAVE_CHECK_USER(size.size() == 2, flag, " must be HxW with positive sizes (e.g. 64x64), got '",
                    text, "'");
  return size;
}

void ParseNormalization(const std::string& text, const std::string& flag,
                        ImageFolderOptions* options) {
  std::vector<float> values;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) {
    char* end = nullptr;
    const float value = std::strtof(part.c_str(), &end);
    CLEAVE_CHECK_USER(!part.empty() && *end == '\0' && std::isfinite(value), flag,
                      " must be MEAN,STD or per channel M1,M2,M3,S1,S2,S3 (finite numbers), got '",
                      text, "'");
    values.push_back(value);
  }
  CLEAVE_CHECK_USER(values.size() == 2 || values.size() == 6, flag,
                    " must be MEAN,STD or per channel M1,M2,M3,S1,S2,S3, got '", text, "'");
  const size_t half = values.size() / 2;
  options->mean.assign(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(half));
  options->std.assign(values.begin() + static_cast<std::ptrdiff_t>(half), values.end());
  for (float s : options->std) {
    CLEAVE_CHECK_USER(s > 0, flag, ": standard deviations must be > 0, got '", text, "'");
  }
}

TrainValidation SplitStratified(const Dataset& data, double fraction, uint64_t seed) {
  CLEAVE_CHECK_USER(fraction > 0 && fraction < 1, "the test fraction must be in (0, 1), got ",
                    fraction);
  const at::Tensor labels = data.labels.contiguous();
  const int64_t* label = labels.data_ptr<int64_t>();
  std::map<int64_t, int64_t> count, held;
  for (int64_t i = 0; i < data.size(); ++i) ++count[label[i]];
  std::vector<int64_t> train, test;
  for (int64_t row : SeededPermutation(data.size(), seed)) {
    const int64_t c = label[row];
    const auto quota = static_cast<int64_t>(std::llround(fraction * count[c]));
    if (held[c] < quota) {
      ++held[c];
      test.push_back(row);
    } else {
      train.push_back(row);
    }
  }
  TrainValidation split;
  split.train = data.Subset(train);
  split.validation = data.Subset(test);
  return split;
}

}  // namespace cleave
