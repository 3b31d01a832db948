// The server's side of U-shaped split learning (config "u-shaped"): the server runs only the
// middle of the model; the hospital runs bottom and tail and keeps its labels. A step is two
// messages on the Train stream: the cut activations a1 come up and the middle's output a2 goes
// down (compressed with the link's `activations` settings); then d loss / d a2 comes up (with the
// `gradients` settings, relative to the positions a2 took) and d loss / d a1 goes down (as in
// vanilla). The middle steps only when the gradient is back, and no other step may touch it in
// between (the optimizer would change the weights the pending graph saved), so the middle is
// held by one pending step at a time. A hospital that never sends the gradient does not wedge the
// server: a step waiting for the middle drops a holder past its deadline, a late gradient is
// refused, and a released or expired session drops its step.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cleave/protocol/activation_codec.h"
#include "cleave/protocol/cleave.pb.h"
#include "cleave/protocol/gradient_codec.h"
#include "cleave/protocol/link_spec.h"
#include "cleave/server/top_model.h"

namespace cleave::server {

// Largest magnitude of d loss / d a2 a hospital may send. The honest value is the tail's weights
// times d loss / d logits (at most 1 / batch for the mean cross-entropy): far below this.
inline constexpr double kMaxMiddleGradientAbs = 1e6;

struct UShapedCounters {
  int64_t steps_started = 0;    // a1 received, a2 sent
  int64_t steps_finished = 0;   // d loss / d a2 received and the middle stepped
  int64_t steps_abandoned = 0;  // the gradient never came (deadline, session ended, new step)
};

class UShapedMiddle {
 public:
  // `activations`: what a1 must look like (server's activation spec); `middle_shape`: a2 of one
  // sample; `gradient_timeout`: how long a started step holds the middle (> 0).
  UShapedMiddle(const protocol::LinkSpec& link, const protocol::TensorSpec& activations,
                const std::vector<int64_t>& middle_shape,
                std::chrono::milliseconds gradient_timeout, uint64_t seed);

  // The middle's layers and the caller's lock over them.
  struct Middle {
    TopModel& layers;
    std::mutex& mutex;
  };
  // A Train request of a U-shaped step: the first message (a1: forward, reply with a2) or the
  // second (d loss / d a2: backward, step, reply with d loss / d a1). Throws InvalidInput for
  // labels (the server never takes them), a message that is neither or both, and anything the
  // decoders refuse; Refusal kStale for a gradient whose step is no longer pending.
  // `admit(model_version, batch)` as TopModel::Train's admit; `committed(batch)` runs under the
  // middle's lock once the step is taken and returns the server's step count.
  using Admit = std::function<double(int64_t model_version, int64_t batch)>;
  using Committed = std::function<int64_t(int64_t batch)>;
  v1::TrainReply Train(const std::string& session_id, const v1::TrainRequest& request,
                       Middle middle, const Admit& admit, const Committed& committed);
  // Evaluate: a1 up, the middle's output (eval mode) down. Throws InvalidInput for labels.
  v1::EvaluateReply Evaluate(const v1::EvaluateRequest& request, Middle middle);

  // Drops the pending step of `session_id` (its stream closed); true if there was one.
  bool Abandon(const std::string& session_id);
  // Drops the pending step if its session is no longer `open` (left, released, expired or
  // replaced); true if it did.
  bool AbandonEnded(const std::function<bool(const std::string&)>& open);
  UShapedCounters counters() const;
  // Every middle gradient (d loss / d a2) received and validated is also handed to this, with its
  // session and step, before the middle steps: exactly what the server learns about the labels
  // (label-leakage attacks, tests). Set before serving; called on the serving threads.
  using GradientObserver = std::function<void(const std::string& session_id, int64_t step,
                                              const at::Tensor& middle_gradient)>;
  void SetGradientObserver(GradientObserver observer) { gradient_observer_ = std::move(observer); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Pending {
    std::string session_id;
    int64_t step = 0;
    int64_t model_version = 0;
    TopModel::Forward forward;
    protocol::SentPositions cut_sent;
    protocol::SentPositions middle_sent;
    Clock::time_point deadline;
  };

  v1::TrainReply Forward(const std::string& session_id, const v1::TrainRequest& request,
                         Middle middle);
  v1::TrainReply Backward(const std::string& session_id, const v1::TrainRequest& request,
                          Middle middle, const Admit& admit, const Committed& committed);
  // Waits until no step holds the middle (dropping a holder past its deadline, or this
  // session's own earlier step), then reserves it.
  void AcquireTurn(const std::string& session_id);
  // Takes the pending step of `session_id` at `step` (the turn stays held until ReleaseTurn).
  Pending TakePending(const std::string& session_id, int64_t step);
  void ReleaseTurn();
  // d loss / d a2, checked: shape, finiteness, magnitude.
  at::Tensor DecodeMiddleGradient(const v1::Tensor& message, const Pending& pending) const;

  protocol::ActivationDecoder activations_;    // a1 up
  protocol::ActivationEncoder middle_output_;  // a2 down (guarded by the middle's mutex)
  protocol::GradientDecoder middle_gradient_;  // d loss / d a2 up
  protocol::GradientEncoder cut_gradient_;     // d loss / d a1 down (likewise)
  std::vector<int64_t> middle_shape_;
  std::chrono::milliseconds gradient_timeout_;
  GradientObserver gradient_observer_;

  mutable std::mutex turn_mutex_;
  std::condition_variable turn_free_;
  bool turn_taken_ = false;          // a step holds the middle (pending_ or in flight)
  std::optional<Pending> pending_;   // the step waiting for its gradient
  Clock::time_point turn_deadline_;  // when the holder's turn runs out
  UShapedCounters counters_;
};

}  // namespace cleave::server
