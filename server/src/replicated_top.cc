#include "cleave/server/replicated_top.h"

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include "cleave/server/refusal.h"

namespace cleave::server {

namespace {

std::string SaveOptimizer(torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::string bytes;
  archive.save_to([&](const void* data, size_t size) {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  return bytes;
}

void LoadOptimizer(torch::optim::Optimizer& optimizer, const std::string& bytes) {
  torch::serialize::InputArchive archive;
  archive.load_from(bytes.data(), bytes.size());
  optimizer.load(archive);
}

}  // namespace

ReplicatedTop::ReplicatedTop(TopModel& top, std::mutex& model_mutex,
                             std::unique_ptr<ReplicaGroup> group, ReplicatedTopHooks hooks,
                             std::chrono::microseconds idle_tick)
    : top_(top),
      model_mutex_(model_mutex),
      group_(std::move(group)),
      stepper_(std::make_unique<ReplicatedStepper>(*group_, top.layers()->parameters())),
      hooks_(std::move(hooks)),
      idle_tick_(idle_tick) {
  CLEAVE_ENFORCE(top_.kfac() == nullptr, "K-FAC's factors are not averaged over replicas");
  Synchronize();
  clock_ = std::thread([this] { Clock(); });
}

ReplicatedTop::~ReplicatedTop() { Stop(); }

void ReplicatedTop::Synchronize() {
  std::lock_guard<std::mutex> model(model_mutex_);
  std::vector<at::Tensor> tensors = top_.layers()->parameters();
  for (const at::Tensor& buffer : top_.layers()->buffers()) tensors.push_back(buffer);
  group_->Broadcast(tensors, 0);
  std::string state = group_->rank() == 0 ? SaveOptimizer(top_.optimizer()) : std::string();
  group_->BroadcastBytes(state, 0);
  if (group_->rank() != 0) LoadOptimizer(top_.optimizer(), state);
}

TopModel::Step ReplicatedTop::Train(const at::Tensor& activations, const at::Tensor& labels,
                                    const std::function<double()>& admit) {
  auto job = std::make_unique<Job>();
  job->activations = activations;
  job->labels = labels;
  job->admit = &admit;
  std::future<TopModel::Step> done = job->done.get_future();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ended_.empty()) {
      throw Refusal(RefusalKind::kReplicaLost, "this server's replica group ended: " + ended_);
    }
    jobs_.push_back(std::move(job));
  }
  changed_.notify_all();
  return done.get();
}

void ReplicatedTop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_requested_ = true;
  }
  changed_.notify_all();
  if (clock_.joinable()) clock_.join();
  End("this replica stopped");
}

std::string ReplicatedTop::ended() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return ended_;
}

void ReplicatedTop::End(const std::string& why) {
  std::deque<std::unique_ptr<Job>> orphans;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ended_.empty()) ended_ = why;
    orphans.swap(jobs_);
  }
  for (auto& job : orphans) {
    job->done.set_exception(std::make_exception_ptr(
        Refusal(RefusalKind::kReplicaLost, "this server's replica group ended: " + why)));
  }
}

void ReplicatedTop::Clock() {
  while (Tick(NextJob())) {
  }
}

std::unique_ptr<ReplicatedTop::Job> ReplicatedTop::NextJob() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, idle_tick_, [&] { return !jobs_.empty() || stop_requested_; });
  if (jobs_.empty()) return nullptr;
  std::unique_ptr<Job> job = std::move(jobs_.front());
  jobs_.pop_front();
  return job;
}

bool ReplicatedTop::Tick(std::unique_ptr<Job> job) {
  bool want_stop = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    want_stop = stop_requested_;
  }
  std::lock_guard<std::mutex> model(model_mutex_);
  if (hooks_.before_tick) hooks_.before_tick();
  TopModel::Step result;
  ReplicatedStep step;
  step.backward = [&] {
    result = top_.Backward(job->activations, job->labels);
    const double scale = (*job->admit)();
    CLEAVE_ENFORCE(scale > 0 && scale <= 1, "a step scale of ", scale);
    return static_cast<double>(job->activations.size(0)) * scale;
  };
  step.step = [&] { top_.ApplyStep(1.0); };
  TickOutcome outcome;
  try {
    outcome = stepper_->Tick(job ? static_cast<double>(job->activations.size(0)) : 0.0, step,
                             want_stop);
  } catch (const ReplicaFailure& failure) {
    if (job) {
      job->done.set_exception(std::make_exception_ptr(Refusal(
          RefusalKind::kReplicaLost, std::string("this server's replica group failed: ") +
                                         failure.what())));
    }
    End(failure.what());
    return false;
  } catch (...) {
    // The averaged step was refused (not finite): the same on every replica, which stay in step.
    if (job) job->done.set_exception(std::current_exception());
    return true;
  }
  if (outcome.stepped && hooks_.after_step) hooks_.after_step();
  if (job) {
    if (outcome.local_error) {
      job->done.set_exception(outcome.local_error);
    } else {
      job->done.set_value(std::move(result));
    }
  }
  if (!outcome.stop) return true;
  End("a replica shut down (it voted to stop the group)");
  return false;
}

}  // namespace cleave::server
