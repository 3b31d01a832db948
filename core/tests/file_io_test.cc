#include <gtest/gtest.h>

#include <sys/stat.h>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "test_temp_dir.h"

namespace cleave {
namespace {

TEST(FileIoTest, AtomicWriteReplacesContentAndSetsExactMode) {
  testing::TempDir dir;
  const std::string path = dir.File("key.pem");
  const mode_t old_mask = ::umask(0);  // the exact mode must not depend on the umask
  ::umask(0077);
  WriteFileAtomic(path, "first", 0644);
  ::umask(old_mask);
  WriteFileAtomic(path, "second", 0600);
  EXPECT_EQ(ReadFile(path, "key"), "second");
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // No temporary files are left behind.
  int entries = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST(FileIoTest, MissingFileErrorNamesTheFileAndWhatItIs) {
  try {
    ReadFile("/nonexistent/cleave/data.csv", "CSV file");
    FAIL();
  } catch (const UserError& error) {
    EXPECT_STREQ(error.what(),
                 "cannot read CSV file '/nonexistent/cleave/data.csv': No such file or directory");
  }
}

TEST(FileIoTest, DirectoryIsNotAFile) {
  testing::TempDir dir;
  EXPECT_THROW(ReadFile(dir.path(), "checkpoint"), UserError);
}

TEST(FileIoTest, WriteIntoMissingDirectoryFailsAndNamesIt) {
  try {
    WriteFileAtomic("/nonexistent/cleave/out.json", "{}");
    FAIL();
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("/nonexistent/cleave/out.json"), std::string::npos);
  }
}

TEST(FileIoTest, FailedWriteKeepsThePreviousFile) {
  testing::TempDir dir;
  const std::string path = dir.File("state");
  WriteFileAtomic(path, "good");
  ::chmod(dir.path().c_str(), 0500);  // temp file cannot be created now
  if (::geteuid() != 0) {             // root ignores directory permissions
    EXPECT_THROW(WriteFileAtomic(path, "bad"), UserError);
  }
  ::chmod(dir.path().c_str(), 0700);
  EXPECT_EQ(ReadFile(path, "state"), "good");
}

}  // namespace
}  // namespace cleave
