#include "cleave/psi/psi_participant.h"

#include <openssl/rand.h>

#include <algorithm>
#include <limits>

#include "cleave/core/error.h"
#include "cleave/psi/hash_to_curve.h"

namespace cleave::psi {
namespace {

// std::shuffle's random source from OpenSSL's generator: the order must not be guessable.
struct SecureBits {
  using result_type = uint64_t;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<uint64_t>::max(); }
  result_type operator()() {
    uint64_t value = 0;
    CLEAVE_ENFORCE(RAND_bytes(reinterpret_cast<unsigned char*>(&value), sizeof value) == 1,
                   "OpenSSL: RAND_bytes failed");
    return value;
  }
};

}  // namespace

PsiParticipant::PsiParticipant(std::vector<std::string> ids, BlindingKey key)
    : ids_(std::move(ids)), key_(std::move(key)) {
  std::sort(ids_.begin(), ids_.end());
  ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
  CLEAVE_CHECK_USER(ids_.size() <= kMaxPsiIds, "PSI: ", ids_.size(), " ids, at most ",
                    kMaxPsiIds, " allowed");
  for (const std::string& id : ids_) {
    CLEAVE_CHECK_USER(!id.empty(), "PSI: an id is empty");
    CLEAVE_CHECK_USER(id.size() <= kMaxPsiIdBytes, "PSI: an id is longer than ", kMaxPsiIdBytes,
                      " bytes");
  }
  SecureBits bits;
  std::shuffle(ids_.begin(), ids_.end(), bits);
  std::vector<std::string> hashed;
  hashed.reserve(ids_.size());
  for (const std::string& id : ids_) hashed.push_back(HashToCurve(id));
  own_blinded_ = key_.Blind(hashed);
}

std::vector<std::string> PsiParticipant::BlindOthers(const std::vector<std::string>& points) const {
  return key_.Blind(points);
}

std::vector<std::string> PsiParticipant::SharedIds(const std::vector<uint32_t>& positions) const {
  std::vector<bool> taken(ids_.size(), false);
  std::vector<std::string> shared;
  shared.reserve(positions.size());
  for (const uint32_t position : positions) {
    CLEAVE_CHECK_INPUT(position < ids_.size() && !taken[position], "PSI: result position ",
                       position, " is out of range or repeated");
    taken[position] = true;
    shared.push_back(ids_[position]);
  }
  std::sort(shared.begin(), shared.end());
  return shared;
}

}  // namespace cleave::psi
