// The split configurations of Vepakomma et al. (2018) cleave runs, by name: what the server and
// the hospitals each hold. Parsed once from --config; advertised in the Join reply.
#pragma once

#include <string>

namespace cleave {

enum class SplitConfig {
  kVanilla,   // the hospital runs the bottom; the server the top, with the labels
  kUShaped,   // the hospital runs bottom and tail and keeps the labels; the server the middle
  kVertical,  // parties hold different features of the same samples
};

// "vanilla" (also ""), "u-shaped", "vertical". Throws UserError naming the valid ones otherwise.
SplitConfig ParseSplitConfig(const std::string& name);
const char* SplitConfigName(SplitConfig config);

}  // namespace cleave
