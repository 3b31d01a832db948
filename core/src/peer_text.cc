#include "cleave/core/peer_text.h"

#include <cstdio>

namespace cleave {

std::string PeerText(std::string_view text, size_t max_bytes) {
  const size_t shown = text.size() < max_bytes ? text.size() : max_bytes;
  std::string out;
  out.reserve(shown + 16);
  for (size_t i = 0; i < shown; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char escaped[5];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", c);
      out += escaped;
    }
  }
  if (shown < text.size()) out += "...(+" + std::to_string(text.size() - shown) + " bytes)";
  return out;
}

}  // namespace cleave
