// ReplicaGroup and ReplicatedStepper: replicas in threads of this process, on loopback, with the
// rendezvous store on a free port. Replicas with different data stay bit-identical and match
// one process stepping on the concatenated batch; a replica without work (or whose batch was
// refused) joins with zero weight; a stop vote reaches everyone; a replica that stops answering
// or dies is a clear ReplicaFailure on the others within the timeout; bad flags are UserError.
#include "cleave/server/replica_group.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

#include <spawn.h>
#include <unistd.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <future>
#include <iterator>
#include <thread>

#include "cleave/server/replicated_stepper.h"
#include "cleave/test_support/user_error.h"

using cleave::test_support::UserErrorOf;

namespace cleave::server {
namespace {

namespace nn = torch::nn;
using std::chrono::milliseconds;

ReplicaGroupOptions Options(int replicas, int rank, uint16_t port, milliseconds timeout) {
  ReplicaGroupOptions options;
  options.replicas = replicas;
  options.rank = rank;
  options.rendezvous_port = port;
  options.interface = "127.0.0.1";
  options.timeout = timeout;
  return options;
}

// Runs body(group) for every rank, each in its own thread; rank 0 hosts the store on a free
// port and hands it to the others. Rethrows the first rank's exception.
void RunReplicas(int replicas, const std::function<void(ReplicaGroup&)>& body,
                 milliseconds timeout = milliseconds(5000)) {
  std::promise<uint16_t> port;
  std::shared_future<uint16_t> known = port.get_future().share();
  std::vector<std::future<void>> ranks;
  for (int rank = 0; rank < replicas; ++rank) {
    ranks.push_back(std::async(std::launch::async, [&, rank] {
      ReplicaGroupOptions options = Options(replicas, rank, 0, timeout);
      if (rank == 0) {
        options.on_store_listening = [&](uint16_t listening) { port.set_value(listening); };
      } else {
        options.rendezvous_port = known.get();
      }
      ReplicaGroup group(options);
      body(group);
    }));
  }
  for (auto& rank : ranks) rank.get();
}

nn::Sequential MakeModel(uint64_t seed) {
  at::manual_seed(seed);
  return nn::Sequential(nn::Linear(6, 12), nn::ReLU(), nn::Linear(12, 3));
}

struct Batch {
  at::Tensor x, y;
};

Batch MakeBatch(int64_t n, uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn({n, 6}), at::randint(0, 3, {n}, at::kLong)};
}

// Replica `rank`'s model stepping with Adam through the stepper on its batches (an empty batch:
// no work that tick). Models and batches are made before the threads start (the global RNG).
struct Replica {
  nn::Sequential model;
  std::vector<Batch> batches;
  std::vector<TickOutcome> outcomes;

  void Run(ReplicaGroup& group) {
    torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(0.01));
    ReplicatedStepper stepper(group, model->parameters());
    stepper.Synchronize();
    for (const Batch& batch : batches) {
      const int64_t n = batch.x.defined() ? batch.x.size(0) : 0;
      ReplicatedStep step;
      step.backward = [&] {
        at::cross_entropy_loss(model->forward(batch.x), batch.y).backward();
        return static_cast<double>(n);
      };
      step.step = [&] { adam.step(); };
      outcomes.push_back(stepper.Tick(static_cast<double>(n), step));
    }
  }
};

// One process, Adam on the concatenation of the replicas' batches of each tick (no step when
// they are all empty).
std::vector<at::Tensor> Reference(nn::Sequential model, const std::vector<Replica>& replicas) {
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(0.01));
  for (size_t tick = 0; tick < replicas[0].batches.size(); ++tick) {
    std::vector<at::Tensor> xs, ys;
    for (const Replica& replica : replicas) {
      if (!replica.batches[tick].x.defined()) continue;
      xs.push_back(replica.batches[tick].x);
      ys.push_back(replica.batches[tick].y);
    }
    if (xs.empty()) continue;
    adam.zero_grad();
    at::cross_entropy_loss(model->forward(at::cat(xs)), at::cat(ys)).backward();
    adam.step();
  }
  return model->parameters();
}

void ExpectIdenticalAndNear(const std::vector<Replica>& replicas,
                            const std::vector<at::Tensor>& reference) {
  const std::vector<at::Tensor> first = replicas[0].model->parameters();
  for (const Replica& replica : replicas) {
    const std::vector<at::Tensor> mine = replica.model->parameters();
    for (size_t i = 0; i < first.size(); ++i) {
      EXPECT_TRUE(at::equal(mine[i], first[i])) << "parameter " << i << " differs across replicas";
      EXPECT_TRUE(at::allclose(mine[i], reference[i], 1e-4, 1e-6))
          << "parameter " << i << " off the single-process step by "
          << (mine[i] - reference[i]).abs().max().item<double>();
    }
  }
  // The steps moved the model: a test that compared untouched weights could not fail.
  const nn::Sequential start = MakeModel(100);
  EXPECT_FALSE(at::allclose(first[0], start->parameters()[0]));
}

void RunAll(std::vector<Replica>& replicas) {
  RunReplicas(static_cast<int>(replicas.size()),
              [&](ReplicaGroup& group) { replicas[group.rank()].Run(group); });
}

TEST(ReplicaGroup, ReplicasWithDifferentDataStayIdenticalAndMatchTheConcatenatedBatch) {
  std::vector<Replica> replicas(2);
  for (int rank = 0; rank < 2; ++rank) {
    // Different initial weights on rank 1: Synchronize must make them rank 0's.
    replicas[rank].model = MakeModel(100 + rank);
    for (int tick = 0; tick < 6; ++tick) {
      replicas[rank].batches.push_back(MakeBatch(rank == 0 ? 5 : 3 + tick, 10 * tick + rank));
    }
  }
  RunAll(replicas);
  ExpectIdenticalAndNear(replicas, Reference(MakeModel(100), replicas));
  for (const Replica& replica : replicas) {
    for (const TickOutcome& outcome : replica.outcomes) {
      EXPECT_TRUE(outcome.stepped);
      EXPECT_FALSE(outcome.local_error);
    }
    EXPECT_EQ(replica.outcomes[2].global_weight, 5 + 3 + 2);
  }
}

TEST(ReplicaGroup, AReplicaWithoutWorkJoinsWithZeroWeight) {
  std::vector<Replica> replicas(2);
  for (int rank = 0; rank < 2; ++rank) {
    replicas[rank].model = MakeModel(100);
    for (int tick = 0; tick < 5; ++tick) {
      // Rank 1 idles on even ticks; tick 2 nobody has work.
      const bool idle = (rank == 1 && tick % 2 == 0) || tick == 2;
      replicas[rank].batches.push_back(idle ? Batch{} : MakeBatch(4, 10 * tick + rank));
    }
  }
  RunAll(replicas);
  ExpectIdenticalAndNear(replicas, Reference(MakeModel(100), replicas));
  for (const Replica& replica : replicas) {
    EXPECT_EQ(replica.outcomes[0].global_weight, 4);
    EXPECT_EQ(replica.outcomes[1].global_weight, 8);
    EXPECT_FALSE(replica.outcomes[2].anyone_had_work);
    EXPECT_FALSE(replica.outcomes[2].stepped);
  }
}

TEST(ReplicaGroup, ARefusedLocalBatchContributesNothingAndTheReplicaStaysInStep) {
  std::vector<Replica> replicas(2);
  for (int rank = 0; rank < 2; ++rank) {
    replicas[rank].model = MakeModel(100);
    replicas[rank].batches.push_back(MakeBatch(4, rank));
  }
  // Rank 1's labels are out of range: its backward throws.
  replicas[1].batches[0].y.fill_(7);
  RunAll(replicas);
  replicas[1].batches[0] = Batch{};  // the reference: rank 0's batch alone
  ExpectIdenticalAndNear(replicas, Reference(MakeModel(100), replicas));
  EXPECT_FALSE(replicas[0].outcomes[0].local_error);
  EXPECT_TRUE(replicas[1].outcomes[0].local_error);
  EXPECT_EQ(replicas[1].outcomes[0].global_weight, 4);
}

TEST(ReplicaGroup, AStopVoteReachesEveryReplica) {
  RunReplicas(2, [](ReplicaGroup& group) {
    nn::Sequential model = MakeModel(1);
    ReplicatedStepper stepper(group, model->parameters());
    ReplicatedStep step{[] { return 1.0; }, [] {}};
    EXPECT_FALSE(stepper.Tick(0, step).stop);
    EXPECT_TRUE(stepper.Tick(0, step, /*want_stop=*/group.rank() == 1).stop);
  });
}

TEST(ReplicaGroup, BroadcastsTensorsOfSeveralDtypesAndBytes) {
  RunReplicas(3, [](ReplicaGroup& group) {
    std::vector<at::Tensor> tensors{at::full({2, 3}, group.rank(), at::kFloat),
                                    at::full({4}, group.rank() + 10, at::kLong)};
    group.Broadcast(tensors, 2);
    EXPECT_TRUE(at::equal(tensors[0], at::full({2, 3}, 2, at::kFloat)));
    EXPECT_TRUE(at::equal(tensors[1], at::full({4}, 12, at::kLong)));
    std::string bytes = group.rank() == 0 ? std::string("state\0of rank 0", 15) : "other";
    group.BroadcastBytes(bytes, 0);
    EXPECT_EQ(bytes, std::string("state\0of rank 0", 15));
    EXPECT_EQ(group.AllReduceSums({1.0, 0.5 * group.rank()}), (std::vector<double>{3.0, 1.5}));
  });
}

TEST(ReplicaGroup, ReplicasHoldingDifferentTensorsFailOnEveryRank) {
  std::atomic<int> failures{0};
  RunReplicas(2, [&](ReplicaGroup& group) {
    std::vector<at::Tensor> tensors{at::zeros({group.rank() + 1})};
    try {
      group.Broadcast(tensors);
    } catch (const ReplicaFailure& failure) {
      EXPECT_NE(std::string(failure.what()).find("different tensors"), std::string::npos)
          << failure.what();
      ++failures;
    }
  });
  EXPECT_EQ(failures, 2);
}

// Two processes: this one is rank 0; it starts this test binary again as rank 1 (the
// ReplicaProcess.Rank1 test, which runs only then), which writes its parameters to a file.
std::vector<Replica> ProcessReplicas() {
  std::vector<Replica> replicas(2);
  for (int rank = 0; rank < 2; ++rank) {
    replicas[rank].model = MakeModel(100 + rank);
    for (int tick = 0; tick < 5; ++tick) {
      replicas[rank].batches.push_back(MakeBatch(3 + rank + tick, 10 * tick + rank));
    }
  }
  return replicas;
}

std::string Bytes(const nn::Sequential& model) {
  std::vector<at::Tensor> flat;
  for (const at::Tensor& p : model->parameters()) flat.push_back(p.detach().reshape(-1));
  const at::Tensor all = at::cat(flat).contiguous();
  return std::string(static_cast<const char*>(all.data_ptr()), all.nbytes());
}

pid_t SpawnRank1(uint16_t port, const std::string& out) {
  std::vector<std::string> extra{"CLEAVE_TEST_REPLICA_PORT=" + std::to_string(port),
                                 "CLEAVE_TEST_REPLICA_OUT=" + out};
  std::vector<char*> env;
  for (char** e = environ; *e; ++e) env.push_back(*e);
  for (std::string& e : extra) env.push_back(e.data());
  env.push_back(nullptr);
  std::string exe = "/proc/self/exe", filter = "--gtest_filter=ReplicaProcess.Rank1";
  char* argv[] = {exe.data(), filter.data(), nullptr};
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, env.data()), 0);
  return pid;
}

TEST(ReplicaProcess, TwoProcessesOnLoopbackStayBitIdentical) {
  std::vector<Replica> replicas = ProcessReplicas();
  const std::string out =
      ::testing::TempDir() + "replica1-" + std::to_string(::getpid()) + ".bin";
  pid_t child = -1;
  ReplicaGroupOptions options = Options(2, 0, 0, milliseconds(10000));
  options.on_store_listening = [&](uint16_t port) { child = SpawnRank1(port, out); };
  {
    ReplicaGroup group(options);
    replicas[0].Run(group);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "rank 1 failed: " << status;
  std::ifstream file(out, std::ios::binary);
  const std::string theirs((std::istreambuf_iterator<char>(file)), {});
  std::remove(out.c_str());
  EXPECT_EQ(theirs.size(), Bytes(replicas[0].model).size());
  EXPECT_TRUE(theirs == Bytes(replicas[0].model)) << "the processes' parameters differ";
  ExpectIdenticalAndNear({replicas[0]}, Reference(MakeModel(100), replicas));
}

TEST(ReplicaProcess, Rank1) {
  const char* port = std::getenv("CLEAVE_TEST_REPLICA_PORT");
  const char* out = std::getenv("CLEAVE_TEST_REPLICA_OUT");
  if (!port || !out) GTEST_SKIP() << "rank 1 of TwoProcessesOnLoopbackStayBitIdentical";
  std::vector<Replica> replicas = ProcessReplicas();
  {
    ReplicaGroup group(Options(2, 1, static_cast<uint16_t>(std::atoi(port)), milliseconds(10000)));
    replicas[1].Run(group);
  }
  std::ofstream(out, std::ios::binary) << Bytes(replicas[1].model);
}

// Rank 0 takes a step that rank 1 never joins: `leave` says how rank 1 goes away.
std::string FailureSeenByRank0(const std::function<void(std::unique_ptr<ReplicaGroup>&)>& leave,
                               double* seconds) {
  std::string message;
  std::promise<void> rank0_done;
  std::shared_future<void> done = rank0_done.get_future().share();
  std::promise<uint16_t> port;
  auto rank1 = std::async(std::launch::async, [&] {
    auto group = std::make_unique<ReplicaGroup>(
        Options(2, 1, port.get_future().get(), milliseconds(800)));
    group->AllReduceSums({1});
    leave(group);
    done.wait();
  });
  ReplicaGroupOptions options = Options(2, 0, 0, milliseconds(800));
  options.on_store_listening = [&](uint16_t listening) { port.set_value(listening); };
  ReplicaGroup group(options);
  group.AllReduceSums({1});
  const auto start = std::chrono::steady_clock::now();
  try {
    group.AllReduceGradients({at::ones({3})}, 1);
    ADD_FAILURE() << "the step went through without rank 1";
  } catch (const ReplicaFailure& failure) {
    message = failure.what();
  }
  *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  rank0_done.set_value();
  rank1.get();
  return message;
}

TEST(ReplicaGroup, AReplicaThatStopsAnsweringIsAClearErrorWithinTheTimeout) {
  double seconds = 0;
  const std::string message = FailureSeenByRank0([](auto&) {}, &seconds);
  EXPECT_LT(seconds, 3.0);
  EXPECT_NE(message.find("replica 0 of 2: allreduce of the gradients (collective #1)"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("rank 1 is at collective #0"), std::string::npos) << message;
}

TEST(ReplicaGroup, AReplicaThatDiesIsAClearErrorOnTheOthers) {
  double seconds = 0;
  const std::string message = FailureSeenByRank0([](auto& group) { group.reset(); }, &seconds);
  EXPECT_LT(seconds, 3.0);
  EXPECT_NE(message.find("replica 0 of 2"), std::string::npos) << message;
  EXPECT_NE(message.find("rank 1 is at collective #0"), std::string::npos) << message;
}

TEST(ReplicaGroup, ARendezvousMissingAReplicaFailsWithinTheTimeout) {
  const auto start = std::chrono::steady_clock::now();
  try {
    ReplicaGroup group(Options(2, 0, 0, milliseconds(500)));
    ADD_FAILURE() << "a group of 2 formed with one replica";
  } catch (const ReplicaFailure& failure) {
    EXPECT_NE(std::string(failure.what()).find("replica 0 of 2: the rendezvous"),
              std::string::npos)
        << failure.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 3.0);
}

void ExpectUserError(const std::function<void()>& call, const std::string& part) {
  const std::string message = UserErrorOf(call);
  EXPECT_NE(message.find(part), std::string::npos) << message;
}

TEST(ReplicaGroup, FlagsAreChecked) {
  ReplicaGroupOptions options;
  ParseRendezvous("10.0.0.5:29400", "--rendezvous", options);
  EXPECT_EQ(options.rendezvous_host, "10.0.0.5");
  EXPECT_EQ(options.rendezvous_port, 29400);
  ExpectUserError([&] { ParseRendezvous("10.0.0.5", "--rendezvous", options); }, "HOST:PORT");
  ExpectUserError([&] { ParseRendezvous("h:70000", "--rendezvous", options); }, "65535");
  ExpectUserError([&] { ParseRendezvous("h:x1", "--rendezvous", options); }, "not a port");
  ExpectUserError([&] { ValidateReplicaOptions(Options(2, 2, 1, milliseconds(1))); },
                  "--replica-rank must be in [0, 2)");
  ExpectUserError([&] { ValidateReplicaOptions(Options(0, 0, 1, milliseconds(1))); },
                  "--replicas");
  ExpectUserError([&] { ValidateReplicaOptions(Options(2, 1, 0, milliseconds(1))); },
                  "needs a port");
  ExpectUserError([&] { ValidateReplicaOptions(Options(2, 0, 1, milliseconds(0))); },
                  "--replica-timeout-ms");
}

}  // namespace
}  // namespace cleave::server
