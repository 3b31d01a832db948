#include "cleave/protocol/vertical_fingerprint.h"

#include <cstdio>

namespace cleave::protocol {

std::string VerticalFingerprint(int64_t num_classes) {
  // FNV-1a over the text: the same digest on every machine.
  const std::string text = "cleave-vertical-v1|classes=" + std::to_string(num_classes);
  uint64_t hash = 1469598103934665603ULL;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(hash));
  return hex;
}

}  // namespace cleave::protocol
