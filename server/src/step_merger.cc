#include "cleave/server/step_merger.h"

#include <algorithm>

#include "cleave/core/error.h"

namespace cleave::server {

using Clock = std::chrono::steady_clock;

namespace {

constexpr int64_t kMaxMergedBatch = int64_t{1} << 20;      // samples
constexpr std::chrono::microseconds kMaxMergeWait{1000000};  // 1 s

}  // namespace

void ValidateStepMergerOptions(const StepMergerOptions& options) {
  CLEAVE_CHECK_USER(options.max_batch >= 0 && options.max_batch <= kMaxMergedBatch,
                    "--merge-max-batch must be between 0 (off) and ", kMaxMergedBatch,
                    " samples, not ", options.max_batch);
  CLEAVE_CHECK_USER(options.max_wait.count() >= 0 && options.max_wait <= kMaxMergeWait,
                    "--merge-wait-us must be between 0 and ", kMaxMergeWait.count(),
                    " microseconds, not ", options.max_wait.count());
  CLEAVE_CHECK_USER(options.max_batch > 0 || options.max_wait.count() == 0,
                    "--merge-wait-us needs --merge-max-batch (merging is off)");
}

StepMerger::StepMerger(StepMergerOptions options, Runner runner,
                       std::function<size_t()> expected)
    : options_(options), runner_(std::move(runner)), expected_(std::move(expected)) {
  ValidateStepMergerOptions(options_);
  CLEAVE_CHECK_USER(options_.max_batch > 0, "a step merger needs --merge-max-batch > 0");
}

void StepMerger::Run(Entry& entry) {
  std::unique_lock<std::mutex> lock(mutex_);
  entry.arrived = Clock::now();
  queue_.push_back(&entry);
  queued_samples_ += entry.samples;
  changed_.notify_all();  // a leader may be waiting for company
  while (!entry.done) {
    if (!leading_ && !entry.taken) {
      Lead(lock);
    } else {
      changed_.wait(lock);
    }
  }
}

bool StepMerger::ReadyLocked(Clock::time_point now) const {
  if (running_ || queue_.empty()) return false;
  if (queued_samples_ >= options_.max_batch) return true;
  if (expected_ && queue_.size() >= expected_()) return true;
  return now >= queue_.front()->arrived + options_.max_wait;
}

std::vector<StepMerger::Entry*> StepMerger::TakeGroupLocked() {
  std::vector<Entry*> group;
  int64_t samples = 0;
  while (!queue_.empty()) {
    Entry* next = queue_.front();
    if (!group.empty() && samples + next->samples > options_.max_batch) break;
    next->taken = true;
    group.push_back(next);
    samples += next->samples;
    queued_samples_ -= next->samples;
    queue_.pop_front();
  }
  return group;
}

void StepMerger::Lead(std::unique_lock<std::mutex>& lock) {
  leading_ = true;
  while (!ReadyLocked(Clock::now())) {
    if (running_ || queue_.empty()) {
      changed_.wait(lock);  // the running group ends with a notification
    } else {
      changed_.wait_until(lock, queue_.front()->arrived + options_.max_wait);
    }
  }
  const std::vector<Entry*> group = TakeGroupLocked();
  leading_ = false;
  running_ = true;
  ++stats_.groups;
  if (group.size() > 1) ++stats_.merged_groups;
  stats_.entries += static_cast<int64_t>(group.size());
  stats_.largest_group = std::max<int64_t>(stats_.largest_group, static_cast<int64_t>(group.size()));
  changed_.notify_all();  // another waiting step may gather the next group meanwhile
  lock.unlock();
  try {
    runner_(group);
  } catch (...) {
    for (Entry* member : group) {
      if (!member->error) member->error = std::current_exception();
    }
  }
  lock.lock();
  running_ = false;
  for (Entry* member : group) member->done = true;
  changed_.notify_all();
}

StepMerger::Stats StepMerger::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace cleave::server
