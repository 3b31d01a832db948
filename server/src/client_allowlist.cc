#include "cleave/server/client_allowlist.h"

#include <cctype>
#include <sstream>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace cleave::server {

std::set<std::string> LoadClientAllowlist(const std::string& path) {
  std::istringstream lines(ReadFile(path, "client allowlist"));
  std::set<std::string> names;
  std::string line;
  int number = 0;
  while (std::getline(lines, line)) {
    ++number;
    const auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    const auto begin = line.find_first_not_of(" \t\r");
    if (begin == std::string::npos) continue;
    const auto end = line.find_last_not_of(" \t\r");
    const std::string name = line.substr(begin, end - begin + 1);
    for (char c : name) {
      CLEAVE_CHECK_USER(
          std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-',
          "client allowlist '", path, "' line ", number, ": '", name, "' is not a client name");
    }
    names.insert(name);
  }
  CLEAVE_CHECK_USER(!names.empty(), "client allowlist '", path, "' names no client");
  return names;
}

}  // namespace cleave::server
