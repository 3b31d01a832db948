// Vertical split learning: the parties of one step meet here. Each party's call brings its
// contribution under the step's key and blocks; the last to arrive runs the step once, on all
// contributions in party order, and every party leaves with its own result (or the step's
// error). A step whose parties have not all arrived `timeout` after the first one fails for the
// ones waiting with Refusal kPartyMissing naming who is missing; the server goes on serving.
// Plain C++, no networking, thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/server/refusal.h"

namespace cleave::server {

template <typename In, typename Out>
class PartyRendezvous {
 public:
  // Runs the step: one In per party, in party order; returns one Out per party.
  using Compute = std::function<std::vector<Out>(std::vector<In>& contributions)>;

  // `what` names the steps in errors ("step", "evaluation batch").
  PartyRendezvous(int parties, std::chrono::milliseconds timeout, std::string what)
      : parties_(parties), timeout_(timeout), what_(std::move(what)) {
    CLEAVE_CHECK_USER(parties >= 1, "a vertical server needs at least one party");
  }

  // Blocks until every party brought its contribution to `key` (the last one runs `compute`)
  // or the timeout; rethrows what `compute` threw, to every party.
  Out Meet(int64_t key, int party, In contribution, const Compute& compute) {
    CLEAVE_ENFORCE(party >= 0 && party < parties_, "party ", party, " out of range");
    std::unique_lock<std::mutex> lock(mutex_);
    std::shared_ptr<Slot> slot = SlotFor(key);
    if (slot->in[party]) {
      throw Refusal(RefusalKind::kMismatch,
                    detail::Concat("party ", party, " sent ", what_, " ", key, " twice"));
    }
    slot->in[party] = std::move(contribution);
    if (++slot->arrived == parties_) {
      slots_.erase(key);
      lock.unlock();
      Run(*slot, compute);
      lock.lock();
      slot->done = true;
      changed_.notify_all();
    } else if (!changed_.wait_until(lock, slot->first + timeout_, [&] { return slot->done; })) {
      Abandon(key, slot);
    }
    if (slot->error) std::rethrow_exception(slot->error);
    return std::move(slot->out[party]);
  }

  // Steps started and not yet complete (tests).
  size_t pending() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return slots_.size();
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Slot {
    std::vector<std::optional<In>> in;
    std::vector<Out> out;
    std::exception_ptr error;
    int arrived = 0;
    bool done = false;
    Clock::time_point first;
  };

  std::shared_ptr<Slot> SlotFor(int64_t key) {
    std::shared_ptr<Slot>& slot = slots_[key];
    if (!slot) {
      slot = std::make_shared<Slot>();
      slot->in.resize(parties_);
      slot->first = Clock::now();
    }
    return slot;
  }

  void Run(Slot& slot, const Compute& compute) {
    try {
      std::vector<In> all;
      all.reserve(parties_);
      for (std::optional<In>& in : slot.in) all.push_back(std::move(*in));
      slot.out = compute(all);
      CLEAVE_ENFORCE(static_cast<int>(slot.out.size()) == parties_, "one result per party");
    } catch (...) {
      slot.error = std::current_exception();
    }
  }

  // The deadline passed with parties missing: the step fails for those waiting (under the lock).
  void Abandon(int64_t key, const std::shared_ptr<Slot>& slot) {
    std::string missing;
    for (int p = 0; p < parties_; ++p) {
      if (!slot->in[p]) missing += (missing.empty() ? "" : ", ") + std::to_string(p);
    }
    slot->error = std::make_exception_ptr(
        Refusal(RefusalKind::kPartyMissing,
                detail::Concat(what_, " ", key, ": party ", missing, " sent nothing within ",
                               timeout_.count(), " ms; this ", what_, " is abandoned")));
    slot->done = true;
    auto found = slots_.find(key);
    if (found != slots_.end() && found->second == slot) slots_.erase(found);
    changed_.notify_all();
  }

  const int parties_;
  const std::chrono::milliseconds timeout_;
  const std::string what_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::map<int64_t, std::shared_ptr<Slot>> slots_;
};

}  // namespace cleave::server
