// The hospital's side of U-shaped split learning (config "u-shaped"): besides the bottom it runs
// the tail (the model's last blocks) on the middle's output the server returns, computes the loss
// on its own labels, and sends d loss / d middle output back. Labels never leave the hospital.
// Here: the tail's computations, and the codecs of the two directions U-shaped adds (the middle's
// output down, with the link's `activations` settings; its gradient up, with the `gradients`
// settings relative to the positions the output took), with the bytes of all four directions.
#pragma once

#include <ATen/Tensor.h>
#include <torch/nn/modules/container/sequential.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "cleave/privacy/gradient_defence.h"
#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/link_spec.h"

namespace cleave::client {

// Largest magnitude of a middle output value the hospital accepts from the server.
inline constexpr double kMaxMiddleOutputAbs = 1e6;

struct DirectionBytes {
  int64_t messages = 0;    // protobuf bytes of the messages that carried this direction
  int64_t dense_fp32 = 0;  // what its tensors would take as dense fp32
};

// The four directions of a U-shaped step (training and, for the first two, evaluation).
struct UShapedBytes {
  DirectionBytes activations_up;      // a1: Train requests (first) and Evaluate requests
  DirectionBytes middle_output_down;  // a2: Train replies (first) and Evaluate replies
  DirectionBytes middle_gradient_up;  // d loss / d a2: Train requests (second)
  DirectionBytes gradient_down;       // d loss / d a1: Train replies (second)
};

class UShapedTail {
 public:
  // `tail`: the client's last blocks (SplitModel::tail); `middle_shape`: a2 of one sample;
  // `max_batch`: the server's (a reply never has more rows than the request); `label_defender`
  // (null: none) defends each middle gradient before it is encoded; the trainer keeps it across
  // Joins so its noise never repeats.
  UShapedTail(torch::nn::Sequential tail, const protocol::LinkSpec& link,
              const std::vector<int64_t>& middle_shape, int64_t max_batch, uint64_t seed,
              std::shared_ptr<privacy::GradientDefender> label_defender = nullptr);

  // The middle's output the server sent for a batch of `batch` rows, checked: shape, batch,
  // finiteness, magnitude (InvalidInput otherwise). Zeros where the server sent nothing.
  protocol::ReceivedActivations DecodeMiddleOutput(const v1::Tensor& message, int64_t batch) const;

  struct Step {
    at::Tensor middle_gradient;  // d loss / d a2, a2's shape
    double loss = 0;
    int64_t correct = 0;
  };
  // Training: the tail (train mode) on a2, the mean cross-entropy on `labels`, and its backward
  // pass (the tail's parameter gradients accumulate; the caller zeroes and steps them).
  Step Backward(const at::Tensor& middle_output, const at::Tensor& labels);
  // d loss / d a2 at the positions a2 took, defended (label_defender) and then compressed as
  // the link's gradients are.
  void EncodeMiddleGradient(const at::Tensor& gradient, const protocol::SentPositions& sent,
                            v1::Tensor* message);

  struct Evaluation {
    double loss_sum = 0;
    std::vector<int64_t> correct_per_class;  // index = label
    int64_t correct = 0;
  };
  // Evaluation: the tail (eval mode, no graph) on a2, summed loss and per-class hits.
  Evaluation Evaluate(const at::Tensor& middle_output, const at::Tensor& labels,
                      int64_t num_classes);

  torch::nn::Sequential& tail() { return tail_; }
  UShapedBytes& bytes() { return bytes_; }
  const UShapedBytes& bytes() const { return bytes_; }

 private:
  c10::Device Device() const;  // of the tail's parameters (the host without any)

  torch::nn::Sequential tail_;
  protocol::ActivationDecoder middle_output_;
  protocol::GradientEncoder middle_gradient_;
  std::shared_ptr<privacy::GradientDefender> label_defender_;
  UShapedBytes bytes_;
};

}  // namespace cleave::client
