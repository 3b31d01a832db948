#include "cleave/core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "cleave/core/error.h"

namespace cleave {

std::string ReadFile(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw UserError(detail::Concat("cannot read ", what, " '", path, "': ", std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) {
    throw UserError(detail::Concat("cannot read ", what, " '", path, "': is a directory"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw UserError(detail::Concat("cannot read ", what, " '", path, "': ", std::strerror(errno)));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) {
    throw UserError(detail::Concat("cannot read ", what, " '", path, "': read error"));
  }
  return buffer.str();
}

bool FileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

namespace {

std::string DirectoryOf(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

[[noreturn]] void ThrowWriteError(const std::string& path, const std::string& step, int error) {
  throw UserError(detail::Concat("cannot write '", path, "': ", step, ": ", std::strerror(error)));
}

// Closes and removes the temporary file after a failed step, keeping that step's errno.
[[noreturn]] void AbandonTemp(int fd, const std::string& temp, const std::string& path,
                              const std::string& step) {
  const int error = errno;
  if (fd >= 0) ::close(fd);
  ::unlink(temp.c_str());
  ThrowWriteError(path, step, error);
}

}  // namespace

void WriteFileAtomic(const std::string& path, const std::string& bytes, mode_t mode) {
  std::random_device entropy;
  const std::string temp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(entropy());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) ThrowWriteError(path, "create temporary file", errno);
  // open() applies the umask; set the exact mode asked for (0600 keys must not be wider).
  if (::fchmod(fd, mode) != 0) AbandonTemp(fd, temp, path, "chmod");
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      AbandonTemp(fd, temp, path, "write");
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) AbandonTemp(fd, temp, path, "fsync");
  if (::close(fd) != 0) AbandonTemp(-1, temp, path, "close");
  if (::rename(temp.c_str(), path.c_str()) != 0) AbandonTemp(-1, temp, path, "rename");
  // Make the rename itself durable.
  const int dir_fd = ::open(DirectoryOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace cleave
