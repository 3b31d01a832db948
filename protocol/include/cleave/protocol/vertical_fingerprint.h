// The fingerprint both ends compare at Join in the vertical configuration. The parties' bottoms
// differ from each other and from the server's model, so it covers what they must share (the
// configuration and the classes); the server checks each party's cut shape against its join.
#pragma once

#include <cstdint>
#include <string>

namespace cleave::protocol {

// 16 hex digits, the same on every machine; differs from every vanilla model fingerprint's text.
std::string VerticalFingerprint(int64_t num_classes);

}  // namespace cleave::protocol
