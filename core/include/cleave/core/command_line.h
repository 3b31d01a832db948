// What every cleave binary does the same way at its edges: parse flags with CLI11 and turn
// errors into one line on stderr and an exit code (0 ok, 1 internal, 2 user error).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <optional>

#include "cleave/core/error.h"

namespace cleave {

// Parses argv. Returns an exit code when the program should stop now (0 after --help, 2 after
// a bad flag, reported as one line), or nullopt to go on.
inline std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s (see --help)\n", app.get_name().c_str(), e.what());
    return 2;
  }
}

// Runs a binary's body: UserError -> "<program>: error: ..." and 2; any other exception ->
// "<program>: internal error: ..." and 1. `body` may catch more specific errors itself.
template <typename Body>
int RunCommand(const char* program, Body&& body) {
  try {
    return body();
  } catch (const UserError& e) {
    std::fprintf(stderr, "%s: error: %s\n", program, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace cleave
