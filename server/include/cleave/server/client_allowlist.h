// Which hospitals (certificate CNs) may join: the --clients file.
#pragma once

#include <set>
#include <string>

namespace cleave::server {

// Reads an allowlist file: one client name per line; blank lines and '#' comments ignored.
// Throws UserError naming the file (missing, or a name cleave-provision would not issue).
std::set<std::string> LoadClientAllowlist(const std::string& path);

}  // namespace cleave::server
