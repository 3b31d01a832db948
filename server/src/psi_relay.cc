#include "cleave/server/psi_relay.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <string_view>

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"
#include "cleave/protocol/version.h"
#include "cleave/psi/hash_to_curve.h"
#include "cleave/psi/psi_intersection.h"
#include "cleave/server/client_admission.h"
#include "cleave/server/refusal.h"

namespace cleave::server {
namespace {

std::vector<std::string> SplitPoints(const std::string& points) {
  std::vector<std::string> out;
  out.reserve(points.size() / psi::kPointBytes);
  for (size_t at = 0; at < points.size(); at += psi::kPointBytes) {
    out.push_back(points.substr(at, psi::kPointBytes));
  }
  return out;
}

}  // namespace

PsiRelay::PsiRelay(const PsiRelayOptions& options)
    : options_(options),
      queues_(static_cast<size_t>(std::max(options.parties, 0))),
      finals_(static_cast<size_t>(std::max(options.parties, 0))) {
  CLEAVE_CHECK_USER(options.parties >= 2, "a private set intersection needs at least 2 parties");
  CLEAVE_CHECK_USER(options.max_wait.count() >= 1, "the PSI wait must be at least 1 ms");
  CLEAVE_CHECK_USER(options.max_points >= 1, "the PSI set limit must be at least 1");
}

uint32_t PsiRelay::CountPoints(const std::string& points) const {
  CLEAVE_CHECK_INPUT(points.size() % psi::kPointBytes == 0, "PSI: ", points.size(),
                     " bytes are not whole ", psi::kPointBytes, "-byte points");
  const size_t count = points.size() / psi::kPointBytes;
  CLEAVE_CHECK_INPUT(static_cast<int64_t>(count) <= options_.max_points, "PSI: ", count,
                     " points, at most ", options_.max_points, " allowed");
  return static_cast<uint32_t>(count);
}

v1::PsiSubmitReply PsiRelay::Submit(const std::string& identity,
                                    const v1::PsiSubmitRequest& request) {
  CheckProtocolVersion(request.protocol_version());
  const v1::PsiPoints& set = request.set();
  const uint32_t count = CountPoints(set.points());
  std::lock_guard lock(mutex_);
  auto known = index_.find(identity);
  size_t party = 0;
  const auto now = options_.now();
  if (known == index_.end() && parties_.size() == static_cast<size_t>(options_.parties) &&
      now - last_progress_ > options_.abandon_after) {
    spdlog::warn("PSI: the run of {} parties made no progress for {} s; abandoned", parties_.size(),
                 std::chrono::duration_cast<std::chrono::seconds>(now - last_progress_).count());
    Reset();
  }
  if (known == index_.end()) {
    if (parties_.size() == static_cast<size_t>(options_.parties)) {
      throw Refusal(RefusalKind::kNotAllowed,
                    detail::Concat("the PSI ring of ", options_.parties,
                                   " parties is full (", PeerText(identity), " is not in it)"));
    }
    CLEAVE_CHECK_INPUT(set.hops() == 1, "PSI: an own set has hops 1, got ", set.hops());
    party = parties_.size();
    parties_.push_back(Party{identity, std::nullopt, false});
    index_[identity] = party;
    spdlog::info("PSI: '{}' is party {} of {} ({} points)", PeerText(identity), party,
                 options_.parties, count);
    Route(Task{static_cast<uint32_t>(party), 1, set.points()});
  } else {
    party = known->second;
    std::optional<Task>& handed = parties_[party].handed_out;
    CLEAVE_CHECK_INPUT(handed.has_value(), "PSI: no set was handed to party ", party,
                       " to blind (its own set was submitted already)");
    CLEAVE_CHECK_INPUT(set.owner() == handed->owner && set.hops() == handed->hops + 1 &&
                           count * psi::kPointBytes == handed->points.size(),
                       "PSI: the answer (owner ", set.owner(), ", hops ", set.hops(), ", ", count,
                       " points) does not match the set handed out (owner ", handed->owner,
                       ", hops ", handed->hops, ")");
    handed.reset();
    Route(Task{set.owner(), set.hops(), set.points()});
  }
  last_progress_ = now;  // only accepted sets are progress (a refused newcomer is not)
  changed_.notify_all();
  v1::PsiSubmitReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_party(static_cast<uint32_t>(party));
  reply.set_parties(static_cast<uint32_t>(options_.parties));
  return reply;
}

void PsiRelay::Route(Task task) {
  const auto n = static_cast<uint32_t>(options_.parties);
  if (task.hops == n) {
    finals_[task.owner] = std::move(task.points);
    FinishIfComplete();
    return;
  }
  queues_[(task.owner + task.hops) % n].push_back(std::move(task));
}

void PsiRelay::FinishIfComplete() {
  std::vector<std::vector<std::string>> finals;
  for (const auto& final_set : finals_) {
    if (!final_set) return;
    finals.push_back(SplitPoints(*final_set));
  }
  results_ = psi::IntersectionPositions(finals);
  complete_ = true;
  last_intersection_size_ = static_cast<int64_t>(results_[0].size());
  std::string sizes;
  for (const auto& set : finals) sizes += (sizes.empty() ? "" : ", ") + std::to_string(set.size());
  spdlog::info("PSI: {} parties, set sizes {}; intersection {}", options_.parties, sizes,
               last_intersection_size_);
}

bool PsiRelay::HasWork(size_t party) const {
  return parties_[party].handed_out.has_value() || !queues_[party].empty() ||
         (complete_ && !parties_[party].result_delivered);
}

v1::PsiAwaitReply PsiRelay::TakeWork(size_t party) {
  v1::PsiAwaitReply reply;
  Party& p = parties_[party];
  if (!p.handed_out && !queues_[party].empty()) {
    p.handed_out = std::move(queues_[party].front());
    queues_[party].pop_front();
  }
  if (p.handed_out) {
    v1::PsiPoints* blind = reply.mutable_blind();
    blind->set_owner(p.handed_out->owner);
    blind->set_hops(p.handed_out->hops);
    blind->set_points(p.handed_out->points);
  } else if (complete_ && !p.result_delivered) {
    v1::PsiResult* result = reply.mutable_result();  // set even when empty: "none shared"
    for (uint32_t position : results_[party]) result->add_positions(position);
    p.result_delivered = true;
  }
  return reply;
}

v1::PsiAwaitReply PsiRelay::Await(const std::string& identity,
                                  const v1::PsiAwaitRequest& request) {
  CheckProtocolVersion(request.protocol_version());
  std::unique_lock lock(mutex_);
  const auto known = index_.find(identity);
  if (known == index_.end()) {
    throw Refusal(RefusalKind::kMismatch,
                  "PSI: submit your own set (PsiSubmit) before waiting for work");
  }
  const size_t party = known->second;
  std::chrono::milliseconds wait = options_.max_wait;
  if (request.max_wait_ms() > 0) wait = std::min(wait, std::chrono::milliseconds(request.max_wait_ms()));
  changed_.wait_for(lock, wait, [&] { return HasWork(party); });
  v1::PsiAwaitReply reply = TakeWork(party);
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_party(static_cast<uint32_t>(party));
  reply.set_parties(static_cast<uint32_t>(options_.parties));
  bool all_delivered = complete_;
  for (const Party& p : parties_) all_delivered = all_delivered && p.result_delivered;
  if (reply.has_blind() || reply.has_result()) last_progress_ = options_.now();
  if (all_delivered) {  // every party has its answer: ready for the next intersection
    ++runs_completed_;
    Reset();
  }
  return reply;
}

void PsiRelay::Reset() {
  parties_.clear();
  index_.clear();
  for (auto& queue : queues_) queue.clear();
  for (auto& final_set : finals_) final_set.reset();
  results_.clear();
  complete_ = false;
}

int64_t PsiRelay::runs_completed() const {
  std::lock_guard lock(mutex_);
  return runs_completed_;
}

int64_t PsiRelay::last_intersection_size() const {
  std::lock_guard lock(mutex_);
  return last_intersection_size_;
}

}  // namespace cleave::server
