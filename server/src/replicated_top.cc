#include "cleave/server/replicated_top.h"

#include <ATen/ATen.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <spdlog/spdlog.h>

#include "cleave/core/error.h"
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
                             std::chrono::microseconds idle_tick, StepMergerOptions merge)
    : top_(top),
      model_mutex_(model_mutex),
      group_(std::move(group)),
      stepper_(std::make_unique<ReplicatedStepper>(*group_, top.layers()->parameters())),
      hooks_(std::move(hooks)),
      idle_tick_(idle_tick),
      merge_(merge) {
  ValidateStepMergerOptions(merge_);
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
  for (;;) {
    Jobs jobs = NextJobs();
    if (!Tick(jobs)) return;
  }
}

bool ReplicatedTop::ReadyLocked() const {
  if (stop_requested_) return true;
  int64_t samples = 0;
  for (const auto& job : jobs_) samples += job->activations.size(0);
  if (samples >= merge_.max_batch) return true;
  return hooks_.expected_steps && jobs_.size() >= hooks_.expected_steps();
}

ReplicatedTop::Jobs ReplicatedTop::NextJobs() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_for(lock, idle_tick_, [&] { return !jobs_.empty() || stop_requested_; });
  const bool merging = merge_.max_batch > 0;
  if (merging && !jobs_.empty() && merge_.max_wait.count() > 0) {
    changed_.wait_for(lock, merge_.max_wait, [&] { return ReadyLocked(); });
  }
  Jobs taken;
  int64_t samples = 0;
  while (!jobs_.empty()) {
    const int64_t rows = jobs_.front()->activations.size(0);
    if (!taken.empty() && (!merging || samples + rows > merge_.max_batch)) break;
    samples += rows;
    taken.push_back(std::move(jobs_.front()));
    jobs_.pop_front();
  }
  return taken;
}

void ReplicatedTop::Answer(Jobs& jobs, const std::exception_ptr& error) {
  for (auto& job : jobs) {
    if (job->error) {
      job->done.set_exception(job->error);
    } else if (error) {
      job->done.set_exception(error);
    } else {
      job->done.set_value(std::move(job->result));
    }
  }
}

double ReplicatedTop::LocalBackward(Jobs& jobs) {
  if (jobs.size() == 1) {  // the unmerged step exactly: admitted once its gradients are checked
    Job& job = *jobs.front();
    job.result = top_.Backward(job.activations, job.labels);
    const double scale = (*job.admit)();
    CLEAVE_ENFORCE(scale > 0 && scale <= 1, "a step scale of ", scale);
    return static_cast<double>(job.activations.size(0)) * scale;
  }
  std::vector<Job*> admitted;  // merged: the scales weigh the loss, so admission comes first
  for (auto& job : jobs) {
    try {
      job->scale = (*job->admit)();
      CLEAVE_ENFORCE(job->scale > 0 && job->scale <= 1, "a step scale of ", job->scale);
      admitted.push_back(job.get());
    } catch (...) {
      job->error = std::current_exception();  // refused alone
    }
  }
  return BackwardTogether(admitted);
}

double ReplicatedTop::BackwardTogether(const std::vector<Job*>& jobs) {
  if (jobs.empty()) throw NotFinite("no step of this tick was admitted");
  try {
    return BackwardMerged(jobs);
  } catch (const InvalidInput& error) {  // not finite or out of bounds: find out whose
    spdlog::warn("a merged step of {} hospitals failed ({}); each is checked alone",
                 jobs.size(), error.what());
  }
  std::vector<Job*> good;
  for (Job* job : jobs) {
    try {
      BackwardMerged({job});
      good.push_back(job);
    } catch (...) {
      job->error = std::current_exception();
    }
  }
  if (good.empty()) throw NotFinite("no step of this tick trained");
  return BackwardMerged(good);
}

double ReplicatedTop::BackwardMerged(const std::vector<Job*>& jobs) {
  std::vector<at::Tensor> activations, labels;
  std::vector<TopModel::Slice> slices;
  double weight = 0;
  for (const Job* job : jobs) {
    activations.push_back(job->activations);
    labels.push_back(job->labels);
    slices.push_back({job->activations.size(0), job->scale});
    weight += static_cast<double>(job->activations.size(0)) * job->scale;
  }
  std::vector<TopModel::Step> steps =
      top_.BackwardMerged(at::cat(activations), at::cat(labels), slices);
  for (size_t i = 0; i < jobs.size(); ++i) jobs[i]->result = std::move(steps[i]);
  return weight;
}

bool ReplicatedTop::Tick(Jobs& jobs) {
  bool want_stop = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    want_stop = stop_requested_;
  }
  std::lock_guard<std::mutex> model(model_mutex_);
  if (hooks_.before_tick) hooks_.before_tick();
  ReplicatedStep step;
  step.backward = [&] { return LocalBackward(jobs); };
  step.step = [&] { top_.ApplyStep(1.0); };
  double samples = 0;
  for (const auto& job : jobs) samples += static_cast<double>(job->activations.size(0));
  TickOutcome outcome;
  try {
    outcome = stepper_->Tick(samples, step, want_stop);
  } catch (const ReplicaFailure& failure) {
    for (auto& job : jobs) job->error = nullptr;  // every job hears that the group failed
    Answer(jobs, std::make_exception_ptr(Refusal(
                     RefusalKind::kReplicaLost,
                     std::string("this server's replica group failed: ") + failure.what())));
    End(failure.what());
    return false;
  } catch (...) {
    // The averaged step was refused (not finite): the same on every replica, which stay in step.
    Answer(jobs, std::current_exception());
    return true;
  }
  if (outcome.stepped && hooks_.after_step) hooks_.after_step();
  Answer(jobs, outcome.local_error);
  if (!outcome.stop) return true;
  End("a replica shut down (it voted to stop the group)");
  return false;
}

}  // namespace cleave::server
