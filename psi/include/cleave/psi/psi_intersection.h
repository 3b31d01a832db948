// What the relay computes once every party's set has been blinded by every party: which positions
// of each owner's set hold a point found in all the sets. The relay sees only fully blinded
// points, which it cannot map to ids (it holds no key); it learns the sets' sizes and the size of
// the intersection (and, with three or more parties, of every sub-intersection, since it holds
// all the fully blinded sets).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cleave::psi {

// finals[i]: owner i's points blinded by all parties, in owner i's order. Returns, per owner,
// the ascending positions of its points present in every final set. No sets: no result.
std::vector<std::vector<uint32_t>> IntersectionPositions(
    const std::vector<std::vector<std::string>>& finals);

}  // namespace cleave::psi
