// Text a peer sent (descriptions, names, fingerprints) made safe for a log line or a status
// message: bytes outside printable ASCII are escaped (a newline or an ANSI escape cannot forge a
// line or colour the terminal) and the result is capped, saying how much was cut.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace cleave {

// Default cap: long enough for any honest model description or fingerprint.
inline constexpr size_t kMaxPeerTextBytes = 200;

// "abc\n" -> "abc\x0a"; a backslash is doubled; over `max_bytes` input bytes the rest is replaced
// by "...(+N bytes)".
std::string PeerText(std::string_view text, size_t max_bytes = kMaxPeerTextBytes);

}  // namespace cleave
