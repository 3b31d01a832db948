// The Prometheus endpoint: served over HTTP on a free port, with the figures the server reported.
#include "cleave/server/metrics_exporter.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "cleave/core/error.h"

namespace cleave::server {
namespace {

// GET /metrics over a plain socket (no HTTP client library needed for a test).
std::string Scrape(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  EXPECT_EQ(::send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
  ::close(fd);
  return response;
}

TEST(MetricsExporterTest, ServesWhatTheServerReported) {
  MetricsExporter exporter("127.0.0.1:0");
  ASSERT_GT(exporter.port(), 0);
  exporter.OnStep(64, 0.004);
  exporter.OnStep(32, 0.003);
  exporter.OnBytes(1000, 250);
  exporter.OnSessions(3, 2);
  exporter.OnUpdate(0);
  exporter.OnUpdate(1);
  exporter.OnRefused("update", "stale");
  exporter.OnRefused("step", "stale");
  exporter.OnRefused("step", "stale");
  exporter.OnRefused("step", "out_of_bounds");
  exporter.OnSessionsExpired(3);
  RoundSummary round;
  round.clipped = 2;
  round.seconds = 12.5;
  round.version = 4;
  exporter.OnRound(round);
  const std::string text = Scrape(exporter.port());
  for (const char* line :
       {"cleave_steps_total 2", "cleave_samples_total 96",
        "cleave_bytes_total{direction=\"received\"} 1000",
        "cleave_bytes_total{direction=\"sent\"} 250", "cleave_active_clients 2",
        "cleave_active_sessions 3", "cleave_updates_accepted_total 2",
        "cleave_refused_total{reason=\"stale\",what=\"update\"} 1",
        "cleave_refused_total{reason=\"stale\",what=\"step\"} 2",
        "cleave_refused_total{reason=\"out_of_bounds\",what=\"step\"} 1",
        "cleave_updates_clipped_total 2", "cleave_sessions_expired_total 3",
        "cleave_rounds_total 1", "cleave_client_model_version 4", "cleave_update_staleness_count 2",
        "cleave_round_duration_seconds_sum 12.5", "cleave_step_duration_seconds_count 2"}) {
    EXPECT_NE(text.find(line), std::string::npos) << "missing '" << line << "' in\n" << text;
  }
}

TEST(MetricsExporterTest, AnAddressInUseIsAUserError) {
  MetricsExporter first("127.0.0.1:0");
  EXPECT_THROW(MetricsExporter("127.0.0.1:" + std::to_string(first.port())), UserError);
}

}  // namespace
}  // namespace cleave::server
