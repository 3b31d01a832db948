// A client's part in the vertical configuration (--config vertical --party I): what it tells the
// server at Join (its party index and cut-layer shape) and what it learns back (whether it holds
// the labels, the batch order's seed). The server runs the top on every party's activations
// joined; this party receives only its slice of the gradient (and, unless it holds the labels,
// no loss and no accuracy).
#pragma once

#include <cstdint>
#include <vector>

#include "cleave/core/split_config.h"
#include "cleave/protocol/cleave.pb.h"

namespace cleave::client {

struct VerticalRole {
  bool enabled = false;
  int party = 0;
  bool holds_labels = true;  // vanilla: the client always sends its labels
  uint64_t batch_seed = 0;
};

// Fills the vertical fields of a Join request (and its fingerprint, which in vertical covers the
// configuration and the classes only); nothing for other configurations.
void DescribeVerticalParty(SplitConfig config, int party, int64_t num_classes,
                           const std::vector<int64_t>& cut_shape, v1::JoinRequest* request);

// What the Join reply says about this client's part. Throws StatusError FAILED_PRECONDITION if
// the server runs another configuration, and InvalidInput for vertical settings out of range.
VerticalRole AdoptVerticalRole(SplitConfig config, int party, const v1::JoinReply& reply);

}  // namespace cleave::client
