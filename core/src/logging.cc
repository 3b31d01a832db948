#include "cleave/core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cleave/core/error.h"

namespace cleave {

void SetupLogging(const std::string& level) {
  // Logs go to stderr so that stdout stays for results and progress lines.
  auto logger = spdlog::stderr_color_mt("cleave");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e [%^%l%$] %v");
  const auto parsed = spdlog::level::from_str(level);
  CLEAVE_CHECK_USER(parsed != spdlog::level::off || level == "off", "unknown log level '", level,
                    "' (use trace, debug, info, warn, error)");
  spdlog::set_level(parsed);
}

}  // namespace cleave
