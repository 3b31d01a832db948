// cleave_psi: RFC 9380 vectors, blinding, the intersection for 2 and 3 parties (random sets with
// a known overlap, duplicates, empty sets), and what each party sees.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/psi/blinding_key.h"
#include "cleave/psi/hash_to_curve.h"
#include "cleave/psi/psi_intersection.h"
#include "cleave/psi/psi_participant.h"

namespace cleave::psi {
namespace {

std::string Hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char byte : bytes) {
    out += digits[byte >> 4];
    out += digits[byte & 15];
  }
  return out;
}

TEST(HashToCurve, ExpandMessageXmdMatchesRfc9380AppendixK1) {
  const std::string dst = "QUUX-V01-CS02-with-expander-SHA256-128";
  EXPECT_EQ(Hex(ExpandMessageXmd("", dst, 32)),
            "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235");
  EXPECT_EQ(Hex(ExpandMessageXmd("abc", dst, 32)),
            "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615");
  EXPECT_EQ(ExpandMessageXmd("abc", dst, 123).size(), 123u);
  EXPECT_THROW(ExpandMessageXmd("abc", "", 32), InvalidInput);
  EXPECT_THROW(ExpandMessageXmd("abc", dst, 256 * 32), InvalidInput);
}

TEST(HashToCurve, MatchesRfc9380AppendixJ11) {
  const std::string dst = "QUUX-V01-CS02-with-P256_XMD:SHA-256_SSWU_RO_";
  std::string x, y;
  PointCoordinatesHex(HashToCurve("", dst), &x, &y);
  EXPECT_EQ(x, "2c15230b26dbc6fc9a37051158c95b79656e17a1a920b11394ca91c44247d3e4");
  EXPECT_EQ(y, "8a7a74985cc5c776cdfe4b1f19884970453912e9d31528c060be9ab5c43e8415");
  PointCoordinatesHex(HashToCurve("abc", dst), &x, &y);
  EXPECT_EQ(x, "0bb8b87485551aa43ed54f009230450b492fead5f1cc91658775dac4a3388a0f");
  EXPECT_EQ(y, "5c41b3d0731a27a7b14bc0bf0ccded2d8751f83493404c84a88e71ffd424212e");
  // cleave's own domain separates its points from any other use of the same ids.
  EXPECT_NE(HashToCurve("abc"), HashToCurve("abc", dst));
  EXPECT_EQ(HashToCurve("patient-17").size(), kPointBytes);
}

TEST(BlindingKey, CommutesAndRefusesBadPoints) {
  const BlindingKey a = BlindingKey::Random(), b = BlindingKey::Random();
  const std::vector<std::string> h = {HashToCurve("x"), HashToCurve("y")};
  EXPECT_EQ(a.Blind(b.Blind(h)), b.Blind(a.Blind(h)));
  EXPECT_NE(a.Blind(h), b.Blind(h));
  EXPECT_EQ(BlindingKey::FromBytes(std::string(1, '\1')).Blind(h), h);  // k = 1
  EXPECT_THROW(BlindingKey::FromBytes(std::string(1, '\0')), InvalidInput);
  EXPECT_THROW(BlindingKey::FromBytes(std::string(32, '\xff')), InvalidInput);  // >= n
  std::string bad = h[0];
  bad[0] = 4;  // not a compressed point
  EXPECT_THROW(a.Blind({bad}), InvalidInput);
  EXPECT_THROW(a.Blind({h[0].substr(1)}), InvalidInput);
  std::string off_curve(kPointBytes, '\xff');  // x >= p
  off_curve[0] = 2;
  EXPECT_THROW(a.Blind({h[0], off_curve}), InvalidInput);
}

TEST(PsiParticipant, SameIdBlindedByDifferentPartiesDiffers) {
  const PsiParticipant alice({"id-1"}), bob({"id-1"});
  ASSERT_EQ(alice.OwnBlindedSet().size(), 1u);
  EXPECT_NE(alice.OwnBlindedSet()[0], bob.OwnBlindedSet()[0]);
  EXPECT_NE(alice.OwnBlindedSet()[0], HashToCurve("id-1"));
  // ... and equal once each has blinded the other's.
  EXPECT_EQ(bob.BlindOthers(alice.OwnBlindedSet()), alice.BlindOthers(bob.OwnBlindedSet()));
}

TEST(PsiParticipant, DropsDuplicatesAndChecksIdsAndPositions) {
  const PsiParticipant party({"b", "a", "b", "c", "a"});
  EXPECT_EQ(party.size(), 3u);
  EXPECT_EQ(party.OwnBlindedSet().size(), 3u);
  EXPECT_EQ(party.SharedIds({2, 0, 1}), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_THROW(party.SharedIds({3}), InvalidInput);
  EXPECT_THROW(party.SharedIds({1, 1}), InvalidInput);
  EXPECT_THROW(PsiParticipant({"a", ""}), UserError);
  EXPECT_THROW(PsiParticipant({std::string(kMaxPsiIdBytes + 1, 'x')}), UserError);
}

TEST(PsiIntersection, PositionsOfPointsInEverySet) {
  const auto positions = IntersectionPositions({{"p", "q", "r"}, {"r", "s", "p"}, {"p", "r"}});
  EXPECT_EQ(positions, (std::vector<std::vector<uint32_t>>{{0, 2}, {0, 2}, {0, 1}}));
  EXPECT_EQ(IntersectionPositions({{"p", "q"}, {}})[0], std::vector<uint32_t>{});
  // A point in two of three sets is not shared.
  EXPECT_EQ(IntersectionPositions({{"q"}, {"q"}, {"r"}})[0], std::vector<uint32_t>{});
}

// The ring run in memory, exactly as the relay routes it: owner j's set is blinded by j, j+1,
// ..., j-1 (mod N); every point a party is handed to blind is recorded as what it received.
struct RingRun {
  std::vector<std::vector<std::string>> shared;    // per party, as it would write them
  std::vector<std::vector<std::string>> received;  // per party, every point it was handed
  std::vector<std::vector<uint32_t>> positions;    // per party, what the relay returned
};

RingRun RunRing(const std::vector<PsiParticipant>& parties) {
  const size_t n = parties.size();
  RingRun run;
  run.received.resize(n);
  std::vector<std::vector<std::string>> finals(n);
  for (size_t owner = 0; owner < n; ++owner) {
    std::vector<std::string> points = parties[owner].OwnBlindedSet();
    for (size_t hop = 1; hop < n; ++hop) {
      const size_t blinder = (owner + hop) % n;
      run.received[blinder].insert(run.received[blinder].end(), points.begin(), points.end());
      points = parties[blinder].BlindOthers(points);
    }
    finals[owner] = points;
  }
  run.positions = IntersectionPositions(finals);
  for (size_t i = 0; i < n; ++i) run.shared.push_back(parties[i].SharedIds(run.positions[i]));
  return run;
}

// Sets drawn from a universe of ids with `common` ids in all of them; each party adds ids of its
// own, some in another party's set too (so pairwise overlaps differ from the full one).
std::vector<std::vector<std::string>> RandomSets(size_t parties, size_t common, size_t own,
                                                 uint64_t seed,
                                                 std::vector<std::string>* expected) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<std::string>> sets(parties);
  expected->clear();
  for (size_t i = 0; i < common; ++i) {
    const std::string id = "shared-" + std::to_string(rng() % 1000000) + "-" + std::to_string(i);
    expected->push_back(id);
    for (auto& set : sets) set.push_back(id);
  }
  for (size_t p = 0; p < parties; ++p) {
    for (size_t i = 0; i < own; ++i) {
      const std::string id = "p" + std::to_string(p) + "-" + std::to_string(i);
      sets[p].push_back(id);
      if (parties > 2 && i % 3 == 0) sets[(p + 1) % parties].push_back(id);  // not in all
    }
  }
  for (auto& set : sets) {
    if (!set.empty()) set.push_back(set.front());  // a duplicate
    std::shuffle(set.begin(), set.end(), rng);
  }
  std::sort(expected->begin(), expected->end());
  return sets;
}

// The ids among `universe` a party holding `key` can map a received point to: a point equal to
// an id's hash, or to the hash blinded with its own key.
std::set<std::string> MappableIds(const std::vector<std::string>& received,
                                  const std::set<std::string>& universe, const BlindingKey& key) {
  const std::set<std::string> seen(received.begin(), received.end());
  std::set<std::string> mapped;
  for (const std::string& id : universe) {
    const std::string hashed = HashToCurve(id);
    if (seen.count(hashed) > 0 || seen.count(key.Blind({hashed})[0]) > 0) mapped.insert(id);
  }
  return mapped;
}

class PsiRingTest : public ::testing::TestWithParam<size_t> {};

TEST_P(PsiRingTest, IntersectionIsRightAndNothingElseCanBeMapped) {
  const size_t n = GetParam();
  std::vector<std::string> expected;
  const auto sets = RandomSets(n, 25, 40, 7 + n, &expected);
  std::vector<PsiParticipant> parties;
  std::vector<BlindingKey> keys;
  for (const auto& set : sets) {
    keys.push_back(BlindingKey::Random());
    parties.emplace_back(set, keys.back());
  }
  const RingRun run = RunRing(parties);
  std::set<std::string> universe;
  for (const auto& set : sets) universe.insert(set.begin(), set.end());
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(run.shared[i], expected) << "party " << i;
    // Everything party i was handed, tried against every id it might guess (all ids of all
    // parties), hashed, and hashed and blinded with its own key: nothing matches.
    EXPECT_TRUE(MappableIds(run.received[i], universe, keys[i]).empty()) << "party " << i;
    const std::set<std::string> seen(run.received[i].begin(), run.received[i].end());
    EXPECT_EQ(seen.size(), run.received[i].size());  // no repeated point tells equal ids apart
    // What it was told (positions) names exactly the shared ids.
    EXPECT_EQ(run.positions[i].size(), expected.size());
  }
}

INSTANTIATE_TEST_SUITE_P(Parties, PsiRingTest, ::testing::Values(2, 3, 4));

TEST(PsiRing, EmptyAndDisjointSets) {
  std::vector<PsiParticipant> parties;
  parties.emplace_back(std::vector<std::string>{"a", "b"});
  parties.emplace_back(std::vector<std::string>{});
  RingRun run = RunRing(parties);
  EXPECT_TRUE(run.shared[0].empty());
  EXPECT_TRUE(run.shared[1].empty());
  parties.clear();
  parties.emplace_back(std::vector<std::string>{"a", "b"});
  parties.emplace_back(std::vector<std::string>{"c"});
  parties.emplace_back(std::vector<std::string>{"a", "b", "c"});
  run = RunRing(parties);
  for (const auto& shared : run.shared) EXPECT_TRUE(shared.empty());
}

// The no-leak check above can fail: a relay that handed a party another's points unblinded, or
// blinded only by the receiver's own key, is caught by the same comparison.
TEST(PsiRing, TheLeakCheckCatchesAnUnblindedRelay) {
  const BlindingKey mine = BlindingKey::Random(), other = BlindingKey::Random();
  const std::set<std::string> universe = {"a", "b", "c", "d"};
  const std::vector<std::string> leaky = {HashToCurve("a"), mine.Blind({HashToCurve("b")})[0],
                                          other.Blind({HashToCurve("c")})[0]};
  EXPECT_EQ(MappableIds(leaky, universe, mine), (std::set<std::string>{"a", "b"}));
}

}  // namespace
}  // namespace cleave::psi
