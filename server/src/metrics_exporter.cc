#include "cleave/server/metrics_exporter.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "cleave/core/error.h"

namespace cleave::server {

struct MetricsExporter::Metrics {
  explicit Metrics(prometheus::Registry& registry)
      : steps(prometheus::BuildCounter()
                  .Name("cleave_steps_total")
                  .Help("Training steps the server has taken")
                  .Register(registry)
                  .Add({})),
        samples(prometheus::BuildCounter()
                    .Name("cleave_samples_total")
                    .Help("Training samples the server has seen")
                    .Register(registry)
                    .Add({})),
        bytes(prometheus::BuildCounter()
                  .Name("cleave_bytes_total")
                  .Help("Protobuf bytes of requests received and replies sent")
                  .Register(registry)),
        bytes_received(bytes.Add({{"direction", "received"}})),
        bytes_sent(bytes.Add({{"direction", "sent"}})),
        sessions(prometheus::BuildGauge()
                     .Name("cleave_active_sessions")
                     .Help("Open client sessions")
                     .Register(registry)
                     .Add({})),
        clients(prometheus::BuildGauge()
                    .Name("cleave_active_clients")
                    .Help("Hospitals (certificate identities) with an open session")
                    .Register(registry)
                    .Add({})),
        step_seconds(
            prometheus::BuildHistogram()
                .Name("cleave_step_duration_seconds")
                .Help("Server time of one training step (forward, backward, update)")
                .Register(registry)
                .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.002, 0.005, 0.01, 0.02,
                                                                 0.05, 0.1, 0.2, 0.5, 1})),
        round_seconds(Histogram(registry, "cleave_round_duration_seconds",
                                "Wall time of a round, first Sync to applied average",
                                {1, 2, 5, 10, 20, 30, 60, 120, 300, 600})),
        staleness(Histogram(registry, "cleave_update_staleness",
                            "Versions between an accepted update's base and the current model",
                            {0, 1, 2, 3, 4, 8})),
        updates(prometheus::BuildCounter()
                    .Name("cleave_updates_accepted_total")
                    .Help("Client-model updates accepted into a round")
                    .Register(registry)
                    .Add({})),
        refused(prometheus::BuildCounter()
                    .Name("cleave_refused_total")
                    .Help("Updates and steps refused, by what and why (stale: the client "
                          "resynchronises; not_participant, out_of_bounds, nonfinite, "
                          "no_samples, invalid: a faulty or hostile hospital)")
                    .Register(registry)),
        clipped(prometheus::BuildCounter()
                    .Name("cleave_updates_clipped_total")
                    .Help("Client-model updates whose norm the aggregator clipped")
                    .Register(registry)
                    .Add({})),
        expired(prometheus::BuildCounter()
                    .Name("cleave_sessions_expired_total")
                    .Help("Sessions released after the session idle timeout without a call")
                    .Register(registry)
                    .Add({})),
        rounds(prometheus::BuildCounter()
                   .Name("cleave_rounds_total")
                   .Help("Rounds closed")
                   .Register(registry)
                   .Add({})),
        version(prometheus::BuildGauge()
                    .Name("cleave_client_model_version")
                    .Help("Current client-side model version")
                    .Register(registry)
                    .Add({})),
        top_step_hospitals(Histogram(
            registry, "cleave_top_step_hospitals",
            "Hospitals' steps merged into one step of the server's layers (merging on)",
            {1, 2, 4, 8, 16, 32, 64})),
        top_step_samples(Histogram(registry, "cleave_top_step_samples",
                                   "Samples in one step of the server's layers (merging on)",
                                   {16, 32, 64, 128, 256, 512, 1024, 2048, 4096})) {}

  static prometheus::Histogram& Histogram(prometheus::Registry& registry, const char* name,
                                          const char* help,
                                          prometheus::Histogram::BucketBoundaries buckets) {
    return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add(
        {}, std::move(buckets));
  }

  prometheus::Counter& steps;
  prometheus::Counter& samples;
  prometheus::Family<prometheus::Counter>& bytes;
  prometheus::Counter& bytes_received;
  prometheus::Counter& bytes_sent;
  prometheus::Gauge& sessions;
  prometheus::Gauge& clients;
  prometheus::Histogram& step_seconds;
  prometheus::Histogram& round_seconds;
  prometheus::Histogram& staleness;
  prometheus::Counter& updates;
  prometheus::Family<prometheus::Counter>& refused;
  prometheus::Counter& clipped;
  prometheus::Counter& expired;
  prometheus::Counter& rounds;
  prometheus::Gauge& version;
  prometheus::Histogram& top_step_hospitals;
  prometheus::Histogram& top_step_samples;
};

MetricsExporter::MetricsExporter(const std::string& address)
    : registry_(std::make_shared<prometheus::Registry>()),
      metrics_(std::make_unique<Metrics>(*registry_)) {
  if (address.empty()) return;
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& error) {
    throw UserError("cannot serve metrics on '" + address + "': " + error.what());
  }
  exposer_->RegisterCollectable(registry_);
}

MetricsExporter::~MetricsExporter() = default;

int MetricsExporter::port() const {
  if (!exposer_) return 0;
  const auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

std::string MetricsExporter::Text() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

void MetricsExporter::OnStep(int64_t samples, double seconds) {
  metrics_->steps.Increment();
  metrics_->samples.Increment(static_cast<double>(samples));
  metrics_->step_seconds.Observe(seconds);
}

void MetricsExporter::OnTopStep(int64_t hospitals, int64_t samples) {
  metrics_->top_step_hospitals.Observe(static_cast<double>(hospitals));
  metrics_->top_step_samples.Observe(static_cast<double>(samples));
}

void MetricsExporter::OnBytes(int64_t received, int64_t sent) {
  metrics_->bytes_received.Increment(static_cast<double>(received));
  metrics_->bytes_sent.Increment(static_cast<double>(sent));
}

void MetricsExporter::OnSessions(int64_t sessions, int64_t clients) {
  metrics_->sessions.Set(static_cast<double>(sessions));
  metrics_->clients.Set(static_cast<double>(clients));
}

void MetricsExporter::OnUpdate(int64_t staleness) {
  metrics_->updates.Increment();
  metrics_->staleness.Observe(static_cast<double>(staleness));
}

void MetricsExporter::OnRefused(const std::string& what, const std::string& reason) {
  // Family::Add returns the existing child for labels it has seen.
  metrics_->refused.Add({{"what", what}, {"reason", reason}}).Increment();
}

void MetricsExporter::OnSessionsExpired(int64_t count) {
  metrics_->expired.Increment(static_cast<double>(count));
}

void MetricsExporter::OnRound(const RoundSummary& summary) {
  metrics_->rounds.Increment();
  metrics_->round_seconds.Observe(summary.seconds);
  metrics_->version.Set(static_cast<double>(summary.version));
  metrics_->clipped.Increment(static_cast<double>(summary.clipped));
}

}  // namespace cleave::server
