#include "cleave/client/image_data.h"

#include <ATen/ATen.h>

#include "cleave/client/training_data.h"
#include "cleave/core/error.h"
#include "cleave/core/image_folder.h"
#include "cleave/protocol/tensor_message.h"

namespace cleave::client {

void ImageFlags::Register(CLI::App& app) {
  app.add_option("--images", images_dir,
                 "Image folder (--dataset images): one subfolder per class of .png/.jpg/.jpeg "
                 "files; classes are the sorted subfolder names unless --labels lists them");
  app.add_option("--test-images", test_images_dir,
                 "Test image folder, same layout and classes (otherwise --test-fraction of "
                 "--images is held out, stratified by class)");
  app.add_option("--image-size", image_size,
                 "Resize every image to HxW (bilinear, antialiased when shrinking); default: "
                 "keep, all images the same size");
  app.add_option("--channels", channels,
                 "1 (grey) or 3 (RGB): images are converted; default: 1 if every image is grey, "
                 "else 3")
      ->check(CLI::IsMember({1, 3}));
  app.add_option("--normalize", normalize,
                 "After scaling pixels to [0,1]: (x - MEAN) / STD, as MEAN,STD for every channel "
                 "or M1,M2,M3,S1,S2,S3 per channel; default: none");
}

namespace {

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

std::vector<int64_t> SampleShape(const Dataset& data) {
  const auto sample = data.inputs.sizes().slice(1);
  return {sample.begin(), sample.end()};
}

// The pipeline options and the class list every hospital must share.
ImageFolderOptions ResolveOptions(const ImageFlags& flags, const std::string& labels,
                                  int64_t num_classes) {
  CLEAVE_CHECK_USER(!flags.images_dir.empty(),
                    "--dataset images needs --images DIR (one subfolder per class)");
  ImageFolderOptions options;
  options.channels = flags.channels;
  if (!flags.image_size.empty()) {
    const std::vector<int64_t> size = ParseImageSize(flags.image_size, "--image-size");
    options.height = size[0];
    options.width = size[1];
  }
  if (!flags.normalize.empty()) ParseNormalization(flags.normalize, "--normalize", &options);
  if (labels.empty()) {
    options.class_names = ListClassFolders(flags.images_dir);
    CLEAVE_CHECK_USER(static_cast<int64_t>(options.class_names.size()) == num_classes, "--images '",
                      flags.images_dir, "' has ", options.class_names.size(), " class folders (",
                      JoinNames(options.class_names), ") but --classes is ", num_classes,
                      ": every hospital must use the same classes (--labels a,b,c "
                      "fixes the list and its order)");
  } else {
    options.class_names = ParseClassNames(labels);
    CLEAVE_CHECK_USER(static_cast<int64_t>(options.class_names.size()) == num_classes,
                      "--labels names ", options.class_names.size(), " classes but --classes is ",
                      num_classes);
  }
  return options;
}

}  // namespace

TrainValidation LoadImageData(const ImageFlags& flags, const std::string& labels,
                              double test_fraction, uint64_t seed, int64_t num_classes) {
  ImageFolderOptions options = ResolveOptions(flags, labels, num_classes);
  Dataset all = LoadImageFolder(flags.images_dir, options);
  if (!flags.test_images_dir.empty()) {
    options.channels = all.inputs.size(1);  // as the training images, even when chosen by them
    Dataset test = LoadImageFolder(flags.test_images_dir, options);
    CLEAVE_CHECK_USER(SampleShape(test) == SampleShape(all), "--test-images gives samples of ",
                      protocol::ShapeToString(SampleShape(test)), " but --images of ",
                      protocol::ShapeToString(SampleShape(all)),
                      " (--image-size HxW resizes both)");
    // Folders are read class by class: shuffled (seeded), --train-limit / --test-limit take
    // samples of every class.
    return {all.Subset(SeededPermutation(all.size(), seed)),
            test.Subset(SeededPermutation(test.size(), seed + 1))};
  }
  CLEAVE_CHECK_USER(test_fraction > 0 && test_fraction < 1, "--test-fraction must be in (0, 1)");
  TrainValidation split = SplitStratified(all, test_fraction, seed);
  CLEAVE_CHECK_USER(split.validation.size() > 0, "--test-fraction ", test_fraction, " of the ",
                    all.size(), " images of '", flags.images_dir,
                    "' holds out no test images: raise it or give --test-images");
  return split;
}

}  // namespace cleave::client
