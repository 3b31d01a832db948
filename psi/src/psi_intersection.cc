#include "cleave/psi/psi_intersection.h"

#include <unordered_map>

namespace cleave::psi {

std::vector<std::vector<uint32_t>> IntersectionPositions(
    const std::vector<std::vector<std::string>>& finals) {
  // For each distinct point: in how many owners' sets it occurs (counted once per owner).
  std::unordered_map<std::string, size_t> owners;
  for (size_t owner = 0; owner < finals.size(); ++owner) {
    for (const std::string& point : finals[owner]) {
      size_t& count = owners[point];
      if (count == owner) count = owner + 1;  // first time this owner: count it
    }
  }
  std::vector<std::vector<uint32_t>> positions(finals.size());
  for (size_t owner = 0; owner < finals.size(); ++owner) {
    for (size_t i = 0; i < finals[owner].size(); ++i) {
      if (owners[finals[owner][i]] == finals.size()) {
        positions[owner].push_back(static_cast<uint32_t>(i));
      }
    }
  }
  return positions;
}

}  // namespace cleave::psi
