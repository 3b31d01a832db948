#include "cleave/test_support/temp_dir.h"

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace cleave::test_support {

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "cleave_test_XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp " + pattern + ": " + std::strerror(errno));
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;  // a test that made a file unremovable must not abort the run
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace cleave::test_support
