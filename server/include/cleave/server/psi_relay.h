// The server's part of the private set intersection (psi/): a relay around the ring of parties.
// Party i (ring index: order of first submission) submits H(id)^k_i for its ids; the relay hands
// that set to party i+1, i+2, ... (mod N), each of which blinds it once more, until all N have;
// then it compares the N fully blinded sets and tells each party which positions of its own set
// are in all of them. It never holds a key: it sees only blinded points, which it cannot map to
// ids. It learns the sets' sizes and the intersection's (with three or more parties, also the
// sizes of the sub-intersections, since it holds every fully blinded set). Semi-honest parties
// are assumed: a party that does not blind what it is handed can make the result wrong, not read
// another party's ids. A plain class: the gRPC service only translates (grpc_server.cc).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cleave/protocol/cleave.pb.h"

namespace cleave::server {

struct PsiRelayOptions {
  int parties = 2;                                 // ring size, >= 2
  std::chrono::milliseconds max_wait{10000};       // longest PsiAwait before "nothing yet"
  int64_t max_points = 10'000'000;                 // per set
  // A run in which nothing happened for this long is abandoned (a party vanished) when a new
  // identity asks to join the full ring: the relay empties itself and the newcomer starts a run.
  std::chrono::milliseconds abandon_after{std::chrono::minutes(10)};
  std::function<std::chrono::steady_clock::time_point()> now = std::chrono::steady_clock::now;
};

class PsiRelay {
 public:
  // Throws UserError for fewer than 2 parties, a wait below 1 ms or max_points below 1.
  explicit PsiRelay(const PsiRelayOptions& options);

  // A party's own set (first call of an identity) or its answer to the set it was handed.
  // Refusals: another protocol version (kMismatch), a new identity when the ring is full and its
  // run not abandoned (kNotAllowed), points that are not whole 33-byte points or too many, hops other than 1 for an
  // own set, an answer that does not match the set handed out (InvalidInput).
  v1::PsiSubmitReply Submit(const std::string& identity, const v1::PsiSubmitRequest& request);

  // Waits up to max_wait (or the request's max_wait_ms, if shorter) for work for this party: the set handed out and not yet answered (again,
  // if the reply was lost), the next set to blind, or the result. Neither: an empty reply. An
  // identity that has not submitted its set is refused (kMismatch). When every party has its
  // result, the relay is empty again and a new intersection may start.
  v1::PsiAwaitReply Await(const std::string& identity, const v1::PsiAwaitRequest& request);

  // Finished intersections, and the size of the last one (logs and tests).
  int64_t runs_completed() const;
  int64_t last_intersection_size() const;

 private:
  struct Task {
    uint32_t owner = 0, hops = 0;
    std::string points;
  };
  struct Party {
    std::string identity;
    std::optional<Task> handed_out;
    bool result_delivered = false;
  };
  void Route(Task task);           // with mutex_ held
  void FinishIfComplete();         // with mutex_ held
  bool HasWork(size_t party) const;  // with mutex_ held
  v1::PsiAwaitReply TakeWork(size_t party);  // with mutex_ held
  uint32_t CountPoints(const std::string& points) const;
  void Reset();                    // with mutex_ held

  const PsiRelayOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Party> parties_;                // ring order
  std::map<std::string, size_t> index_;       // identity -> ring index
  std::vector<std::deque<Task>> queues_;      // sets waiting for each ring index
  std::vector<std::optional<std::string>> finals_;  // per owner, blinded by all
  std::vector<std::vector<uint32_t>> results_;      // per party, once all finals are in
  bool complete_ = false;
  std::chrono::steady_clock::time_point last_progress_;
  int64_t runs_completed_ = 0, last_intersection_size_ = -1;
};

}  // namespace cleave::server
