// A live progress line for long work: a redrawn bar on a terminal, plain periodic lines otherwise.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace cleave::client {

struct ProgressStats {
  double loss = 0;      // running mean over the epoch so far
  double accuracy = 0;  // running mean over the epoch so far
  double samples_per_second = 0;
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  double density = 1.0;  // fraction of activation elements sent
  // False for a vertical party without the labels: it learns no loss and no accuracy.
  bool has_loss = true;
};

enum class ProgressMode { kAuto, kBar, kLines, kNone };
ProgressMode ParseProgressMode(const std::string& text);  // "auto", "bar", "lines", "none"

class ProgressReporter {
 public:
  ProgressReporter(ProgressMode mode, std::FILE* out = stdout, double line_interval_seconds = 10);
  // `epochs` 0: no known end; `total_steps` 0: not known in advance. `unit` names what is
  // counted ("epoch", "round").
  void StartEpoch(int64_t epoch, int64_t epochs, int64_t total_steps, const char* unit = "epoch");
  void Update(int64_t step, const ProgressStats& stats);
  void FinishEpoch(const ProgressStats& stats);

 private:
  std::string Format(int64_t step, const ProgressStats& stats) const;

  ProgressMode mode_;
  std::FILE* out_;
  double line_interval_seconds_;
  int64_t epoch_ = 0, epochs_ = 0, total_steps_ = 0, last_step_ = 0;
  std::string unit_ = "epoch";
  std::chrono::steady_clock::time_point last_print_;
};

// "1.23 MB"
std::string HumanBytes(int64_t bytes);

}  // namespace cleave::client
