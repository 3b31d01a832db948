#include "cleave/core/split_config.h"

#include "cleave/core/error.h"

namespace cleave {

SplitConfig ParseSplitConfig(const std::string& name) {
  if (name.empty() || name == "vanilla") return SplitConfig::kVanilla;
  if (name == "u-shaped") return SplitConfig::kUShaped;
  if (name == "vertical") return SplitConfig::kVertical;
  throw UserError("unknown split configuration '" + name + "' (use vanilla, u-shaped or vertical)");
}

const char* SplitConfigName(SplitConfig config) {
  switch (config) {
    case SplitConfig::kVanilla:
      return "vanilla";
    case SplitConfig::kUShaped:
      return "u-shaped";
    case SplitConfig::kVertical:
      return "vertical";
  }
  return "vanilla";
}

}  // namespace cleave
