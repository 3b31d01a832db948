// What distributed K-FAC needs from the replicas of the server (Pauloski et al., SC20): averaging
// the Kronecker factors over the replicas, and spreading the eigendecompositions over them layer
// by layer (each layer's computed by one replica and broadcast). A single server is
// LocalKfacCommunicator: nothing to average, every layer its own. A replica group (c10d's
// ProcessGroupGloo) implements the same calls.
#pragma once

#include <ATen/Tensor.h>

#include <vector>

namespace cleave::server {

class KfacCommunicator {
 public:
  virtual ~KfacCommunicator() = default;
  // Averages every tensor over the replicas, in place (the running factors of a factor step; all
  // replicas pass the same list in the same order).
  virtual void ReduceFactors(std::vector<at::Tensor>& factors) = 0;
  // The replica that computes the eigendecompositions of layer `layer` (0-based, of `layers`).
  virtual int EigenOwner(int layer, int layers) const = 0;
  // This replica's rank.
  virtual int rank() const = 0;
  // Copies `tensors` of replica `owner` into the same tensors of every replica, in place.
  virtual void Broadcast(std::vector<at::Tensor>& tensors, int owner) = 0;
};

class LocalKfacCommunicator final : public KfacCommunicator {
 public:
  void ReduceFactors(std::vector<at::Tensor>&) override {}
  int EigenOwner(int, int) const override { return 0; }
  int rank() const override { return 0; }
  void Broadcast(std::vector<at::Tensor>&, int) override {}
};

}  // namespace cleave::server
