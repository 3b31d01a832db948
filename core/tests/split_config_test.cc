#include "cleave/core/split_config.h"

#include <gtest/gtest.h>

#include "cleave/core/error.h"

namespace cleave {
namespace {

TEST(SplitConfigTest, NamesRoundTrip) {
  for (SplitConfig config :
       {SplitConfig::kVanilla, SplitConfig::kUShaped, SplitConfig::kVertical}) {
    EXPECT_EQ(ParseSplitConfig(SplitConfigName(config)), config);
  }
}

TEST(SplitConfigTest, EmptyIsVanilla) { EXPECT_EQ(ParseSplitConfig(""), SplitConfig::kVanilla); }

TEST(SplitConfigTest, UnknownNameIsAUserErrorNamingTheValidOnes) {
  try {
    ParseSplitConfig("horizontal");
    FAIL() << "no error";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("vanilla, u-shaped or vertical"), std::string::npos);
  }
}

}  // namespace
}  // namespace cleave
