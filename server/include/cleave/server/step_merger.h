// Merges the training steps of hospitals waiting at the same time into one step of the top model
// (one forward/backward pass and one optimizer step over their batches concatenated).
// Leader/follower, no thread of its own: a step that arrives while no group is being gathered
// leads the next group. The leader waits until the queued steps reach `max_batch` samples, or
// until every expected hospital (`expected`, e.g. the open sessions) has a step queued, or until
// `max_wait` has passed since the first queued step arrived; and while a group is running it
// keeps gathering (a step queued then would wait for the model anyway). It then takes steps from
// the front of the queue up to `max_batch` samples (at least one, however large) and runs them
// with the runner, on its own thread; the others wait for their group. Only a step still queued
// leads (one whose group is running only waits for it). The runner is expected to
// record each step's outcome in it (its own error included); an exception it lets escape is
// given to every step of the group. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <vector>

namespace cleave::server {

struct StepMergerOptions {
  int64_t max_batch = 0;  // samples in a merged step; 0: merging off
  std::chrono::microseconds max_wait{0};  // longest the first queued step waits for company
};

// Checks the options (UserError naming the flag: --merge-max-batch, --merge-wait-us).
void ValidateStepMergerOptions(const StepMergerOptions& options);

class StepMerger {
 public:
  // A step waiting to be merged; callers derive their own step from it.
  struct Entry {
    explicit Entry(int64_t samples_) : samples(samples_) {}
    virtual ~Entry() = default;
    const int64_t samples;
    std::exception_ptr error;  // set by the runner (or the merger) when the step failed
   private:
    friend class StepMerger;
    std::chrono::steady_clock::time_point arrived;
    bool taken = false;  // into a group
    bool done = false;
  };
  using Runner = std::function<void(const std::vector<Entry*>& group)>;
  // `expected`: how many hospitals may send a step (null: unknown, wait the full max_wait).
  StepMerger(StepMergerOptions options, Runner runner, std::function<size_t()> expected = nullptr);
  StepMerger(const StepMerger&) = delete;
  StepMerger& operator=(const StepMerger&) = delete;

  // Queues `entry` and returns once its group has run (its outcome is in it).
  void Run(Entry& entry);

  struct Stats {
    int64_t groups = 0;         // runner calls
    int64_t merged_groups = 0;  // of which with two steps or more
    int64_t entries = 0;
    int64_t largest_group = 0;  // steps
  };
  Stats stats() const;

 private:
  // Leads one group (called with the lock held, returns with it held).
  void Lead(std::unique_lock<std::mutex>& lock);
  // Whether the leader may take its group now; else until when it may wait.
  bool ReadyLocked(std::chrono::steady_clock::time_point now) const;
  // Up to max_batch samples from the front of the queue (at least one step).
  std::vector<Entry*> TakeGroupLocked();

  const StepMergerOptions options_;
  const Runner runner_;
  const std::function<size_t()> expected_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Entry*> queue_;
  int64_t queued_samples_ = 0;
  bool leading_ = false;  // a leader is gathering a group
  bool running_ = false;  // a group is running
  Stats stats_;
};

}  // namespace cleave::server
