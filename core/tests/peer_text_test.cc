#include "cleave/core/peer_text.h"

#include <gtest/gtest.h>

namespace cleave {
namespace {

TEST(PeerTextTest, PrintableTextIsKept) {
  EXPECT_EQ(PeerText("cnn cut 1 [1x28x28]"), "cnn cut 1 [1x28x28]");
}

TEST(PeerTextTest, NewlinesAndEscapesCannotForgeALine) {
  const std::string forged = "x\nclient 'st-mary' left\x1b[31m\\";
  const std::string safe = PeerText(forged);
  EXPECT_EQ(safe, "x\\x0aclient 'st-mary' left\\x1b[31m\\\\");
  EXPECT_EQ(safe.find('\n'), std::string::npos);
  EXPECT_EQ(safe.find('\x1b'), std::string::npos);
}

TEST(PeerTextTest, LongTextIsCappedSayingHowMuchWasCut) {
  const std::string big(8 << 20, 'a');
  const std::string safe = PeerText(big, 16);
  EXPECT_EQ(safe, std::string(16, 'a') + "...(+" + std::to_string((8 << 20) - 16) + " bytes)");
  EXPECT_LT(PeerText(big).size(), kMaxPeerTextBytes + 32);
}

TEST(PeerTextTest, NonAsciiBytesAreEscaped) {
  EXPECT_EQ(PeerText(std::string("\0\xff", 2)), "\\x00\\xff");
}

}  // namespace
}  // namespace cleave
