// Whole-file reads with user-facing errors, and atomic writes (temp file + fsync + rename).
#pragma once

#include <string>
#include <sys/types.h>

namespace cleave {

// Reads the whole file. Throws UserError "cannot read <what> 'path': <reason>" on failure.
std::string ReadFile(const std::string& path, const std::string& what);

// Writes bytes to `path` atomically: a temp file in the same directory, fsync, rename, fsync of
// the directory. The file gets permission bits `mode` (e.g. 0600 for private keys). On failure
// the previous file, if any, is left untouched and UserError is thrown.
void WriteFileAtomic(const std::string& path, const std::string& bytes, mode_t mode = 0644);

bool FileExists(const std::string& path);

}  // namespace cleave
