// The server's side of vertical split learning (--config vertical): N parties hold different
// features of the same samples, each runs its own bottom, and the server joins their cut
// activations (vertical_join.h), runs its top and sends each party its slice of the gradient.
// One party (--label-holder) sends the labels; the others never see the loss or the accuracy.
// A step, or an evaluation batch, waits for every party (party_rendezvous.h) up to the party
// timeout. What each party sends is decoded and checked with its own cut shape and the link's
// compression, exactly as a vanilla client's; its gradient is compressed the same way, after
// the label defence (VerticalOptions::label_defence) for every party that lacks the labels.
// SplitServer owns one when its configuration is vertical; nothing here knows gRPC.
#pragma once

#include <ATen/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cleave/privacy/gradient_defence.h"
#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/server/party_rendezvous.h"
#include "cleave/server/top_model.h"
#include "cleave/server/vertical_join.h"

namespace cleave::server {

struct VerticalOptions {
  int parties = 2;
  JoinMode join = JoinMode::kConcat;
  int label_holder = 0;  // the party that sends the labels
  std::chrono::milliseconds party_timeout{30000};
  // Applied to the gradient slice of every party but the label holder before it is encoded
  // (noise seeded per party from the server's seed), against label inference by those parties.
  // The label holder's own slice is not defended: it tells that party nothing it lacks.
  privacy::GradientDefence label_defence;
};

class VerticalTraining {
 public:
  // `top_shape`: the per-sample input of the server's top; `activation_bound`: the largest
  // activation value a party may send.
  VerticalTraining(VerticalOptions options, const protocol::LinkSpec& link,
                   std::vector<int64_t> top_shape, int64_t max_batch, double activation_bound,
                   int64_t num_classes, uint64_t seed);
  ~VerticalTraining();

  // At Join: throws Refusal kMismatch for a party index out of range or a cut shape the join
  // cannot take, kNotAllowed for a party index another identity holds (or an identity that holds
  // another). A party that joins again keeps its index.
  void Admit(const std::string& identity, const v1::JoinRequest& request);
  // What the Join reply tells every party.
  void Describe(v1::ServerConfig* told, uint64_t batch_seed) const;

  struct TopStep {
    TopModel::Step step;
    int64_t server_step = 0;
  };
  // Runs the top on the joined activations and the label holder's labels (under the caller's
  // lock): a training step, or an evaluation.
  using RunTop = std::function<TopStep(const at::Tensor& joined, const at::Tensor& labels)>;
  using EvaluateTop =
      std::function<TopModel::Evaluation(const at::Tensor& joined, const at::Tensor& labels)>;

  // One party's step: blocks until every party sent this step (or the timeout: Refusal
  // kPartyMissing). Throws InvalidInput for what the party sent.
  v1::TrainReply Train(const std::string& identity, const v1::TrainRequest& request,
                       const RunTop& run_top);
  // One party's part of an evaluation batch: only the label holder's reply carries the loss and
  // the counts; the others learn only the batch's size.
  v1::EvaluateReply Evaluate(const std::string& identity, const v1::EvaluateRequest& request,
                             const EvaluateTop& evaluate_top);

  const VerticalOptions& options() const { return options_; }

 private:
  struct Party;
  struct Sent {
    protocol::ReceivedActivations activations;
    at::Tensor labels;  // undefined for all but the label holder
  };
  struct StepShare {
    at::Tensor gradient;
    TopModel::Step step;
    int64_t server_step = 0;
  };
  // The party `identity` holds (kNotAllowed if none; shared: a Join of the same party replaces
  // it while a step of the old one may still run) and what it sent, decoded and checked.
  std::shared_ptr<Party> PartyOf(const std::string& identity);
  // The defender of party `index`'s gradient (under parties_mutex_); null for the label holder.
  std::shared_ptr<privacy::GradientDefender> LabelDefenderOf(int index);
  Sent Decode(const Party& party, const v1::Tensor& activations, const v1::Tensor& labels,
              bool has_labels) const;
  std::vector<StepShare> RunStep(std::vector<Sent>& sent, const RunTop& run_top) const;
  std::vector<TopModel::Evaluation> RunEvaluation(std::vector<Sent>& sent,
                                                  const EvaluateTop& evaluate_top) const;
  at::Tensor Join(const std::vector<Sent>& sent, std::vector<at::Tensor>* parts) const;

  VerticalOptions options_;
  protocol::LinkSpec link_;
  std::vector<int64_t> top_shape_;
  int64_t max_batch_;
  double activation_bound_;
  int64_t num_classes_;
  uint64_t seed_;
  std::mutex parties_mutex_;  // guards parties_ (each Party's codecs are its own thread's)
  std::map<int, std::shared_ptr<Party>> parties_;
  // Each passive party's label defender, kept across its Joins so its noise never repeats.
  std::map<int, std::shared_ptr<privacy::GradientDefender>> label_defenders_;
  PartyRendezvous<Sent, StepShare> steps_;
  PartyRendezvous<Sent, TopModel::Evaluation> evaluations_;
};

}  // namespace cleave::server
