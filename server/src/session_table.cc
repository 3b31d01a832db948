#include "cleave/server/session_table.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <set>

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"
#include "cleave/server/refusal.h"

namespace cleave::server {

namespace {

// 128 bits from the system's entropy source: ids cannot be guessed.
std::string NewSessionId() {
  std::random_device entropy;
  char buffer[33];
  std::snprintf(buffer, sizeof(buffer), "%08x%08x%08x%08x", entropy(), entropy(), entropy(),
                entropy());
  return buffer;
}

}  // namespace

SessionTable::SessionTable(int max_per_identity) : max_per_identity_(max_per_identity) {
  CLEAVE_CHECK_USER(max_per_identity >= 1, "the sessions allowed per identity must be >= 1");
}

SessionTable::Opened SessionTable::Open(const std::string& identity, Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::map<std::string, Session>::iterator> own;
  for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
    if (it->second.identity == identity) own.push_back(it);
  }
  std::sort(own.begin(), own.end(),
            [](const auto& a, const auto& b) { return a->second.created < b->second.created; });
  Opened opened;
  for (size_t i = 0; i + static_cast<size_t>(max_per_identity_) <= own.size(); ++i) {
    sessions_.erase(own[i]);
    ++opened.replaced;
  }
  replaced_ += opened.replaced;
  opened.id = NewSessionId();
  Session& session = sessions_[opened.id];
  session.identity = identity;
  session.last_call = now;
  session.created = ++opened_;
  changed_.notify_all();
  return opened;
}

Session SessionTable::Touch(const std::string& identity, const std::string& id,
                            Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = sessions_.find(id);
  if (it == sessions_.end()) {
    throw Refusal(RefusalKind::kUnknownSession, "unknown or expired session; Join again");
  }
  if (it->second.identity != identity) {
    spdlog::warn("'{}' tried to use a session of '{}'", PeerText(identity),
                 PeerText(it->second.identity));
    throw Refusal(RefusalKind::kNotAllowed, "this session belongs to another client");
  }
  it->second.last_call = now;
  return it->second;
}

bool SessionTable::Contains(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sessions_.count(id) == 1;
}

void SessionTable::Count(const std::string& id, int64_t steps, int64_t samples, int64_t received,
                         int64_t sent) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = sessions_.find(id);  // gone if it ended during the call
  if (it == sessions_.end()) return;
  it->second.steps += steps;
  it->second.samples += samples;
  it->second.bytes_received += received;
  it->second.bytes_sent += sent;
}

std::optional<Session> SessionTable::Release(const std::string& identity, const std::string& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.identity != identity) return std::nullopt;
  Session session = std::move(it->second);
  sessions_.erase(it);
  changed_.notify_all();
  return session;
}

std::vector<Session> SessionTable::ExpireBefore(Clock::time_point cutoff) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Session> gone;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->second.last_call < cutoff) {
      gone.push_back(std::move(it->second));
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
  expired_ += static_cast<int64_t>(gone.size());
  if (!gone.empty()) changed_.notify_all();
  return gone;
}

size_t SessionTable::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sessions_.size();
}

int64_t SessionTable::identities() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::set<std::string> names;
  for (const auto& [id, session] : sessions_) names.insert(session.identity);
  return static_cast<int64_t>(names.size());
}

int64_t SessionTable::expired() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return expired_;
}

int64_t SessionTable::replaced() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return replaced_;
}

bool SessionTable::WaitForSize(size_t count, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return sessions_.size() == count; });
}

}  // namespace cleave::server
