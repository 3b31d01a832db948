#include "cleave/client/vertical_features.h"

#include <ATen/ATen.h>

#include <fstream>
#include <numeric>

#include "cleave/core/error.h"

namespace cleave::client {

void FeaturePartFlags::Register(CLI::App& app) {
  app.add_option("--image-part", image_part,
                 "Vertical: the half of each image this party holds: left, right, top or "
                 "bottom (the other pixels are zero)")
      ->check(CLI::IsMember({"left", "right", "top", "bottom"}));
  app.add_option("--columns", columns,
                 "Vertical: the feature columns this party holds, A:B = columns A..B-1 "
                 "(0-based, in the data's order)");
  app.add_option("--shared-ids", shared_ids,
                 "Vertical: file of the sample ids every party shares (one per line, ascending; "
                 "e.g. a private set intersection's result); a row's id is its index. Training "
                 "uses these rows, in this order");
}

at::Tensor SelectImagePart(const at::Tensor& inputs, const std::string& part) {
  CLEAVE_CHECK_USER(inputs.dim() == 4, "--image-part needs images [N, C, H, W], the data has ",
                    inputs.dim() - 1, "-d samples");
  const int64_t height = inputs.size(2), width = inputs.size(3);
  at::Tensor mask = at::zeros({height, width}, inputs.options());
  if (part == "left") {
    mask.narrow(1, 0, width / 2).fill_(1);
  } else if (part == "right") {
    mask.narrow(1, width / 2, width - width / 2).fill_(1);
  } else if (part == "top") {
    mask.narrow(0, 0, height / 2).fill_(1);
  } else if (part == "bottom") {
    mask.narrow(0, height / 2, height - height / 2).fill_(1);
  } else {
    throw UserError("unknown image part '" + part + "' (use left, right, top or bottom)");
  }
  return (inputs * mask).contiguous();
}

at::Tensor SelectColumns(const at::Tensor& inputs, const std::string& range) {
  CLEAVE_CHECK_USER(inputs.dim() == 2, "--columns needs flat features [N, F], the data has ",
                    inputs.dim() - 1, "-d samples");
  const size_t colon = range.find(':');
  int64_t begin = -1, end = -1;
  try {
    CLEAVE_CHECK_USER(colon != std::string::npos, "no colon");
    size_t used = 0;
    begin = std::stoll(range.substr(0, colon), &used);
    CLEAVE_CHECK_USER(used == colon, "junk");
    end = std::stoll(range.substr(colon + 1), &used);
    CLEAVE_CHECK_USER(used == range.size() - colon - 1, "junk");
  } catch (const std::exception&) {
    throw UserError("--columns '" + range + "' is not A:B (two column numbers)");
  }
  CLEAVE_CHECK_USER(begin >= 0 && begin < end && end <= inputs.size(1), "--columns ", range,
                    " is not a range within the data's ", inputs.size(1), " feature columns");
  return inputs.narrow(1, begin, end - begin).contiguous();
}

Dataset AlignToSharedIds(const Dataset& data, const std::vector<int64_t>& row_ids,
                         const std::vector<int64_t>& shared) {
  CLEAVE_ENFORCE(static_cast<int64_t>(row_ids.size()) == data.size(), "one id per row");
  std::vector<int64_t> order(row_ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return row_ids[a] < row_ids[b]; });
  std::vector<int64_t> rows;
  rows.reserve(shared.size());
  size_t next = 0;
  for (size_t i = 0; i < shared.size(); ++i) {
    CLEAVE_CHECK_USER(i == 0 || shared[i - 1] < shared[i],
                      "the shared ids are not ascending without repeats at entry ", i + 1);
    while (next < order.size() && row_ids[order[next]] < shared[i]) ++next;
    CLEAVE_CHECK_USER(next < order.size() && row_ids[order[next]] == shared[i], "shared id ",
                      shared[i], " is not in this party's data");
    rows.push_back(order[next]);
  }
  return data.Subset(rows);
}

std::vector<int64_t> ReadSharedIds(const std::string& path) {
  std::ifstream in(path);
  CLEAVE_CHECK_USER(in.good(), "cannot read the shared ids file '", path, "'");
  std::vector<int64_t> ids;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line == "\r") continue;
    try {
      size_t used = 0;
      ids.push_back(std::stoll(line, &used));
      CLEAVE_CHECK_USER(line.find_first_not_of(" \r", used) == std::string::npos, "junk");
    } catch (const std::exception&) {
      throw UserError("'" + path + "' line " + std::to_string(number) + ": not an id");
    }
  }
  return ids;
}

Dataset ApplyFeaturePart(const Dataset& data, const FeaturePartFlags& flags, bool align) {
  Dataset out = data;
  if (align && !flags.shared_ids.empty()) {
    std::vector<int64_t> row_ids(data.size());
    std::iota(row_ids.begin(), row_ids.end(), 0);
    out = AlignToSharedIds(data, row_ids, ReadSharedIds(flags.shared_ids));
  }
  if (!flags.image_part.empty()) out.inputs = SelectImagePart(out.inputs, flags.image_part);
  if (!flags.columns.empty()) out.inputs = SelectColumns(out.inputs, flags.columns);
  return out;
}

}  // namespace cleave::client
