// A fresh temporary directory for one test (mkdtemp under $TMPDIR or /tmp: unique across the
// processes ctest runs side by side), removed with everything in it when the object goes.
#pragma once

#include <filesystem>
#include <string>

namespace cleave::test_support {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // `name` inside the directory (not created).
  std::string File(const std::string& name) const { return (path_ / name).string(); }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace cleave::test_support
