// The client's image-folder data (--dataset images): flags, and the training and test splits
// with one class list (see core/image_folder.h for the folder layout and the pipeline).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "cleave/core/dataset.h"

namespace cleave::client {

struct ImageFlags {
  std::string images_dir;       // --images: DIR/<class>/<file>.png|.jpg|.jpeg
  std::string test_images_dir;  // --test-images: the same layout; otherwise --test-fraction
  std::string image_size;       // "HxW" ("" : as stored, all the same size)
  int64_t channels = 0;         // 1 or 3 (0: 1 if every image is grey, else 3)
  std::string normalize;        // "MEAN,STD" or "M1,M2,M3,S1,S2,S3" ("" : values in [0, 1])

  void Register(CLI::App& app);
};

// Loads --images (and --test-images, or holds out a stratified, seeded `test_fraction`). The
// class list is `labels` ("a,b,c") or the sorted subfolders of --images, and must have
// `num_classes` entries; the test folder is read with the same list, size and channels. Both
// splits come in a seeded shuffled order (not class by class), so a limit keeps every class.
// Throws UserError (one line) for every problem, including an empty test split.
TrainValidation LoadImageData(const ImageFlags& flags, const std::string& labels,
                              double test_fraction, uint64_t seed, int64_t num_classes);

}  // namespace cleave::client
