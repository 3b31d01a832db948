// Vertical split learning (parties hold different features of the same samples): how the server
// joins the parties' cut-layer activations into the input of its top, and how the gradient at
// that input is handed back, each party its slice. Plain LibTorch, no networking.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cleave::server {

enum class JoinMode {
  kConcat,  // along dimension 1 (a sample's first: features, or channels of an image cut layer)
  kSum,     // element-wise: every party's cut layer has the top's input shape
};

// "concat" or "sum"; throws UserError naming the valid names.
JoinMode ParseJoinMode(const std::string& name);
const char* JoinModeName(JoinMode mode);

// Throws Refusal kMismatch unless a party's per-sample cut shape can take part in the join that
// feeds a top taking `top_shape`: equal for sum; for concat, equal but for the first dimension,
// which must be at least 1 and smaller than the top's (the parties' widths must add up to it,
// which JoinActivations checks once all have sent).
void CheckPartyCutShape(JoinMode mode, const std::vector<int64_t>& party_shape,
                        const std::vector<int64_t>& top_shape, int party);

// Concat only, at Join: the first dimensions of the parties admitted so far (`widths`, party
// index -> width, the joining party's included) must leave at least 1 for each of the
// `parties` not yet admitted and, once every party is in, add up to the top's. Throws
// Refusal(kMismatch) naming the widths otherwise, so a party whose own bottom (a TorchScript
// --bottom, say) is too wide or narrow is told at Join rather than at its first step.
void CheckConcatWidths(const std::map<int, int64_t>& widths, int parties,
                       const std::vector<int64_t>& top_shape, int party);

// The top's input from the parties' [B, ...] activations, in party order. Throws InvalidInput
// if the batch sizes differ or the joined shape is not [B, top_shape...].
at::Tensor JoinActivations(JoinMode mode, const std::vector<at::Tensor>& parts,
                           const std::vector<int64_t>& top_shape);

// Each party's share of `gradient` (d loss / d joined input): for concat the slice of dimension
// 1 its activations filled, for sum the whole gradient (d(a+b)/da = 1). `parts` as joined.
std::vector<at::Tensor> SplitGradient(JoinMode mode, const at::Tensor& gradient,
                                      const std::vector<at::Tensor>& parts);

}  // namespace cleave::server
