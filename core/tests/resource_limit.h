// Injected I/O failures that hold for root as well (root ignores permission bits, and CI runs as
// root): a lower limit on open files makes creating a file fail (EMFILE), a lower limit on file
// size makes writing past it fail (EFBIG). The previous limits are restored on scope exit.
#pragma once

#include <sys/resource.h>

#include <csignal>

namespace cleave::testing {

class ScopedResourceLimit {
 public:
  ScopedResourceLimit(int resource, rlim_t soft) : resource_(resource) {
    ::getrlimit(resource_, &previous_);
    rlimit lowered = previous_;
    lowered.rlim_cur = soft;
    ok_ = ::setrlimit(resource_, &lowered) == 0;
    // Writing past RLIMIT_FSIZE raises SIGXFSZ, which would end the test binary; ignored, the
    // write fails with EFBIG instead.
    if (resource_ == RLIMIT_FSIZE) previous_handler_ = std::signal(SIGXFSZ, SIG_IGN);
  }
  ~ScopedResourceLimit() {
    ::setrlimit(resource_, &previous_);
    if (resource_ == RLIMIT_FSIZE) std::signal(SIGXFSZ, previous_handler_);
  }
  ScopedResourceLimit(const ScopedResourceLimit&) = delete;
  ScopedResourceLimit& operator=(const ScopedResourceLimit&) = delete;
  bool ok() const { return ok_; }

 private:
  int resource_;
  rlimit previous_{};
  bool ok_ = false;
  void (*previous_handler_)(int) = SIG_DFL;
};

}  // namespace cleave::testing
