// A vertical party's share of the data (--config vertical): the features it holds of every
// sample, and the samples every party shares, in one order.
//
// Features: an image part (left, right, top or bottom half of each image; the other pixels are
// zero, so the image keeps its shape and any image model takes it) or a range of columns of
// flat (CSV) features. Samples: the rows whose ids are in a shared, sorted id list (what a
// private set intersection of the parties' ids gives each party), ordered by id, so that row i
// is the same sample at every party; the batch order then comes from the server's seed.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "cleave/core/dataset.h"

namespace cleave::client {

struct FeaturePartFlags {
  std::string image_part;  // "", "left", "right", "top" or "bottom"
  std::string columns;     // "", or "A:B": feature columns A..B-1 (0-based)
  std::string shared_ids;  // file with the shared sample ids, one per line ("": all rows)

  void Register(CLI::App& app);
  bool empty() const { return image_part.empty() && columns.empty() && shared_ids.empty(); }
};

// The half `part` names of every image in `inputs` ([N, C, H, W]); the other pixels set to 0.
// Throws UserError for an unknown part or inputs that are not images.
at::Tensor SelectImagePart(const at::Tensor& inputs, const std::string& part);
// Columns [begin, end) of `inputs` ([N, F]) from "A:B". Throws UserError for a bad range.
at::Tensor SelectColumns(const at::Tensor& inputs, const std::string& range);
// The rows of `data` whose ids (`row_ids[i]` is row i's id) are in `shared` (ascending, no
// repeats), in the order of `shared`. Throws UserError if `shared` is not ascending or names an
// id `data` lacks.
Dataset AlignToSharedIds(const Dataset& data, const std::vector<int64_t>& row_ids,
                         const std::vector<int64_t>& shared);
// Reads ids, one integer per line. Throws UserError naming the file and line.
std::vector<int64_t> ReadSharedIds(const std::string& path);

// The flags applied to one split of the data: ids (the row index is a sample's id) first, then
// the features. `align`: whether --shared-ids applies to this split (the training split).
Dataset ApplyFeaturePart(const Dataset& data, const FeaturePartFlags& flags, bool align);

}  // namespace cleave::client
