#include "cleave/core/file_io.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <ios>

#include "cleave/core/error.h"
#include "cleave/test_support/temp_dir.h"
#include "resource_limit.h"

namespace cleave {
namespace {

int Entries(const test_support::TempDir& dir) {
  int entries = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    ++entries;
  }
  return entries;
}

// open() applies the umask, which can only remove bits: the exact mode asked for needs the
// fchmod. A private file under a umask that removes the owner's write bit, and a certificate under
// a umask that removes everyone else's read bit, each get exactly the mode asked for.
TEST(FileIoTest, ANewFileGetsExactlyItsModeWhateverTheUmask) {
  test_support::TempDir dir;
  struct Case {
    mode_t umask;
    mode_t mode;
    const char* name;
  };
  for (const Case& c :
       {Case{0277, 0600, "key.pem"}, Case{0077, 0644, "cert.pem"}, Case{0, 0600, "open.key"}}) {
    const std::string path = dir.File(c.name);
    const mode_t previous = ::umask(c.umask);
    WriteFileAtomic(path, "new", c.mode);
    ::umask(previous);
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, c.mode) << c.name << " under umask 0" << std::oct << c.umask;
  }
}

TEST(FileIoTest, AtomicWriteReplacesContentAndSetsExactMode) {
  test_support::TempDir dir;
  const std::string path = dir.File("key.pem");
  WriteFileAtomic(path, "first", 0644);
  const mode_t previous = ::umask(0277);
  WriteFileAtomic(path, "second", 0600);
  ::umask(previous);
  EXPECT_EQ(ReadFile(path, "key"), "second");
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // No temporary files are left behind.
  EXPECT_EQ(Entries(dir), 1);
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
  test_support::TempDir dir;
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

// The failures are injected through process limits, which bind root too.
TEST(FileIoTest, AFileThatCannotBeCreatedKeepsThePreviousOne) {
  test_support::TempDir dir;
  const std::string path = dir.File("state");
  WriteFileAtomic(path, "good");
  {
    testing::ScopedResourceLimit no_more_files(RLIMIT_NOFILE, 3);  // stdin, stdout, stderr
    ASSERT_TRUE(no_more_files.ok());
    try {
      WriteFileAtomic(path, "bad");
      ADD_FAILURE() << "the write succeeded without a file descriptor";
    } catch (const UserError& error) {
      EXPECT_NE(std::string(error.what()).find("create temporary file"), std::string::npos)
          << error.what();
    }
  }
  EXPECT_EQ(ReadFile(path, "state"), "good");
  EXPECT_EQ(Entries(dir), 1);
}

TEST(FileIoTest, AWriteThatFailsHalfwayKeepsThePreviousFileAndLeavesNoTemporary) {
  test_support::TempDir dir;
  const std::string path = dir.File("state");
  WriteFileAtomic(path, "good");
  {
    testing::ScopedResourceLimit small_files(RLIMIT_FSIZE, 16);
    ASSERT_TRUE(small_files.ok());
    try {
      WriteFileAtomic(path, std::string(4096, 'x'));
      ADD_FAILURE() << "a write past the file size limit succeeded";
    } catch (const UserError& error) {
      EXPECT_NE(std::string(error.what()).find("write"), std::string::npos) << error.what();
    }
  }
  EXPECT_EQ(ReadFile(path, "state"), "good");
  EXPECT_EQ(Entries(dir), 1);
}

}  // namespace
}  // namespace cleave
