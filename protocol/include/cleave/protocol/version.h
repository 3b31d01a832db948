// The wire protocol version every message carries, and default limits.
#pragma once

#include <cstdint>

namespace cleave::protocol {

// 2: the sparse codec writes format 2 (int8/int4 values, Golomb-Rice index gaps), which a
// version-1 peer cannot read, so the mismatch is refused at Join rather than at the first tensor.
constexpr uint32_t kProtocolVersion = 2;
constexpr int64_t kDefaultMaxMessageBytes = 64LL << 20;

}  // namespace cleave::protocol
