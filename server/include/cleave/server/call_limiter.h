// Per-client admission limits for the server's RPCs: how many calls one client (certificate CN)
// may have open at once, how many bytes of its requests may be in processing at once, and how
// many bytes of large requests all clients together may have in processing. One hostile hospital
// can then hold only its own share of threads and memory. No gRPC here: the service turns a
// refusal into RESOURCE_EXHAUSTED.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace cleave::server {

struct CallLimits {
  int max_calls_per_client = 8;  // open calls (a Train stream counts for its whole life)
  int64_t max_client_request_bytes = 128LL << 20;  // one client's requests in processing
  int64_t large_request_bytes = 1LL << 20;         // requests over this count against...
  int64_t max_large_request_bytes = 256LL << 20;   // ...this cap, over all clients together
};

class CallLimiter {
 public:
  // Holds what it was granted until destroyed. A refused permit holds nothing and says which
  // limit refused it.
  class Permit {
   public:
    Permit() = default;
    Permit(Permit&& other) noexcept;
    Permit& operator=(Permit&& other) noexcept;
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { Release(); }

    bool granted() const { return granted_; }
    const std::string& refusal() const { return refusal_; }

   private:
    friend class CallLimiter;
    void Release();

    CallLimiter* limiter_ = nullptr;  // null: holds nothing
    std::string identity_;
    int calls_ = 0;
    int64_t bytes_ = 0;
    int64_t large_bytes_ = 0;
    bool granted_ = false;
    std::string refusal_;
  };

  explicit CallLimiter(const CallLimits& limits);
  CallLimiter(const CallLimiter&) = delete;
  CallLimiter& operator=(const CallLimiter&) = delete;
  // Every permit must be gone before the limiter.
  ~CallLimiter() = default;

  // One more open call of `identity`, for as long as the permit lives.
  Permit AdmitCall(const std::string& identity);
  // A request of `bytes` from `identity` being parsed and processed.
  Permit AdmitRequest(const std::string& identity, int64_t bytes);

  const CallLimits& limits() const { return limits_; }
  // What is held now (tests, metrics).
  int open_calls(const std::string& identity) const;
  int64_t request_bytes(const std::string& identity) const;
  int64_t large_request_bytes() const;

 private:
  struct Usage {
    int calls = 0;
    int64_t bytes = 0;
  };
  void Return(const Permit& permit);

  const CallLimits limits_;
  mutable std::mutex mutex_;
  std::map<std::string, Usage> usage_;  // only clients holding something
  int64_t large_bytes_ = 0;
};

}  // namespace cleave::server
