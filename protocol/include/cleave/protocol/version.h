// The wire protocol version every message carries, and default limits.
#pragma once

#include <cstdint>

namespace cleave::protocol {

constexpr uint32_t kProtocolVersion = 1;
constexpr int64_t kDefaultMaxMessageBytes = 64LL << 20;

}  // namespace cleave::protocol
