#include "cleave/client/progress.h"

#include <unistd.h>

#include "cleave/core/error.h"

namespace cleave::client {

ProgressMode ParseProgressMode(const std::string& text) {
  if (text == "auto") return ProgressMode::kAuto;
  if (text == "bar") return ProgressMode::kBar;
  if (text == "lines") return ProgressMode::kLines;
  if (text == "none") return ProgressMode::kNone;
  throw UserError("unknown progress mode '" + text + "' (use auto, bar, lines, none)");
}

std::string HumanBytes(int64_t bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1000 && unit < 4) {
    value /= 1000;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), unit == 0 ? "%.0f %s" : "%.2f %s", value, units[unit]);
  return buffer;
}

ProgressReporter::ProgressReporter(ProgressMode mode, std::FILE* out, double line_interval_seconds)
    : mode_(mode), out_(out), line_interval_seconds_(line_interval_seconds) {
  if (mode_ == ProgressMode::kAuto) {
    mode_ = ::isatty(::fileno(out_)) ? ProgressMode::kBar : ProgressMode::kLines;
  }
}

void ProgressReporter::StartEpoch(int64_t epoch, int64_t epochs, int64_t total_steps,
                                  const char* unit) {
  unit_ = unit;
  epoch_ = epoch;
  epochs_ = epochs;
  total_steps_ = total_steps;
  last_step_ = 0;
  last_print_ = std::chrono::steady_clock::now();
}

std::string ProgressReporter::Format(int64_t step, const ProgressStats& stats) const {
  char position[96];
  const std::string of_epochs = epochs_ > 0 ? "/" + std::to_string(epochs_) : "";
  const std::string of_steps = total_steps_ > 0 ? "/" + std::to_string(total_steps_) : "";
  std::snprintf(position, sizeof(position), "%s %lld%s step %lld%s", unit_.c_str(),
                static_cast<long long>(epoch_), of_epochs.c_str(), static_cast<long long>(step),
                of_steps.c_str());
  char quality[64] = "no labels here (vertical)";
  if (stats.has_loss) {
    std::snprintf(quality, sizeof(quality), "loss %.4f acc %.2f%%", stats.loss,
                  100.0 * stats.accuracy);
  }
  char buffer[320];
  std::snprintf(buffer, sizeof(buffer), "%s %s %.0f samples/s sent %s recv %s density %.3f",
                position, quality, stats.samples_per_second,
                HumanBytes(stats.bytes_sent).c_str(), HumanBytes(stats.bytes_received).c_str(),
                stats.density);
  return buffer;
}

void ProgressReporter::Update(int64_t step, const ProgressStats& stats) {
  last_step_ = step;
  if (mode_ == ProgressMode::kNone) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_print_).count();
  if (mode_ == ProgressMode::kBar) {
    if (since < 0.1 && step != total_steps_) return;  // redraw at most 10 times a second
    const int width = 24;
    const int filled = total_steps_ > 0 ? static_cast<int>(width * step / total_steps_) : 0;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    std::fprintf(out_, "\r[%s] %s\033[K", bar.c_str(), Format(step, stats).c_str());
    std::fflush(out_);
    last_print_ = now;
  } else if (since >= line_interval_seconds_) {
    std::fprintf(out_, "%s\n", Format(step, stats).c_str());
    std::fflush(out_);
    last_print_ = now;
  }
}

void ProgressReporter::FinishEpoch(const ProgressStats& stats) {
  if (mode_ == ProgressMode::kNone) return;
  if (mode_ == ProgressMode::kBar) std::fprintf(out_, "\r\033[K");
  std::fprintf(out_, "%s\n", Format(last_step_, stats).c_str());
  std::fflush(out_);
}

}  // namespace cleave::client
