// Prometheus metrics of a running server (prometheus-cpp), served over HTTP at /metrics: steps,
// samples, bytes per direction, active clients, step and round durations, update staleness,
// refused updates and steps by reason, clipped updates, expired sessions, rounds; with merged
// steps, the hospitals and samples of each step of the server's layers.
#pragma once

#include <memory>
#include <string>

#include "cleave/server/split_server.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace cleave::server {

class MetricsExporter final : public ServerObserver {
 public:
  // Listens on `address` ("127.0.0.1:9464"; port 0 picks a free one). Throws UserError if it
  // cannot bind. An empty address serves nothing (the figures are still kept, for Text()).
  explicit MetricsExporter(const std::string& address);
  ~MetricsExporter() override;
  int port() const;  // 0 when not serving
  // The figures as /metrics serves them (Prometheus text format), e.g. for a file at exit.
  std::string Text() const;

  void OnStep(int64_t samples, double seconds) override;
  void OnBytes(int64_t received, int64_t sent) override;
  void OnSessions(int64_t sessions, int64_t clients) override;
  void OnUpdate(int64_t staleness) override;
  void OnRefused(const std::string& what, const std::string& reason) override;
  void OnSessionsExpired(int64_t count) override;
  void OnRound(const RoundSummary& summary) override;
  void OnTopStep(int64_t hospitals, int64_t samples) override;

 private:
  struct Metrics;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace cleave::server
