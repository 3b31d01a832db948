// Replicas of the server's top model kept identical across cleave-server processes: a group on
// c10d's ProcessGroupGloo (rendezvous through c10d's TCPStore, hosted by rank 0). Every replica
// must call the collectives below the same number of times, in the same order (a replica with
// no work joins with zero weight): ReplicatedStepper (replicated_stepper.h) keeps that clock.
// Gloo is plain TCP and TCPStore has no authentication: replicas belong on a private network,
// and `interface` says where Gloo listens. A peer that dies or stops answering makes the next
// collective throw ReplicaFailure within `timeout` (never a hang); the group is then unusable.
// c10d and gloo stay out of this header (pimpl).
#pragma once

#include <ATen/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cleave/core/error.h"

namespace cleave::server {

struct ReplicaGroupOptions {
  int replicas = 1;  // the group's size W
  int rank = 0;      // this replica, in [0, W); rank 0 hosts the rendezvous store
  // Where the store listens (rank 0 binds `port` on all addresses; the others connect to
  // host:port). Port 0 on rank 0 picks a free one (see on_store_listening).
  std::string rendezvous_host = "127.0.0.1";
  uint16_t rendezvous_port = 0;
  // What Gloo binds to: an interface name ("lo", "eth1") or a host name or address of this
  // machine on the replicas' private network.
  std::string interface = "127.0.0.1";
  // Longest a rendezvous or one collective waits for the other replicas.
  std::chrono::milliseconds timeout{30000};
  // Rank 0 only: called with the store's port once it listens, before waiting for the others
  // (tests pass port 0 and hand the port to the other ranks from here).
  std::function<void(uint16_t)> on_store_listening;
};

// A replica died, stopped answering within the timeout, or the rendezvous failed. what() says
// this replica's rank, the collective, and what is known about the others.
class ReplicaFailure : public Error {
 public:
  using Error::Error;
};

// Parses "HOST:PORT" (UserError naming `flag` when it is not one).
void ParseRendezvous(const std::string& text, const std::string& flag, ReplicaGroupOptions& into);
// Checks the options (UserError: W < 1, rank outside [0, W), empty interface, timeout <= 0).
void ValidateReplicaOptions(const ReplicaGroupOptions& options);

class ReplicaGroup {
 public:
  // Rendezvous with the other W-1 replicas; throws ReplicaFailure when they do not all arrive
  // within the timeout, UserError for bad options.
  explicit ReplicaGroup(ReplicaGroupOptions options);
  ~ReplicaGroup();
  ReplicaGroup(const ReplicaGroup&) = delete;
  ReplicaGroup& operator=(const ReplicaGroup&) = delete;

  int rank() const { return options_.rank; }
  int size() const { return options_.replicas; }
  // Collectives this replica has completed (the step clock's position).
  int64_t collectives() const { return sequence_; }

  // Copies rank `root`'s tensors into every replica's (same count, shapes and dtypes on all;
  // checked: a mismatch is ReplicaFailure on every rank). One flat buffer per dtype.
  void Broadcast(std::vector<at::Tensor>& tensors, int root = 0);
  // Rank `root`'s bytes on every replica (the others' `bytes` are replaced).
  void BroadcastBytes(std::string& bytes, int root = 0);
  // Element-wise sums of `values` over the replicas (doubles: exact for counts and votes; the
  // same length on every replica).
  std::vector<double> AllReduceSums(const std::vector<double>& values);
  // Weighted gradient average: each replica contributes grads * local_weight (local_weight >= 0;
  // 0 for a replica that had no work, whose grads are then ignored); afterwards every replica's
  // grads hold sum(w_r * g_r) / sum(w_r), bit-identical on all. Returns sum(w_r); when it is 0
  // the grads are left at 0 and nobody should step. The grads (all one floating dtype, any
  // device) travel as one flat buffer with the weight appended.
  double AllReduceGradients(const std::vector<at::Tensor>& grads, double local_weight);

 private:
  struct Impl;
  // Runs one collective; a failure becomes ReplicaFailure naming `what` and the laggards.
  void Run(const char* what, const std::function<void()>& collective);
  std::string DescribeOthers();

  ReplicaGroupOptions options_;
  int64_t sequence_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cleave::server
