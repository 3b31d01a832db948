// A SplitLink between a trainer and its link that records what crosses it for the label-leakage
// measurement (recorded_label_leakage.h) and, when asked, applies a gradient defence to a
// gradient on its way, as the party sending it would: the U-shaped middle gradient the hospital
// sends, or the gradient the server returns to a vertical passive party. Messages must be dense
// (the measurement runs an uncompressed link); anything else is an Error.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <vector>

#include "cleave/privacy/gradient_defence.h"
#include "cleave/protocol/split_link.h"

namespace cleave::leakage {

// What crossed, in the order it crossed.
struct WireRecord {
  int64_t train_requests = 0;              // Train requests carrying activations (first message)
  int64_t train_requests_with_labels = 0;  // of them, those that carried labels
  std::vector<at::Tensor> labels;          // with Options::record_labels: the labels sent
  std::vector<at::Tensor> reply_gradients;  // with record_reply_gradients: dL/da received
};

class WireRecorder final : public protocol::SplitLink {
 public:
  struct Options {
    bool record_labels = false;
    bool record_reply_gradients = false;  // recorded after defend_reply_gradient
    privacy::GradientDefence defend_middle_gradient;  // U-shaped: on the request's dL/da2
    privacy::GradientDefence defend_reply_gradient;   // on the reply's dL/da
    uint64_t seed = 1;                                // of the defences' noise, per step
  };
  // `inner` and `record` must outlive this link.
  WireRecorder(protocol::SplitLink& inner, Options options, WireRecord* record);

  v1::JoinReply Join(const v1::JoinRequest& request) override { return inner_.Join(request); }
  void OpenTrainStream() override { inner_.OpenTrainStream(); }
  v1::TrainReply TrainStep(const v1::TrainRequest& request) override;
  void CloseTrainStream() override { inner_.CloseTrainStream(); }
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request) override {
    return inner_.Evaluate(request);
  }
  void Leave(const v1::LeaveRequest& request) override { inner_.Leave(request); }
  v1::SyncReply Sync(const v1::SyncRequest& request) override { return inner_.Sync(request); }
  v1::UpdateReply SubmitUpdate(const v1::UpdateRequest& request) override {
    return inner_.SubmitUpdate(request);
  }

 private:
  // Decodes a dense message, applies `defence` (noise seeded per call) and encodes it back.
  void Defend(const privacy::GradientDefence& defence, v1::Tensor* message);

  protocol::SplitLink& inner_;
  Options options_;
  WireRecord* record_;
  uint64_t defended_ = 0;  // messages defended so far: the noise seed's counter
};

// The tensor of a dense wire message (float32 or int64), checked as any received tensor is.
at::Tensor DecodeDenseMessage(const v1::Tensor& message);

}  // namespace cleave::leakage
