#include "cleave/server/vertical_join.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "cleave/core/error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/refusal.h"

namespace cleave::server {

JoinMode ParseJoinMode(const std::string& name) {
  if (name == "concat") return JoinMode::kConcat;
  if (name == "sum") return JoinMode::kSum;
  throw UserError("unknown join '" + name + "' (use concat or sum)");
}

const char* JoinModeName(JoinMode mode) { return mode == JoinMode::kSum ? "sum" : "concat"; }

void CheckPartyCutShape(JoinMode mode, const std::vector<int64_t>& party_shape,
                        const std::vector<int64_t>& top_shape, int party) {
  bool fits = party_shape.size() == top_shape.size() && !top_shape.empty();
  if (fits && mode == JoinMode::kSum) fits = party_shape == top_shape;
  if (fits && mode == JoinMode::kConcat) {
    fits = party_shape[0] >= 1 && party_shape[0] < top_shape[0] &&
           std::equal(party_shape.begin() + 1, party_shape.end(), top_shape.begin() + 1);
  }
  if (!fits) {
    throw Refusal(
        RefusalKind::kMismatch,
        detail::Concat("party ", party, "'s cut layer ", protocol::ShapeToString(party_shape),
                       " cannot be joined by ", JoinModeName(mode), " into the top's input ",
                       protocol::ShapeToString(top_shape),
                       mode == JoinMode::kSum ? " (sum needs the same shape)"
                                              : " (concat: all but the first dimension "
                                                "equal, the first smaller)"));
  }
}

void CheckConcatWidths(const std::map<int, int64_t>& widths, int parties,
                       const std::vector<int64_t>& top_shape, int party) {
  int64_t total = 0;
  std::string listed;
  for (const auto& [index, width] : widths) {
    total += width;
    listed += (listed.empty() ? "" : ", ") + detail::Concat("party ", index, ": ", width);
  }
  const int64_t missing = parties - static_cast<int64_t>(widths.size());
  const bool fits = missing > 0 ? total + missing <= top_shape[0] : total == top_shape[0];
  if (fits) return;
  throw Refusal(RefusalKind::kMismatch,
                detail::Concat("party ", party, "'s cut layer does not fit the join: the top's "
                               "input has ", top_shape[0], " along its first dimension, the "
                               "parties' cut layers give ", total, " (", listed, ")",
                               missing > 0 ? detail::Concat(" with ", missing,
                                                            " more to come (at least 1 each)")
                                           : std::string()));
}

at::Tensor JoinActivations(JoinMode mode, const std::vector<at::Tensor>& parts,
                           const std::vector<int64_t>& top_shape) {
  CLEAVE_ENFORCE(!parts.empty(), "no parts to join");
  const int64_t batch = parts[0].size(0);
  for (size_t i = 1; i < parts.size(); ++i) {
    CLEAVE_CHECK_INPUT(parts[i].size(0) == batch, "party ", i, " sent a batch of ",
                       parts[i].size(0), ", party 0 one of ", batch,
                       ": the parties are not drawing the same samples");
  }
  at::Tensor joined;
  if (mode == JoinMode::kConcat) {
    joined = at::cat(parts, 1);
  } else {
    joined = parts[0];
    for (size_t i = 1; i < parts.size(); ++i) joined = joined + parts[i];
  }
  std::vector<int64_t> expected = {batch};
  expected.insert(expected.end(), top_shape.begin(), top_shape.end());
  CLEAVE_CHECK_INPUT(joined.sizes().vec() == expected, "the parties' cut layers join into ",
                     protocol::ShapeToString(joined.sizes().vec()), ", the top takes ",
                     protocol::ShapeToString(expected));
  return joined;
}

std::vector<at::Tensor> SplitGradient(JoinMode mode, const at::Tensor& gradient,
                                      const std::vector<at::Tensor>& parts) {
  std::vector<at::Tensor> shares;
  int64_t offset = 0;
  for (const at::Tensor& part : parts) {
    if (mode == JoinMode::kSum) {
      shares.push_back(gradient);
    } else {
      shares.push_back(gradient.narrow(1, offset, part.size(1)).contiguous());
      offset += part.size(1);
    }
  }
  return shares;
}

}  // namespace cleave::server
