#include "cleave/client/round_participant.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <thread>

#include "cleave/core/error.h"
#include "cleave/protocol/client_model_codec.h"
#include "cleave/protocol/status_error.h"

namespace cleave::client {

using protocol::StatusError;

namespace {

// Failures that a new connection and session can cure: the server is down or restarting, the
// network dropped, or the session died with the server.
bool Reconnectable(const StatusError& error) {
  switch (error.code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::NOT_FOUND:  // unknown session: the server restarted
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::UNKNOWN:
      return true;
    default:
      return false;
  }
}

// ABORTED: the server refused a step or an update as too stale, or from outside the current
// round; Sync and go on. (FAILED_PRECONDITION is a fatal mismatch: never resynchronised.)
bool Resynchronises(const StatusError& error) { return error.code() == grpc::StatusCode::ABORTED; }

}  // namespace

RoundParticipant::RoundParticipant(SplitTrainer& trainer, RoundParticipantOptions options)
    : trainer_(trainer), options_(options), jitter_(options.seed) {}

void RoundParticipant::Backoff(int attempt) {
  // Exponential backoff with full jitter: hospitals that lost the server together do not all
  // come back at the same instant.
  const auto cap = std::min<int64_t>(options_.max_backoff.count(),
                                     options_.initial_backoff.count() << std::min(attempt, 20));
  std::uniform_int_distribution<int64_t> pick(cap / 2, std::max<int64_t>(cap, 1));
  std::this_thread::sleep_for(std::chrono::milliseconds(pick(jitter_)));
}

void RoundParticipant::JoinWithRetry(int64_t num_train_samples, ParticipationStats* stats) {
  for (int attempt = 0;; ++attempt) {
    try {
      trainer_.Join(num_train_samples);
      return;
    } catch (const StatusError& error) {
      if (!Reconnectable(error) || attempt + 1 >= options_.max_reconnects) throw;
      spdlog::warn("cannot join ({}); retrying", error.what());
      ++stats->reconnects;
      Backoff(attempt);
    }
  }
}

ParticipationStats RoundParticipant::Run(const Dataset& train, int64_t num_train_samples,
                                         ProgressReporter* progress) {
  ParticipationStats stats;
  if (!trainer_.joined()) JoinWithRetry(num_train_samples, &stats);
  BatchCursor cursor(train, trainer_.options().batch_size, trainer_.options().seed);
  const int64_t num_parameters = trainer_.ClientWeights().numel();
  int64_t have_version = -1;  // nothing from the server yet
  at::Tensor base;            // the weights of have_version
  int failures = 0;
  while (std::chrono::steady_clock::now() < options_.stop_at) {
    try {
      const v1::SyncReply sync = trainer_.Sync(have_version, options_.sync_wait_ms);
      failures = 0;
      if (sync.weights().payload_case() != v1::Tensor::PAYLOAD_NOT_SET) {
        trainer_.LoadClientWeights(protocol::DecodeWeights(sync.weights(), num_parameters),
                                   sync.model_version());
        have_version = sync.model_version();
        base = trainer_.ClientWeights();
      }
      stats.final_version = sync.model_version();
      stats.final_round = sync.round();
      if (sync.action() == v1::SyncReply::DONE) break;
      if (sync.action() == v1::SyncReply::WAIT) continue;
      CLEAVE_CHECK_INPUT(base.defined() && have_version == sync.model_version(),
                         "server asked to train version ", sync.model_version(),
                         " without sending it");
      const EpochStats round =
          trainer_.TrainRound(cursor, sync.round(), sync.rounds(), progress);
      stats.last_round = round;
      stats.samples += round.samples;
      stats.seconds += round.seconds;
      ++stats.rounds_trained;
      const v1::UpdateReply update =
          trainer_.SubmitUpdate(have_version, sync.round(), round.samples, base);
      ++stats.updates_sent;
      if (update.duplicate()) ++stats.duplicates;
      if (update.staleness() > 0) {
        spdlog::info("round {}: update applied {} version(s) late, scaled by {:.2f}",
                     sync.round(), update.staleness(), update.scale());
      }
    } catch (const StatusError& error) {
      // A fatal mismatch (FAILED_PRECONDITION: protocol version, model fingerprint) or a refusal
      // no retry cures ends the run at once; every other failure counts towards the limit until
      // a Sync succeeds again, so that a refusal that keeps coming does not loop for ever.
      if (!Resynchronises(error) && !Reconnectable(error)) throw;
      if (++failures >= options_.max_reconnects) throw;
      ++stats.errors_recovered;
      if (Resynchronises(error)) {
        // Too stale, or not part of the round: start again from the server's current weights.
        spdlog::warn("resynchronising: {}", error.what());
        ++stats.updates_refused;
        trainer_.ResetUpdateFeedback();
        have_version = -1;
        continue;
      }
      spdlog::warn("lost the server ({}); reconnecting", error.what());
      ++stats.reconnects;
      Backoff(failures - 1);
      trainer_.DropSession();
      JoinWithRetry(num_train_samples, &stats);
      // Keep have_version and base: if the server resumed at the same version, this round's
      // progress still counts; otherwise Sync sends the current weights.
    }
  }
  return stats;
}

}  // namespace cleave::client
