// The server's sessions: who holds which session id, since when it last called, what it sent and
// received. A session belongs to the identity that opened it (only that identity may use or end
// it); an identity holds at most `max_per_identity` (a new one replaces the oldest); sessions
// idle past a cutoff are released by the caller's clock. Thread-safe; no networking, no model.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace cleave::server {

struct Session {
  std::string identity;
  std::chrono::steady_clock::time_point last_call;
  uint64_t created = 0;  // order of opening: the oldest of an identity is replaced first
  int64_t steps = 0;
  int64_t samples = 0;
  int64_t bytes_received = 0;  // protobuf bytes of this client's requests
  int64_t bytes_sent = 0;      // protobuf bytes of the replies to it
};

class SessionTable {
 public:
  using Clock = std::chrono::steady_clock;
  explicit SessionTable(int max_per_identity);

  struct Opened {
    std::string id;
    int replaced = 0;  // sessions of the same identity it replaced
  };
  Opened Open(const std::string& identity, Clock::time_point now);
  // The session, marked as active at `now`. Throws Refusal: kUnknownSession for an
  // unknown (or expired) id, kNotAllowed for another identity's.
  Session Touch(const std::string& identity, const std::string& id, Clock::time_point now);
  bool Contains(const std::string& id) const;
  // Adds a call's figures to the session, if it still exists.
  void Count(const std::string& id, int64_t steps, int64_t samples, int64_t received,
             int64_t sent);
  // Ends the session if `identity` owns it; returns it.
  std::optional<Session> Release(const std::string& identity, const std::string& id);
  // Ends the sessions whose last call was before `cutoff`; returns them.
  std::vector<Session> ExpireBefore(Clock::time_point cutoff);

  size_t size() const;
  int64_t identities() const;  // distinct identities with a session
  int64_t expired() const;     // sessions ExpireBefore ended, since start
  int64_t replaced() const;    // sessions a newer Open of the same identity replaced
  // Waits until exactly `count` sessions are open; false on timeout.
  bool WaitForSize(size_t count, std::chrono::milliseconds timeout) const;

 private:
  const int max_per_identity_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::map<std::string, Session> sessions_;
  uint64_t opened_ = 0;
  int64_t expired_ = 0;
  int64_t replaced_ = 0;
};

}  // namespace cleave::server
