// The Prometheus endpoint: served over HTTP on a free port, with the figures the server reported.
#include "cleave/server/metrics_exporter.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "cleave/core/error.h"
#include "cleave/protocol/tensor_message.h"
#include "cleave/server/split_server.h"
#include "server_requests.h"

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

// Without an address nothing is served, and the figures are still there for a file at exit.
TEST(MetricsExporterTest, WithoutAnAddressKeepsTheFiguresForText) {
  MetricsExporter exporter("");
  EXPECT_EQ(exporter.port(), 0);
  exporter.OnStep(64, 0.004);
  RoundSummary round;
  round.version = 7;
  exporter.OnRound(round);
  const std::string text = exporter.Text();
  for (const char* line : {"cleave_steps_total 1\n", "cleave_samples_total 64",
                           "cleave_rounds_total 1", "cleave_client_model_version 7"}) {
    EXPECT_NE(text.find(line), std::string::npos) << "missing '" << line << "' in\n" << text;
  }
}

// The server reports to its observer: a step, a refusal, a session and a round each move the
// metric that names them.
TEST(MetricsExporterTest, TheServerReportsItsEventsToTheExporter) {
  MetricsExporter exporter("127.0.0.1:0");
  SplitServerOptions options = test::MlpOptions();
  options.max_activation_abs = 100;
  options.rounds.schedule = Schedule::kSplitFed;
  options.compression.mutable_updates()->set_method("none");
  SplitServer server(options);
  server.SetObserver(&exporter);

  v1::JoinRequest join;
  join.set_protocol_version(protocol::kProtocolVersion);
  join.set_model_fingerprint(server.fingerprint());
  const std::string session = server.Join("st-mary", join).session_id();
  v1::SyncRequest sync;
  sync.set_protocol_version(protocol::kProtocolVersion);
  sync.set_session_id(session);
  sync.set_have_version(-1);
  ASSERT_EQ(server.Sync("st-mary", sync).action(), v1::SyncReply::TRAIN);
  const auto train = [&](float value) {
    v1::TrainRequest request;
    request.set_protocol_version(protocol::kProtocolVersion);
    request.set_session_id(session);
    protocol::EncodeDense(at::full({4, 128}, value), request.mutable_activations());
    protocol::EncodeDense(at::zeros({4}, at::kLong), request.mutable_labels());
    return server.Train("st-mary", request);
  };
  train(0.5f);
  train(0.25f);
  EXPECT_THROW(train(1000.0f), InvalidInput);  // beyond the activation bound of 100
  // Refused, the hospital is out of the round: it syncs again, trains and sends its update.
  ASSERT_EQ(server.Sync("st-mary", sync).action(), v1::SyncReply::TRAIN);
  train(0.5f);
  v1::UpdateRequest update;
  update.set_protocol_version(protocol::kProtocolVersion);
  update.set_session_id(session);
  update.set_round(1);
  update.set_samples(4);
  protocol::EncodeDense(at::zeros({server.rounds()->num_parameters()}), update.mutable_delta());
  server.SubmitUpdate("st-mary", update);
  ASSERT_EQ(server.rounds()->version(), 1);

  const std::string text = Scrape(exporter.port());
  for (const char* line :
       {"cleave_steps_total 3", "cleave_samples_total 12", "cleave_active_clients 1",
        "cleave_active_sessions 1", "cleave_updates_accepted_total 1",
        "cleave_refused_total{reason=\"out_of_bounds\",what=\"step\"} 1", "cleave_rounds_total 1",
        "cleave_client_model_version 1", "cleave_step_duration_seconds_count 3"}) {
    EXPECT_NE(text.find(line), std::string::npos) << "missing '" << line << "' in\n" << text;
  }
  const ServerCounters counters = server.counters();
  EXPECT_NE(text.find("cleave_bytes_total{direction=\"received\"} " +
                      std::to_string(counters.bytes_received)),
            std::string::npos)
      << "the server counted " << counters.bytes_received << " bytes received:\n"
      << text;
  server.SetObserver(nullptr);
}

TEST(MetricsExporterTest, AnAddressInUseIsAUserError) {
  MetricsExporter first("127.0.0.1:0");
  EXPECT_THROW(MetricsExporter("127.0.0.1:" + std::to_string(first.port())), UserError);
}

}  // namespace
}  // namespace cleave::server
