// cleave-server: the server side of split learning over mutual-TLS gRPC.
#include <pthread.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "cleave/compress/method.h"
#include "cleave/compress/sparse_codec.h"
#include "cleave/core/certificates.h"
#include "cleave/core/command_line.h"
#include "cleave/core/error.h"
#include "cleave/core/file_io.h"
#include "cleave/core/logging.h"
#include "cleave/core/device.h"
#include "cleave/core/model_flags.h"
#include "cleave/privacy/gradient_defence.h"
#include "cleave/server/grpc_server.h"
#include "cleave/server/metrics_exporter.h"
#include "cleave/server/split_server.h"

namespace {

constexpr const char* kDescription =
    R"(cleave-server: holds the top of a split model and trains it with hospitals (clients).

Clients send cut-layer activations and labels; the server computes the loss, updates its layers
and returns the gradient at the cut. Connections use mutual TLS: the server presents --cert/--key
and accepts only clients whose certificate is signed by --ca; a client's identity is the CN of its
certificate. Make certificates with cleave-provision.

Example:
  cleave-server --listen 0.0.0.0:50051 --ca pki/ca.crt --cert pki/server.crt --key pki/server.key \
                --model cnn --cut 1 --checkpoint runs/server.ckpt --checkpoint-every 500 --resume

Several hospitals (--schedule):
  single      one model per client session, no rounds (the default)
  sequential  hospitals take turns; the client-side weights pass from one to the next
  splitfed    all hospitals train at once against this server's layers; at the end of each
              round their client-side models are averaged (weighted by samples) from weight
              deltas sent with --update-compression and error feedback
  A round ends when --round-samples samples were trained (all hospitals together), or at
  --round-deadline with at least --quorum updates. Updates up to --max-staleness versions old
  are applied with a learning rate scaled by 1/(1+staleness); older ones are refused (ABORTED)
  and the hospital resynchronises. With --checkpoint the round state is saved after every
  accepted update, so a restarted server (--resume) loses nothing it accepted.

  cleave-server ... --schedule splitfed --rounds 40 --round-samples 6000 --round-deadline 120 \
                    --quorum 2 --min-clients 3 --metrics-listen 127.0.0.1:9464

With --rounds N the server stops by itself once the last round has closed and every hospital has
left (each evaluates, fetches the final client-side weights with its last Sync, and says goodbye),
or --linger-after-rounds seconds after the last round at the latest; it then writes its checkpoint
(and --metrics-out) and exits 0.

Sample alignment for vertical split learning (--psi-parties N): the parties run cleave-psi
against this server, which relays their blinded ids around the ring and compares only fully
blinded sets; each party learns which of its own ids all parties hold, nothing else.

Bring your own model: export it with tools/export/cleave_export.py and run --top top.pt (the
hospitals run --bottom bottom.pt of the same export; a pair from different exports is refused at
Join). --save-top writes the trained half back as TorchScript.

Split configurations (--config):
  vanilla   hospitals run the bottom and send activations and labels; the server runs the top
  vertical  --parties N parties hold different features of the same samples (e.g. the left and
            right halves of each image, or column groups of a table); each runs its own bottom
            (cleave-client --config vertical --party I) and the server joins their cut
            activations (--join concat along a sample's first dimension, or sum) into the input
            of its top (--model/--cut: the model whose top it runs), and sends each party its
            slice of the gradient. Party --label-holder sends the labels. A step waits up to
            --party-timeout-ms for every party, then fails with DEADLINE_EXCEEDED for those
            waiting. The batch order comes from this server's --seed (told at Join). Single
            schedule only.

  cleave-server ... --config vertical --parties 2 --join concat --model cnn --cut 1

Replicas (--replicas W): W cleave-server processes (one machine or several) hold identical copies
of the top and serve different hospitals; after every step the replicas average their gradients
(weighted by samples) with an allreduce on c10d's ProcessGroupGloo and take the same step, in
lockstep (a replica without work joins with zero weight). Rank 0 hosts the rendezvous store at
--rendezvous and its model (and --resume'd checkpoint) is copied to the others at start. Gloo is
plain TCP and the store has no authentication: run replicas on a private network only and bind
Gloo there with --replica-interface. Vanilla configuration, single schedule, not kfac; with
--merge-max-batch each replica's step merges the steps waiting on it. When a
replica dies, stops answering for --replica-timeout-ms, or shuts down, the others refuse steps
(UNAVAILABLE: hospitals move to another server of their --server list), write their checkpoint
and exit 3; restart the whole group.

  cleave-server ... --replicas 2 --replica-rank 0 --rendezvous 10.0.0.1:29400 --replica-interface eth1
  cleave-server ... --replicas 2 --replica-rank 1 --rendezvous 10.0.0.1:29400 --replica-interface eth1

SIGINT/SIGTERM: stop accepting, finish open steps, write the checkpoint, exit 0.
Exit codes: 0 ok, 1 internal error, 2 bad flags, files or certificates, 3 the replica group
ended.)";

struct CompressionFlags {
  // Strings as typed; protocol::ParseLinkSpec (in SplitServer) checks them with one clear line.
  std::string method = cleave::MethodName(cleave::Method::kNone);
  double density = 1.0;
  std::string precision = cleave::ToString(cleave::ValuePrecision::kFp32);
  bool per_sample = false;  // activations only
};

void AddCompressionFlags(CLI::App& app, const std::string& direction, const std::string& what,
                         CompressionFlags* flags) {
  app.add_option("--" + direction + "-compression", flags->method,
                 "Compression of " + what + ": " + cleave::MethodList())
      ->capture_default_str();
  app.add_option("--" + direction + "-density", flags->density,
                 "Fraction of " + what + " kept, in (0, 1]")
      ->capture_default_str();
  app.add_option("--" + direction + "-precision", flags->precision,
                 "Value precision of " + what + " on the wire: " + cleave::ValuePrecisionList() +
                     " (int8/int4: each block of 64 values scaled by its largest magnitude)")
      ->capture_default_str();
  if (direction == "act") {
    app.add_flag("--act-per-sample", flags->per_sample,
                 "Choose the kept activations in each sample (round(density x sample size) per "
                 "batch row) rather than over the whole batch");
  }
}

void Fill(const CompressionFlags& flags, cleave::v1::CompressionSettings* settings) {
  settings->set_method(flags.method);
  settings->set_density(flags.density);
  settings->set_value_precision(flags.precision);
  settings->set_per_sample(flags.per_sample);
}

// Every flag's destination; ServerOptions() turns them into the server's options.
struct Flags {
  std::string listen = "0.0.0.0:50051";
  std::string ca_path = "pki/ca.crt", cert_path = "pki/server.crt", key_path = "pki/server.key";
  bool insecure = false;
  cleave::ModelFlags model_flags;
  cleave::server::SplitServerOptions options;
  double max_message_mb = 64;
  std::string log_level = "info";
  CompressionFlags act, grad;
  CompressionFlags update{cleave::MethodName(cleave::Method::kGaussianKPlus), 0.1,
                          cleave::ToString(cleave::ValuePrecision::kFp32)};
  std::string allowlist_path;
  // Limits that keep one hostile hospital from flooding the server (see README).
  cleave::server::ListenOptions limits;
  double max_client_request_mb = 0, max_large_requests_mb = 0;
  std::string schedule = "single";
  double round_deadline_seconds = 600;
  std::string metrics_listen;
  std::string aggregation = "mean";
  double session_idle_seconds = 180;
  double linger_seconds = 300;  // after the last round; negative: until a signal
  std::string metrics_out;
};

// Where to listen, the certificates, who may join, and the limits against flooding.
void AddConnectionFlags(CLI::App& app, Flags* f) {
  auto& [listen, ca_path, cert_path, key_path, insecure, model_flags, options, max_message_mb,
         log_level, act, grad, update, allowlist_path, limits, max_client_request_mb,
         max_large_requests_mb, schedule, round_deadline_seconds, metrics_listen, aggregation,
         session_idle_seconds, linger_seconds, metrics_out] = *f;
  app.add_option("--listen", listen, "Address to listen on (port 0 picks a free port)")
      ->capture_default_str();
  app.add_option("--ca", ca_path, "CA certificate that signs client certificates (PEM)")
      ->capture_default_str();
  app.add_option("--cert", cert_path, "Server certificate (PEM)")->capture_default_str();
  app.add_option("--key", key_path, "Server private key (PEM)")->capture_default_str();
  app.add_flag("--insecure", insecure,
               "Plaintext without client authentication. For debugging only: anyone can connect");
  model_flags.Register(app);
  model_flags.RegisterScript(app, /*top=*/true);
  model_flags.RegisterSplitConfig(app);
  app.add_option_function<double>(
         "--middle-gradient-timeout",
         [&options](double seconds) {
           CLEAVE_CHECK_USER(seconds > 0, "--middle-gradient-timeout must be > 0");
           options.middle_gradient_timeout =
               std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
         },
         "u-shaped only: seconds a started step holds the server's middle waiting for the "
         "hospital's middle gradient; a later step drops it after that (default 30)");
  app.add_option("--clients", allowlist_path,
                 "Allowlist: one client name (certificate CN) per line; others are refused with "
                 "PERMISSION_DENIED even with a valid certificate");
  // Limits that keep one hostile hospital from flooding the server (see README).
  app.add_option("--max-threads", limits.max_threads,
                 "Threads serving calls; each open call holds one (a Train stream for its whole "
                 "life); calls beyond get RESOURCE_EXHAUSTED")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-streams-per-connection", limits.max_streams_per_connection,
                 "Calls one connection may have open at once; further calls wait on the client")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-calls-per-client", limits.max_calls_per_client,
                 "Calls one client (certificate CN) may have open at once; more get "
                 "RESOURCE_EXHAUSTED")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--psi-parties", limits.psi_parties,
                 "Relay a private set intersection of sample ids among N parties (cleave-psi; "
                 "vertical split learning); 0: none. The server sees only blinded points and "
                 "learns the set and intersection sizes")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  app.add_option("--max-client-request-mb", max_client_request_mb,
                 "MiB of one client's requests being processed at once (0: 2 x --max-message-mb)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--max-large-requests-mb", max_large_requests_mb,
                 "MiB of requests over 1 MiB being processed at once, all clients together (0: 4 "
                 "x --max-message-mb)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

// K-FAC's knobs (--optimizer kfac); the defaults and why: KfacOptions (kfac_preconditioner.h).
void AddKfacFlags(CLI::App& app, cleave::server::KfacOptions* kfac) {
  app.add_option("--kfac-damping", kfac->damping,
                 "K-FAC damping: eigenvalue products dg x da get this added before dividing")
      ->capture_default_str();
  app.add_option("--kfac-factor-decay", kfac->factor_decay,
                 "K-FAC running average of the factors: F = decay F + (1 - decay) F_batch, in "
                 "(0, 1]")
      ->capture_default_str();
  app.add_option("--kfac-factor-every", kfac->factor_every, "K-FAC: steps between factor updates")
      ->capture_default_str();
  app.add_option("--kfac-inverse-every", kfac->inverse_every,
                 "K-FAC: steps between eigendecompositions of the factors")
      ->capture_default_str();
  app.add_option("--kfac-kl-clip", kfac->kl_clip,
                 "K-FAC KL clip: the preconditioned gradients are scaled by min(1, sqrt(clip / "
                 "(lr^2 sum <g', g>)))")
      ->capture_default_str();
  app.add_option("--kfac-max-dim", kfac->max_dim,
                 "K-FAC: layers with a factor larger than this (rows) are left to plain SGD "
                 "(0: none); an eigendecomposition costs O(n^3)")
      ->capture_default_str();
}

// The server's layers, their checkpoint, message sizes and the link's compression.
void AddTrainingFlags(CLI::App& app, Flags* f) {
  auto& [listen, ca_path, cert_path, key_path, insecure, model_flags, options, max_message_mb,
         log_level, act, grad, update, allowlist_path, limits, max_client_request_mb,
         max_large_requests_mb, schedule, round_deadline_seconds, metrics_listen, aggregation,
         session_idle_seconds, linger_seconds, metrics_out] = *f;
  app.add_option("--optimizer", options.optimizer,
                 "Server-side optimizer: adam, adamw (decoupled weight decay), sgd (with "
                 "--momentum) or kfac (K-FAC preconditioning of the Linear and Conv2d layers, then "
                 "SGD with --momentum; see the --kfac-* flags)")
      ->check(CLI::IsMember({"adam", "adamw", "sgd", "kfac"}))
      ->capture_default_str();
  app.add_option("--lr", options.learning_rate,
                 "Learning rate of the server-side layers (kfac-pytorch uses 0.1 with K-FAC)")
      ->capture_default_str();
  app.add_option("--momentum", options.momentum, "Momentum of sgd and kfac, in [0, 1)")
      ->capture_default_str();
  AddKfacFlags(app, &options.kfac);
  cleave::AddOptimizerTuningFlags(app, "server-side", &options.weight_decay,
                                  &options.lr_schedule);
  app.add_option("--device", options.device, cleave::kDeviceFlagHelp)->capture_default_str();
  app.add_option("--seed", options.seed, "Seed of the server-side weight initialisation")
      ->capture_default_str();
  CLI::Option* checkpoint =
      app.add_option("--checkpoint", options.checkpoint_path,
                     "Checkpoint file of the server-side model and optimizer (written atomically)");
  app.add_option("--checkpoint-every", options.checkpoint_every,
                 "Write the checkpoint every N training steps (0: only at shutdown)")
      ->capture_default_str();
  app.add_flag("--resume", options.resume, "Load --checkpoint at start if it exists")
      ->needs(checkpoint);
  app.add_flag("--require-checkpoint", options.require_checkpoint,
               "With --resume: refuse to start when the checkpoint is missing");
  app.add_option("--save-top", options.save_top_path,
                 "With --top: write the trained half as TorchScript (with its metadata) here "
                 "whenever the checkpoint is written and at shutdown (atomically)")
      ->needs("--top");
  app.add_option("--max-message-mb", max_message_mb, "Largest gRPC message accepted or sent, MiB")
      ->capture_default_str();
  app.add_option("--max-batch", options.max_batch, "Largest batch a client may send")
      ->capture_default_str();
  AddCompressionFlags(app, "act", "activations (client to server)", &act);
  AddCompressionFlags(app, "grad", "gradients (server to client)", &grad);
  AddCompressionFlags(app, "update", "client-model weight deltas (rounds; with error feedback)",
                      &update);
}

// Rounds, aggregation, bounds on what hospitals send, sessions, metrics and logging.
void AddRoundFlags(CLI::App& app, Flags* f) {
  auto& [listen, ca_path, cert_path, key_path, insecure, model_flags, options, max_message_mb,
         log_level, act, grad, update, allowlist_path, limits, max_client_request_mb,
         max_large_requests_mb, schedule, round_deadline_seconds, metrics_listen, aggregation,
         session_idle_seconds, linger_seconds, metrics_out] = *f;
  app.add_option("--schedule", schedule, "single, sequential or splitfed (see above)")
      ->capture_default_str();
  app.add_option("--rounds", options.rounds.rounds,
                 "Rounds to run, then training ends (0: no limit)")
      ->capture_default_str();
  app.add_option("--round-samples", options.rounds.round_samples,
                 "Training samples (all hospitals together) that end a round")
      ->capture_default_str();
  app.add_option("--round-deadline", round_deadline_seconds,
                 "Seconds after which a round ends if --quorum updates are in (0: no deadline; a "
                 "hung hospital then holds its round up)")
      ->capture_default_str();
  app.add_option("--quorum", options.rounds.quorum,
                 "Updates a round waits for while other connected hospitals may still send one "
                 "(set it to 3 or more with a robust --aggregation); at the deadline a round ends "
                 "with at least this many, or with what its participants sent")
      ->capture_default_str();
  app.add_option("--min-clients", options.rounds.min_clients,
                 "Hospitals that must be connected before the first round starts")
      ->capture_default_str();
  app.add_option("--max-staleness", options.rounds.max_staleness,
                 "Oldest client-model version (in versions behind) whose updates and steps are "
                 "still applied, scaled by 1/(1+staleness)")
      ->capture_default_str();
  app.add_option("--aggregation", aggregation,
                 "How a round's client-model updates are combined: mean (weighted by samples), "
                 "clipped-mean (each update's norm clipped to --clip-factor x the round's median "
                 "norm, then the mean), median (coordinate-wise), trimmed-mean (coordinate-wise, "
                 "--trim-fraction dropped at each end), trust-mean (each update weighted by its "
                 "cosine with the coordinate-wise median, negatives dropped, and rescaled to the "
                 "median's norm: FLTrust's rule; best against sign-flipped updates). The robust "
                 "rules bound "
                 "what a faulty or hostile hospital can do to the shared model; use them with "
                 "--quorum 3 or more")
      ->check(CLI::IsMember({"mean", "clipped-mean", "median", "trimmed-mean", "trust-mean"}))
      ->capture_default_str();
  app.add_option(
         "--clip-factor", options.rounds.aggregation.clip_factor,
         "clipped-mean: the norm bound as a multiple of the round's median update norm (>= 1)")
      ->capture_default_str();
  app.add_option(
         "--trim-fraction", options.rounds.aggregation.trim_fraction,
         "trimmed-mean: fraction of values dropped at each end per coordinate, in [0, 0.5); "
         "at least one each end once 3 updates are in")
      ->capture_default_str();
  app.add_option("--max-activation-value", options.max_activation_abs,
                 "Largest magnitude of an activation value a hospital may send; larger ones are "
                 "refused (INVALID_ARGUMENT). 0: derived from the model at start, 1000 x the "
                 "largest cut activation of the initial client-side model on standard-normal "
                 "inputs, at least 100 (logged)")
      ->capture_default_str();
  app.add_option("--max-update-value", options.rounds.max_update_abs,
                 "Largest magnitude of a value in a client-model update; larger ones are refused. "
                 "0: derived, 100 x the largest initial client-side weight, at least 1 (logged)")
      ->capture_default_str();
  app.add_option("--session-idle", session_idle_seconds,
                 "Seconds without a call after which a session is released (0: never). Keep it "
                 "above the longest pause of an honest hospital (a Sync waits at most 30 s) and "
                 "below --round-deadline")
      ->capture_default_str();
  app.add_option("--max-sessions", options.max_sessions_per_identity,
                 "Sessions one hospital (certificate) may hold; a Join beyond it replaces its "
                 "oldest session (a restarted hospital takes over its own)")
      ->capture_default_str();
}

// When the server stops by itself, what it reports (metrics), and logging.
void AddEndAndOutputFlags(CLI::App& app, Flags* f) {
  app.add_option("--linger-after-rounds", f->linger_seconds,
                 "With --rounds: once the last round has closed, the server exits when every "
                 "hospital has left, or after this many seconds at the latest (hospitals still "
                 "evaluating then lose the server). Negative: keep serving until SIGINT/SIGTERM")
      ->capture_default_str();
  app.add_option("--metrics-listen", f->metrics_listen,
                 "Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 127.0.0.1:9464)");
  app.add_option("--metrics-out", f->metrics_out,
                 "At exit, write the final metrics (Prometheus text format) to this file");
  app.add_option("--log-level", f->log_level, "trace, debug, info, warn or error")
      ->capture_default_str();
}

// The flags' ranges, named by their flags (the libraries check them too, in their own terms).
void CheckRanges(const Flags& f) {
  const cleave::server::RoundOptions& rounds = f.options.rounds;
  CLEAVE_CHECK_USER(rounds.rounds >= 0, "--rounds must be >= 0");
  CLEAVE_CHECK_USER(rounds.round_samples >= 1, "--round-samples must be >= 1");
  CLEAVE_CHECK_USER(rounds.quorum >= 1, "--quorum must be >= 1");
  CLEAVE_CHECK_USER(rounds.min_clients >= 1, "--min-clients must be >= 1");
  CLEAVE_CHECK_USER(rounds.max_staleness >= 0, "--max-staleness must be >= 0");
  CLEAVE_CHECK_USER(rounds.max_update_abs >= 0, "--max-update-value must be >= 0");
  CLEAVE_CHECK_USER(f.options.max_activation_abs >= 0, "--max-activation-value must be >= 0");
  CLEAVE_CHECK_USER(f.options.max_sessions_per_identity >= 1, "--max-sessions must be >= 1");
  CLEAVE_CHECK_USER(f.options.momentum >= 0 && f.options.momentum < 1,
                    "--momentum must be in [0, 1), got ", f.options.momentum);
  if (f.options.optimizer == "kfac") cleave::server::CheckKfacOptions(f.options.kfac);
  CLEAVE_CHECK_USER(f.max_client_request_mb == 0 || f.max_client_request_mb >= f.max_message_mb,
                    "--max-client-request-mb must be at least --max-message-mb");
  CLEAVE_CHECK_USER(f.max_large_requests_mb == 0 || f.max_large_requests_mb >= f.max_message_mb,
                    "--max-large-requests-mb must be at least --max-message-mb");
  CLEAVE_CHECK_USER(f.limits.psi_parties != 1,
                    "--psi-parties must be 0 (off) or at least 2 parties");
}

// The parsed flags as the server's and the listener's options (files read, names checked).
void Resolve(Flags* f) {
  auto& [listen, ca_path, cert_path, key_path, insecure, model_flags, options, max_message_mb,
         log_level, act, grad, update, allowlist_path, limits, max_client_request_mb,
         max_large_requests_mb, schedule, round_deadline_seconds, metrics_listen, aggregation,
         session_idle_seconds, linger_seconds, metrics_out] = *f;
  cleave::SetupLogging(log_level);
  cleave::server::RouteGrpcLogsToSpdlog();
  options.model = model_flags.Spec();
  options.config = model_flags.Config();
  if (!allowlist_path.empty()) {
    options.allowed_clients = cleave::server::LoadClientAllowlist(allowlist_path);
    spdlog::info("{} client(s) on the allowlist", options.allowed_clients.size());
  }
  options.max_message_bytes = static_cast<int64_t>(max_message_mb * 1024 * 1024);
  Fill(act, options.compression.mutable_activations());
  Fill(grad, options.compression.mutable_gradients());
  Fill(update, options.compression.mutable_updates());
  options.rounds.schedule = cleave::server::ParseSchedule(schedule);
  options.rounds.aggregation.method = cleave::server::ParseAggregation(aggregation);
  CLEAVE_CHECK_USER(session_idle_seconds >= 0, "--session-idle must be >= 0");
  options.session_idle_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(session_idle_seconds * 1000));
  CLEAVE_CHECK_USER(round_deadline_seconds >= 0, "--round-deadline must be >= 0");
  options.rounds.round_deadline =
      std::chrono::milliseconds(static_cast<int64_t>(round_deadline_seconds * 1000));

  CheckRanges(*f);
  if (options.rounds.rounds > 0 && options.rounds.schedule != cleave::server::Schedule::kSingle &&
      options.checkpoint_path.empty()) {
    spdlog::warn(
        "--rounds without --checkpoint: the trained model is not kept when the server "
        "exits");
  }

  cleave::server::ListenOptions& listen_options = f->limits;
  listen_options.address = listen;
  listen_options.allowed_clients = options.allowed_clients;
  listen_options.max_client_request_bytes =
      static_cast<int64_t>(max_client_request_mb * 1024 * 1024);
  listen_options.max_large_request_bytes =
      static_cast<int64_t>(max_large_requests_mb * 1024 * 1024);
  listen_options.insecure = insecure;
  listen_options.max_message_bytes = options.max_message_bytes;
  if (insecure) {
    spdlog::warn(
        "--insecure: plaintext, no client authentication; anyone who can reach {} can "
        "train on this model. Use only for local debugging.",
        listen);
  } else {
    listen_options.tls = cleave::LoadTlsFiles(ca_path, cert_path, key_path);
  }
}

// Waits for SIGINT/SIGTERM or, with a round limit and `linger_seconds` >= 0, for the end of the
// server's work (SplitServer::FinishedServing). Checked a few times a second: the signals are
// blocked in every thread, so this thread takes them with sigtimedwait between the checks.
bool WaitForStop(const sigset_t& stop_signals, const cleave::server::SplitServer& server,
                 double linger_seconds) {
  const timespec tick{0, 200 * 1000 * 1000};
  const auto linger = std::chrono::milliseconds(static_cast<int64_t>(linger_seconds * 1000));
  while (true) {
    const int signal_number = sigtimedwait(&stop_signals, nullptr, &tick);
    if (signal_number == SIGINT || signal_number == SIGTERM) {
      spdlog::info("received {}, shutting down", signal_number == SIGINT ? "SIGINT" : "SIGTERM");
      return true;
    }
    if (const std::string ended = server.replicas_ended(); !ended.empty()) {
      spdlog::error("the replica group ended: {}; shutting down (restart the group)", ended);
      return false;
    }
    std::string why;
    if (linger_seconds >= 0 &&
        server.FinishedServing(std::chrono::steady_clock::now(), linger, &why)) {
      spdlog::info("{}: shutting down", why);
      return true;
    }
  }
}

// Serves until SIGINT/SIGTERM or the end of its rounds, then writes the checkpoint (and the final
// metrics).
int Serve(const Flags& f) {
  // Block the stop signals in every thread; the main thread waits for them with sigtimedwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // Bind the metrics port (and create the metrics file) first: a bad address or path fails
  // before the model is built.
  std::unique_ptr<cleave::server::MetricsExporter> metrics;
  if (!f.metrics_listen.empty() || !f.metrics_out.empty()) {
    metrics = std::make_unique<cleave::server::MetricsExporter>(f.metrics_listen);
  }
  if (!f.metrics_out.empty()) cleave::WriteFileAtomic(f.metrics_out, "");
  cleave::server::SplitServer server(f.options);
  if (metrics) server.SetObserver(metrics.get());
  if (!f.metrics_listen.empty()) {
    spdlog::info("Prometheus metrics at http://{}/metrics (port {})", f.metrics_listen,
                 metrics->port());
  }
  cleave::server::GrpcServer grpc_server(server, f.limits);
  std::printf("cleave-server listening on port %d\n", grpc_server.port());
  std::fflush(stdout);

  const bool clean = WaitForStop(stop_signals, server, f.linger_seconds);
  grpc_server.Shutdown();
  server.SaveCheckpoint();
  server.SetObserver(nullptr);
  if (!f.metrics_out.empty()) {
    cleave::WriteFileAtomic(f.metrics_out, metrics->Text());
    spdlog::info("final metrics written to '{}'", f.metrics_out);
  }
  spdlog::info("stopped after {} steps; received {} bytes, sent {} bytes", server.step(),
               server.bytes_received(), server.bytes_sent());
  return clean ? 0 : 3;
}

// The vertical configuration's settings (--config itself is ModelFlags::RegisterSplitConfig).
struct ConfigFlags {
  int parties = 2;
  std::string join = "concat";
  int label_holder = 0;
  int64_t party_timeout_ms = 30000;
  std::string label_defence = "none";
  double label_defence_strength = 1.0;
};

void AddConfigFlags(CLI::App& app, ConfigFlags* f) {
  app.add_option("--parties", f->parties, "Vertical: number of parties (1..64)")
      ->capture_default_str();
  app.add_option("--join", f->join,
                 "Vertical: how the parties' cut activations are joined: concat (along a "
                 "sample's first dimension, in party order) or sum")
      ->check(CLI::IsMember({"concat", "sum"}))
      ->capture_default_str();
  app.add_option("--label-holder", f->label_holder, "Vertical: the party that sends the labels")
      ->capture_default_str();
  app.add_option("--party-timeout-ms", f->party_timeout_ms,
                 "Vertical: how long a step waits for every party before it fails for the "
                 "parties waiting (DEADLINE_EXCEEDED)")
      ->capture_default_str();
  app.add_option("--label-defence", f->label_defence,
                 "Vertical: what the server does to the gradient slice it returns to each party "
                 "other than --label-holder, against label inference by those parties: none, "
                 "clip (each sample's norm to at most X x the batch's median norm) or noise "
                 "(seeded Gaussian, norm about X x the median norm). Cost and effect: "
                 "docs/LEAKAGE.md")
      ->check(CLI::IsMember({"none", "clip", "noise"}))
      ->capture_default_str();
  app.add_option("--label-defence-strength", f->label_defence_strength,
                 "X of --label-defence (finite, > 0)")
      ->capture_default_str();
}

void ApplyConfigFlags(const ConfigFlags& f, cleave::server::SplitServerOptions* options) {
  options->vertical.parties = f.parties;
  options->vertical.join = cleave::server::ParseJoinMode(f.join);
  options->vertical.label_holder = f.label_holder;
  CLEAVE_CHECK_USER(f.party_timeout_ms > 0, "--party-timeout-ms must be positive");
  options->vertical.party_timeout = std::chrono::milliseconds(f.party_timeout_ms);
  options->vertical.label_defence.kind = cleave::privacy::ParseGradientDefenceKind(f.label_defence);
  options->vertical.label_defence.strength = f.label_defence_strength;
  CLEAVE_CHECK_USER(f.label_defence == "none" || options->config == cleave::SplitConfig::kVertical,
                    "--label-defence on the server needs --config vertical (u-shaped: the "
                    "hospital's cleave-client --label-defence defends what it sends)");
  CLEAVE_CHECK_USER(std::isfinite(f.label_defence_strength) && f.label_defence_strength > 0,
                    "--label-defence-strength must be finite and > 0, got ",
                    f.label_defence_strength);
}

// Replicas of the server (replica_group.h).
struct ReplicaFlags {
  std::string rendezvous;
  int64_t timeout_ms = 30000;
  int64_t idle_us = 2000;
};

void AddReplicaFlags(CLI::App& app, ReplicaFlags* f, cleave::server::SplitServerOptions* options) {
  app.add_option("--replicas", options->replicas.replicas,
                 "Replicas of this server that train the top in lockstep (1: none)")
      ->capture_default_str();
  app.add_option("--replica-rank", options->replicas.rank,
                 "This replica's rank in [0, --replicas); rank 0 hosts the rendezvous store and "
                 "its model is copied to the others at start")
      ->capture_default_str();
  app.add_option("--rendezvous", f->rendezvous,
                 "HOST:PORT of the rendezvous store (c10d TCPStore) on rank 0; rank 0 listens on "
                 "PORT on all addresses (no authentication: a private network only)");
  app.add_option("--replica-interface", options->replicas.interface,
                 "Interface name (e.g. eth1) or address of this machine on the replicas' private "
                 "network, where Gloo (plain TCP) listens")
      ->capture_default_str();
  app.add_option("--replica-timeout-ms", f->timeout_ms,
                 "How long the rendezvous and each allreduce wait for the other replicas before "
                 "the group ends with an error naming the replica that is missing")
      ->capture_default_str();
  app.add_option("--replica-idle-us", f->idle_us,
                 "How long a replica with no pending step waits for one before it joins the "
                 "group's step with zero weight")
      ->capture_default_str();
}

void ApplyReplicaFlags(const ReplicaFlags& f, cleave::server::SplitServerOptions* options) {
  cleave::server::ReplicaGroupOptions& replicas = options->replicas;
  CLEAVE_CHECK_USER(f.timeout_ms > 0, "--replica-timeout-ms must be positive");
  CLEAVE_CHECK_USER(f.idle_us > 0 && f.idle_us <= 10'000'000,
                    "--replica-idle-us must be in [1, 10000000]");
  replicas.timeout = std::chrono::milliseconds(f.timeout_ms);
  options->replica_idle_tick = std::chrono::microseconds(f.idle_us);
  if (!f.rendezvous.empty()) cleave::server::ParseRendezvous(f.rendezvous, "--rendezvous", replicas);
  cleave::server::ValidateReplicaOptions(replicas);
  CLEAVE_CHECK_USER(replicas.replicas == 1 || !f.rendezvous.empty(), "--replicas ",
                    replicas.replicas, " needs --rendezvous HOST:PORT");
}

// Merged steps (vanilla only; server/include/cleave/server/step_merger.h).
struct MergeFlags {
  int64_t max_batch = 0;
  int64_t wait_us = 0;
};

void AddMergeFlags(CLI::App& app, MergeFlags* f) {
  app.add_option("--merge-max-batch", f->max_batch,
                 "Vanilla only: merge the steps of hospitals waiting at the same time into one "
                 "step of the server's layers, of at most N samples (one optimizer step for "
                 "their samples: a bigger batch, fewer steps per epoch); with --replicas, each "
                 "replica's step merges the steps waiting on it; 0: off")
      ->capture_default_str();
  app.add_option("--merge-wait-us", f->wait_us,
                 "With --merge-max-batch: the longest the first waiting step waits for company, "
                 "in microseconds (0..1000000; not waited once every hospital's step is in)")
      ->capture_default_str();
}

void ApplyMergeFlags(const MergeFlags& f, cleave::server::SplitServerOptions* options) {
  options->merge.max_batch = f.max_batch;
  options->merge.max_wait = std::chrono::microseconds(f.wait_us);
  cleave::server::ValidateStepMergerOptions(options->merge);
  CLEAVE_CHECK_USER(options->merge.max_batch == 0 || options->config == cleave::SplitConfig::kVanilla,
                    "--merge-max-batch applies to the vanilla configuration, not --config ",
                    cleave::SplitConfigName(options->config));
}

int Run(int argc, char** argv) {
  CLI::App app(kDescription, "cleave-server");
  app.get_formatter()->column_width(36);
  Flags flags;
  AddConnectionFlags(app, &flags);
  AddTrainingFlags(app, &flags);
  AddRoundFlags(app, &flags);
  AddEndAndOutputFlags(app, &flags);
  ConfigFlags config;
  AddConfigFlags(app, &config);
  ReplicaFlags replicas;
  AddReplicaFlags(app, &replicas, &flags.options);
  MergeFlags merge;
  AddMergeFlags(app, &merge);
  if (const auto code = cleave::ParseCommandLine(app, argc, argv)) return *code;
  Resolve(&flags);
  ApplyConfigFlags(config, &flags.options);
  ApplyReplicaFlags(replicas, &flags.options);
  ApplyMergeFlags(merge, &flags.options);
  return Serve(flags);
}

}  // namespace

int main(int argc, char** argv) {
  return cleave::RunCommand("cleave-server", [&] { return Run(argc, argv); });
}
