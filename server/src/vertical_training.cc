#include "cleave/server/vertical_training.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <map>

#include "cleave/core/error.h"
#include "cleave/core/peer_text.h"
#include "cleave/protocol/version.h"
#include "cleave/server/refusal.h"
#include "cleave/server/step_codec.h"

namespace cleave::server {

struct VerticalTraining::Party {
  int index = 0;
  std::string identity;
  std::vector<int64_t> cut_shape;
  std::unique_ptr<protocol::ActivationDecoder> activations;
  std::unique_ptr<protocol::GradientEncoder> gradients;
};

VerticalTraining::VerticalTraining(VerticalOptions options, const protocol::LinkSpec& link,
                                   std::vector<int64_t> top_shape, int64_t max_batch,
                                   double activation_bound, int64_t num_classes, uint64_t seed)
    : options_(options),
      link_(link),
      top_shape_(std::move(top_shape)),
      max_batch_(max_batch),
      activation_bound_(activation_bound),
      num_classes_(num_classes),
      seed_(seed),
      steps_(options.parties, options.party_timeout, "step"),
      evaluations_(options.parties, options.party_timeout, "evaluation batch") {
  CLEAVE_CHECK_USER(options_.parties >= 1 && options_.parties <= 64,
                    "--parties must be in 1..64, got ", options_.parties);
  CLEAVE_CHECK_USER(options_.label_holder >= 0 && options_.label_holder < options_.parties,
                    "--label-holder must be a party in 0..", options_.parties - 1, ", got ",
                    options_.label_holder);
  CLEAVE_CHECK_USER(options_.party_timeout.count() > 0, "--party-timeout-ms must be positive");
  CLEAVE_CHECK_USER(
      options_.join != JoinMode::kConcat || top_shape_.empty() || top_shape_[0] >= options_.parties,
      "concat of ", options_.parties, " parties needs a top input of at least ", options_.parties,
      " along its first dimension");
}

VerticalTraining::~VerticalTraining() = default;

void VerticalTraining::Admit(const std::string& identity, const v1::JoinRequest& request) {
  const int index = request.vertical_party();
  if (index < 0 || index >= options_.parties) {
    throw Refusal(RefusalKind::kMismatch,
                  detail::Concat("party ", index, " is not one of this server's ", options_.parties,
                                 " parties (0..", options_.parties - 1, ")"));
  }
  const std::vector<int64_t> shape(request.vertical_cut_shape().begin(),
                                   request.vertical_cut_shape().end());
  CheckPartyCutShape(options_.join, shape, top_shape_, index);
  std::lock_guard<std::mutex> lock(parties_mutex_);
  std::map<int, int64_t> widths = {{index, shape[0]}};
  for (const auto& [other, party] : parties_) {
    if ((other == index) != (party->identity == identity)) {
      throw Refusal(RefusalKind::kNotAllowed,
                    detail::Concat("'", PeerText(party->identity), "' is party ", other, "; '",
                                   PeerText(identity), "' cannot be party ", index));
    }
    if (other != index) widths[other] = party->cut_shape[0];
  }
  if (options_.join == JoinMode::kConcat) {
    CheckConcatWidths(widths, options_.parties, top_shape_, index);
  }
  auto party = std::make_shared<Party>();
  party->index = index;
  party->identity = identity;
  party->cut_shape = shape;
  party->activations = std::make_unique<protocol::ActivationDecoder>(
      link_.activations, ActivationTensorSpec(shape, max_batch_, activation_bound_));
  party->gradients = std::make_unique<protocol::GradientEncoder>(link_.gradients, seed_ + index);
  parties_[index] = std::move(party);
  spdlog::info("'{}' is party {} of {} (cut layer {}{})", PeerText(identity), index,
               options_.parties, protocol::ShapeToString(shape),
               index == options_.label_holder ? ", holds the labels" : "");
}

void VerticalTraining::Describe(v1::ServerConfig* told, uint64_t batch_seed) const {
  told->set_vertical_parties(options_.parties);
  told->set_vertical_join(JoinModeName(options_.join));
  told->set_vertical_label_holder(options_.label_holder);
  told->set_vertical_batch_seed(batch_seed);
  told->set_vertical_party_timeout_ms(options_.party_timeout.count());
}

std::shared_ptr<VerticalTraining::Party> VerticalTraining::PartyOf(const std::string& identity) {
  std::lock_guard<std::mutex> lock(parties_mutex_);
  for (auto& [index, party] : parties_) {
    if (party->identity == identity) return party;
  }
  throw Refusal(RefusalKind::kNotAllowed,
                detail::Concat("'", PeerText(identity), "' is not a party of this server"));
}

VerticalTraining::Sent VerticalTraining::Decode(const Party& party, const v1::Tensor& activations,
                                                const v1::Tensor& labels, bool has_labels) const {
  Sent sent;
  sent.activations = party.activations->Decode(activations);
  const bool holder = party.index == options_.label_holder;
  if (!holder) {
    CLEAVE_CHECK_INPUT(!has_labels, "party ", party.index, " sent labels; party ",
                       options_.label_holder, " holds them");
    return sent;
  }
  CLEAVE_CHECK_INPUT(has_labels, "party ", party.index, " holds the labels but sent none");
  sent.labels = protocol::DecodeTensor(labels, LabelTensorSpec(max_batch_, num_classes_)).dense;
  CLEAVE_CHECK_INPUT(sent.labels.size(0) == sent.activations.dense.size(0), "labels have batch ",
                     sent.labels.size(0), ", activations ", sent.activations.dense.size(0));
  return sent;
}

at::Tensor VerticalTraining::Join(const std::vector<Sent>& sent,
                                  std::vector<at::Tensor>* parts) const {
  for (const Sent& one : sent) parts->push_back(one.activations.dense);
  return JoinActivations(options_.join, *parts, top_shape_);
}

std::vector<VerticalTraining::StepShare> VerticalTraining::RunStep(std::vector<Sent>& sent,
                                                                   const RunTop& run_top) const {
  std::vector<at::Tensor> parts;
  const at::Tensor joined = Join(sent, &parts);
  const TopStep top = run_top(joined, sent[options_.label_holder].labels);
  const std::vector<at::Tensor> gradients =
      SplitGradient(options_.join, top.step.cut_gradient, parts);
  std::vector<StepShare> shares(sent.size());
  for (size_t p = 0; p < sent.size(); ++p) {
    shares[p].gradient = gradients[p];
    shares[p].server_step = top.server_step;
    if (static_cast<int>(p) == options_.label_holder) shares[p].step = top.step;
  }
  return shares;
}

v1::TrainReply VerticalTraining::Train(const std::string& identity, const v1::TrainRequest& request,
                                       const RunTop& run_top) {
  const std::shared_ptr<Party> held = PartyOf(identity);
  Party& party = *held;
  Sent sent = Decode(party, request.activations(), request.labels(), request.has_labels());
  const protocol::SentPositions positions = sent.activations.sent;
  const StepShare share =
      steps_.Meet(request.step(), party.index, std::move(sent),
                  [&](std::vector<Sent>& all) { return RunStep(all, run_top); });
  v1::TrainReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_step(request.step());
  reply.set_model_version(request.model_version());
  reply.set_server_step(share.server_step);
  reply.set_loss(share.step.loss);  // 0 for all but the label holder
  reply.set_correct(share.step.correct);
  party.gradients->Encode(share.gradient, positions, reply.mutable_gradients());
  return reply;
}

std::vector<TopModel::Evaluation> VerticalTraining::RunEvaluation(
    std::vector<Sent>& sent, const EvaluateTop& evaluate_top) const {
  std::vector<at::Tensor> parts;
  const at::Tensor joined = Join(sent, &parts);
  std::vector<TopModel::Evaluation> results(sent.size());
  results[options_.label_holder] = evaluate_top(joined, sent[options_.label_holder].labels);
  return results;
}

v1::EvaluateReply VerticalTraining::Evaluate(const std::string& identity,
                                             const v1::EvaluateRequest& request,
                                             const EvaluateTop& evaluate_top) {
  const std::shared_ptr<Party> held = PartyOf(identity);
  Party& party = *held;
  Sent sent = Decode(party, request.activations(), request.labels(), request.has_labels());
  const int64_t count = sent.activations.dense.size(0);
  const TopModel::Evaluation evaluation =
      evaluations_.Meet(request.vertical_batch(), party.index, std::move(sent),
                        [&](std::vector<Sent>& all) { return RunEvaluation(all, evaluate_top); });
  v1::EvaluateReply reply;
  reply.set_protocol_version(protocol::kProtocolVersion);
  reply.set_count(count);
  if (party.index == options_.label_holder) {
    reply.set_loss_sum(evaluation.loss_sum);
    reply.set_correct(evaluation.correct);
    reply.mutable_correct_per_class()->Add(evaluation.correct_per_class.begin(),
                                           evaluation.correct_per_class.end());
  }
  return reply;
}

}  // namespace cleave::server
