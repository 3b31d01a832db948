// Timestamped logging through spdlog; one call sets the format and level for a binary.
#pragma once

#include <string>

namespace cleave {

// level: "trace", "debug", "info", "warn", "error". Format: "2026-11-24 13:55:06.123 [info] msg".
void SetupLogging(const std::string& level = "info");

}  // namespace cleave
