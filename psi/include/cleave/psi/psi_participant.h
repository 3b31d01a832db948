// One party of the PSI, without a transport: its ids, its key, and the three things it does.
// 1. OwnBlindedSet: H(id)^k for its ids, in a secret random order (so that the positions the
//    server later names say nothing about the order of the party's file).
// 2. BlindOthers: another party's set, blinded once more with its key, order kept (the owner
//    maps positions back; nobody else can read the points).
// 3. SharedIds: the ids at the positions the server found in every party's fully blinded set.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cleave/psi/blinding_key.h"

namespace cleave::psi {

inline constexpr size_t kMaxPsiIds = 10'000'000;  // per party
inline constexpr size_t kMaxPsiIdBytes = 1024;

class PsiParticipant {
 public:
  // Duplicates are dropped. Throws UserError for an empty id, an id over kMaxPsiIdBytes or more
  // than kMaxPsiIds ids.
  PsiParticipant(std::vector<std::string> ids, BlindingKey key = BlindingKey::Random());

  const std::vector<std::string>& OwnBlindedSet() const { return own_blinded_; }
  std::vector<std::string> BlindOthers(const std::vector<std::string>& points) const;
  // Sorted ids at `positions` (into OwnBlindedSet). Throws InvalidInput for a position out of
  // range or named twice.
  std::vector<std::string> SharedIds(const std::vector<uint32_t>& positions) const;
  size_t size() const { return ids_.size(); }

 private:
  std::vector<std::string> ids_;  // distinct, in the secret order of own_blinded_
  BlindingKey key_;
  std::vector<std::string> own_blinded_;
};

}  // namespace cleave::psi
