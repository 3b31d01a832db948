// Image folders as data sets: DIR/<class>/<file>.png|.jpg|.jpeg, one subfolder per class, with a
// class list every hospital shares, resizing, channel conversion and normalisation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cleave/core/dataset.h"

namespace cleave {

struct ImageFolderOptions {
  // The classes, in label order. Empty: the sorted names of the folder's subfolders. A subfolder
  // not in a given list is an error; a listed class without a subfolder (or without images in it)
  // is one warning.
  std::vector<std::string> class_names;
  // Every image is resized to height x width (bilinear, see ResizeBilinear). 0 x 0: kept as
  // stored, and then every image must have the size of the first.
  int64_t height = 0;
  int64_t width = 0;
  // 1 (grey) or 3 (RGB): images are converted (see ConvertChannels). 0: 1 if every image is grey,
  // otherwise 3.
  int64_t channels = 0;
  // After scaling to [0, 1]: (value - mean[c]) / std[c]. One value for every channel, or one per
  // channel; empty: none (values stay in [0, 1]).
  std::vector<float> mean;
  std::vector<float> std;
};

// The sorted names of the subfolders of `dir` (hidden ones, starting with '.', skipped). Throws
// UserError if `dir` is not a readable directory.
std::vector<std::string> ListClassFolders(const std::string& dir);

// Loads every image of `dir` as [N, C, H, W] float32, labels = index of its class in
// options.class_names (or the sorted subfolders). Files are taken in sorted name order, class by
// class, so the same folder gives the same data set everywhere. Files without a .png/.jpg/.jpeg
// name and nested folders are skipped (one warning with their count). Throws UserError (one line)
// for a missing directory, a subfolder not in the class list, a file that does not decode (named),
// no image at all, sizes that differ without a resize, or bad options.
Dataset LoadImageFolder(const std::string& dir, const ImageFolderOptions& options);

// "HxW" -> {H, W} (positive); throws UserError naming `flag`.
std::vector<int64_t> ParseImageSize(const std::string& text, const std::string& flag);
// "MEAN,STD" (every channel) or "M1,..,Mc,S1,..,Sc" into options.mean / options.std; every std
// must be > 0 and every value finite. Throws UserError naming `flag`.
void ParseNormalization(const std::string& text, const std::string& flag,
                        ImageFolderOptions* options);

// Holds out round(fraction * n_c) samples of every class c (stratified), chosen by a seeded
// permutation (SeededPermutation): the same data, fraction and seed give the same split on every
// platform. Both parts keep the permutation's order. Throws UserError if the fraction is outside
// (0, 1).
TrainValidation SplitStratified(const Dataset& data, double fraction, uint64_t seed);

}  // namespace cleave
