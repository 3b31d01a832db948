#include "cleave/server/call_limiter.h"

#include <cassert>
#include <cstdio>
#include <utility>

#include "cleave/core/error.h"

namespace cleave::server {

namespace {

std::string Mib(int64_t bytes) {
  if (bytes < (1 << 20)) return detail::Concat(bytes, " bytes");
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return text;
}

}  // namespace

CallLimiter::Permit::Permit(Permit&& other) noexcept { *this = std::move(other); }

CallLimiter::Permit& CallLimiter::Permit::operator=(Permit&& other) noexcept {
  if (this != &other) {
    Release();
    limiter_ = std::exchange(other.limiter_, nullptr);
    identity_ = std::move(other.identity_);
    calls_ = std::exchange(other.calls_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
    large_bytes_ = std::exchange(other.large_bytes_, 0);
    granted_ = std::exchange(other.granted_, false);
    refusal_ = std::move(other.refusal_);
  }
  return *this;
}

void CallLimiter::Permit::Release() {
  if (limiter_ != nullptr) limiter_->Return(*this);
  limiter_ = nullptr;
  calls_ = 0;
  bytes_ = 0;
  large_bytes_ = 0;
}

CallLimiter::CallLimiter(const CallLimits& limits) : limits_(limits) {
  CLEAVE_ENFORCE(limits.max_calls_per_client >= 1 && limits.max_client_request_bytes >= 1 &&
                     limits.large_request_bytes >= 0 && limits.max_large_request_bytes >= 1,
                 "call limits must be positive");
}

CallLimiter::Permit CallLimiter::AdmitCall(const std::string& identity) {
  Permit permit;
  std::lock_guard<std::mutex> lock(mutex_);
  Usage& usage = usage_[identity];
  if (usage.calls >= limits_.max_calls_per_client) {
    permit.refusal_ = detail::Concat("per-client call limit: ", usage.calls,
                                     " calls open (at most ", limits_.max_calls_per_client, ")");
    if (usage.calls == 0 && usage.bytes == 0) usage_.erase(identity);
    return permit;
  }
  ++usage.calls;
  permit.limiter_ = this;
  permit.identity_ = identity;
  permit.calls_ = 1;
  permit.granted_ = true;
  return permit;
}

CallLimiter::Permit CallLimiter::AdmitRequest(const std::string& identity, int64_t bytes) {
  Permit permit;
  std::lock_guard<std::mutex> lock(mutex_);
  Usage& usage = usage_[identity];
  const bool large = bytes > limits_.large_request_bytes;
  if (usage.bytes + bytes > limits_.max_client_request_bytes) {
    permit.refusal_ = detail::Concat("per-client request memory limit: ", Mib(usage.bytes),
                                     " of requests in processing, this one ", Mib(bytes),
                                     " (at most ", Mib(limits_.max_client_request_bytes), ")");
  } else if (large && large_bytes_ + bytes > limits_.max_large_request_bytes) {
    permit.refusal_ = detail::Concat("server-wide large-request memory limit: ", Mib(large_bytes_),
                                     " of large requests in processing, this one ", Mib(bytes),
                                     " (at most ", Mib(limits_.max_large_request_bytes), ")");
  }
  if (!permit.refusal_.empty()) {
    if (usage.calls == 0 && usage.bytes == 0) usage_.erase(identity);
    return permit;
  }
  usage.bytes += bytes;
  if (large) large_bytes_ += bytes;
  permit.limiter_ = this;
  permit.identity_ = identity;
  permit.bytes_ = bytes;
  permit.large_bytes_ = large ? bytes : 0;
  permit.granted_ = true;
  return permit;
}

void CallLimiter::Return(const Permit& permit) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = usage_.find(permit.identity_);
  assert(it != usage_.end() && "a permit outlived its accounting");
  if (it == usage_.end()) return;
  it->second.calls -= permit.calls_;
  it->second.bytes -= permit.bytes_;
  large_bytes_ -= permit.large_bytes_;
  if (it->second.calls == 0 && it->second.bytes == 0) usage_.erase(it);
}

int CallLimiter::open_calls(const std::string& identity) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = usage_.find(identity);
  return it == usage_.end() ? 0 : it->second.calls;
}

int64_t CallLimiter::request_bytes(const std::string& identity) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = usage_.find(identity);
  return it == usage_.end() ? 0 : it->second.bytes;
}

int64_t CallLimiter::large_request_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return large_bytes_;
}

}  // namespace cleave::server
