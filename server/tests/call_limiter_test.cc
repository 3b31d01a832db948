// CallLimiter without gRPC: per-client calls and request bytes, the server-wide cap on large
// requests, permits that give back exactly what they hold.
#include "cleave/server/call_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <utility>
#include <vector>

namespace cleave::server {
namespace {

constexpr int64_t kMiB = 1 << 20;

CallLimits SmallLimits() {
  CallLimits limits;
  limits.max_calls_per_client = 3;
  limits.max_client_request_bytes = 10 * kMiB;
  limits.large_request_bytes = kMiB;
  limits.max_large_request_bytes = 16 * kMiB;
  return limits;
}

TEST(CallLimiterTest, CallsPerClientAreCappedAndComeBack) {
  CallLimiter limiter(SmallLimits());
  std::vector<CallLimiter::Permit> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(limiter.AdmitCall("mallory"));
    ASSERT_TRUE(held.back().granted()) << i;
  }
  const CallLimiter::Permit refused = limiter.AdmitCall("mallory");
  EXPECT_FALSE(refused.granted());
  EXPECT_NE(refused.refusal().find("per-client call limit"), std::string::npos)
      << refused.refusal();
  EXPECT_EQ(limiter.open_calls("mallory"), 3);
  // Another client has its own allowance.
  EXPECT_TRUE(limiter.AdmitCall("st-mary").granted());
  held.pop_back();
  EXPECT_EQ(limiter.open_calls("mallory"), 2);
  EXPECT_TRUE(limiter.AdmitCall("mallory").granted());
  held.clear();
  EXPECT_EQ(limiter.open_calls("mallory"), 0);
}

TEST(CallLimiterTest, RequestBytesPerClientAreCapped) {
  CallLimiter limiter(SmallLimits());
  CallLimiter::Permit first = limiter.AdmitRequest("mallory", 6 * kMiB);
  ASSERT_TRUE(first.granted());
  const CallLimiter::Permit second = limiter.AdmitRequest("mallory", 6 * kMiB);
  EXPECT_FALSE(second.granted());
  EXPECT_NE(second.refusal().find("per-client request memory limit"), std::string::npos)
      << second.refusal();
  EXPECT_TRUE(limiter.AdmitRequest("mallory", 4 * kMiB).granted());  // exactly up to the cap
  EXPECT_TRUE(limiter.AdmitRequest("st-mary", 6 * kMiB).granted());
  EXPECT_EQ(limiter.request_bytes("mallory"), 6 * kMiB);
  first = CallLimiter::Permit();  // assignment gives back what was held
  EXPECT_EQ(limiter.request_bytes("mallory"), 0);
  EXPECT_TRUE(limiter.AdmitRequest("mallory", 6 * kMiB).granted());
}

TEST(CallLimiterTest, LargeRequestsShareOneServerWideCap) {
  CallLimiter limiter(SmallLimits());
  std::vector<CallLimiter::Permit> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(limiter.AdmitRequest("hospital-" + std::to_string(i), 8 * kMiB));
    ASSERT_TRUE(held.back().granted());
  }
  EXPECT_EQ(limiter.large_request_bytes(), 16 * kMiB);
  const CallLimiter::Permit refused = limiter.AdmitRequest("hospital-2", 2 * kMiB);
  EXPECT_FALSE(refused.granted());
  EXPECT_NE(refused.refusal().find("server-wide"), std::string::npos) << refused.refusal();
  EXPECT_EQ(limiter.request_bytes("hospital-2"), 0);
  // Small requests (Sync, Leave, sparse steps) never wait on the large ones.
  EXPECT_TRUE(limiter.AdmitRequest("hospital-2", kMiB).granted());
  held.clear();
  EXPECT_EQ(limiter.large_request_bytes(), 0);
}

TEST(CallLimiterTest, MovedPermitsReleaseOnce) {
  CallLimiter limiter(SmallLimits());
  CallLimiter::Permit a = limiter.AdmitCall("x");
  CallLimiter::Permit b = std::move(a);
  EXPECT_TRUE(b.granted());
  EXPECT_FALSE(a.granted());  // NOLINT(bugprone-use-after-move): moved-from holds nothing
  EXPECT_EQ(limiter.open_calls("x"), 1);
  {
    CallLimiter::Permit c(std::move(b));
    EXPECT_EQ(limiter.open_calls("x"), 1);
  }
  EXPECT_EQ(limiter.open_calls("x"), 0);
  CallLimiter::Permit refused;
  EXPECT_FALSE(refused.granted());
}

// Many threads admitting and releasing at once never see more than the limits allow.
TEST(CallLimiterTest, LimitsHoldUnderConcurrency) {
  CallLimits limits = SmallLimits();
  limits.max_calls_per_client = 2;
  CallLimiter limiter(limits);
  std::atomic<int> open_calls{0}, most_calls{0};
  std::atomic<int64_t> large{0}, most_large{0};
  std::atomic<int> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const std::string identity = t % 2 == 0 ? "even" : "odd-" + std::to_string(t);
      for (int i = 0; i < 2000; ++i) {
        const CallLimiter::Permit call = limiter.AdmitCall(identity);
        if (call.granted() && identity == "even") {
          const int now = ++open_calls;
          int seen = most_calls.load();
          while (now > seen && !most_calls.compare_exchange_weak(seen, now)) {
          }
        }
        const CallLimiter::Permit bytes = limiter.AdmitRequest(identity, 5 * kMiB);
        if (bytes.granted()) {
          ++granted;
          const int64_t now = large += 5 * kMiB;
          int64_t seen = most_large.load();
          while (now > seen && !most_large.compare_exchange_weak(seen, now)) {
          }
          large -= 5 * kMiB;
        }
        if (call.granted() && identity == "even") --open_calls;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_LE(most_calls.load(), 2);
  EXPECT_LE(most_large.load(), 16 * kMiB);
  EXPECT_GT(granted.load(), 0);
  EXPECT_EQ(limiter.open_calls("even"), 0);
  EXPECT_EQ(limiter.large_request_bytes(), 0);
}

}  // namespace
}  // namespace cleave::server
