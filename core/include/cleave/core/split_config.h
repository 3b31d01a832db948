// Which split configuration a server and its clients run (Vepakomma et al. 2018): vanilla (the
// server holds the top and the labels), U-shaped (the hospital keeps the tail and the labels) or
// vertical (parties hold different features of the same samples). Both ends name it (--config);
// the server advertises it at Join and a client of another configuration is refused there.
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
