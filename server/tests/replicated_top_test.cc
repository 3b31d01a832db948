// ReplicatedTop and SplitServer with replicas, two replicas in threads of this process on
// loopback: hospitals' steps on either replica leave both with bit-identical layers and the same
// step count (rank 1 starts from other weights and takes rank 0's), the returned cut gradient is
// the batch's own, and a replica that shuts down ends the group: the other refuses steps with
// kReplicaLost (UNAVAILABLE) and says why. With merging, each tick takes every step waiting on a
// replica as one merged batch: the replicas stay identical and equal a single process's step
// on all the batches, each weighted by samples x staleness scale, and every hospital gets its
// own cut gradient.
#include "cleave/server/replicated_top.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/optimizer.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>

#include "cleave/server/refusal.h"
#include "cleave/server/split_server.h"
#include "server_requests.h"

namespace cleave::server {
namespace {

namespace nn = torch::nn;
using std::chrono::milliseconds;

// Rank 0's options hand its store's port to rank 1's.
struct Rendezvous {
  std::promise<uint16_t> port;
  std::shared_future<uint16_t> known{port.get_future().share()};

  ReplicaGroupOptions For(int rank) {
    ReplicaGroupOptions options;
    options.replicas = 2;
    options.rank = rank;
    options.timeout = milliseconds(5000);
    if (rank == 0) {
      options.on_store_listening = [this](uint16_t listening) { port.set_value(listening); };
    } else {
      options.rendezvous_port = known.get();
    }
    return options;
  }
};

// Both ranks' bodies in threads; a rank's body gets `others_done`, a barrier of the two ranks:
// it waits on it before it lets its replica go (the first to stop ends the group), and again
// after reading what it checks, if another replica's stop could change it.
void RunBoth(const std::function<void(int, const std::function<void()>&)>& body) {
  std::mutex mutex;
  std::condition_variable changed;
  int arrived = 0;
  int64_t generation = 0;
  const std::function<void()> barrier = [&] {
    std::unique_lock<std::mutex> lock(mutex);
    const int64_t mine = generation;
    if (++arrived == 2) {
      arrived = 0;
      ++generation;
      changed.notify_all();
      return;
    }
    changed.wait(lock, [&] { return generation != mine; });
  };
  std::vector<std::future<void>> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    ranks.push_back(std::async(std::launch::async, [&, rank] { body(rank, barrier); }));
  }
  for (auto& rank : ranks) rank.get();
}

std::unique_ptr<TopModel> MakeTop(uint64_t seed) {
  at::manual_seed(seed);
  return MakeTopModel(nn::Sequential(nn::Linear(5, 8), nn::ReLU(), nn::Linear(8, 3)),
                      TopOptimizerOptions{});
}

TEST(ReplicatedTop, StepsOnEitherReplicaKeepBothIdentical) {
  std::unique_ptr<TopModel> tops[2] = {MakeTop(1), MakeTop(2)};
  const std::vector<at::Tensor> start = tops[0]->ParameterCopies();
  at::manual_seed(3);
  std::vector<at::Tensor> xs, ys;
  for (int i = 0; i < 8; ++i) {
    xs.push_back(at::randn({4, 5}));
    ys.push_back(at::randint(0, 3, {4}, at::kLong));
  }
  Rendezvous rendezvous;
  std::mutex mutexes[2];
  int64_t steps[2] = {0, 0};
  RunBoth([&](int rank, const std::function<void()>& others_done) {
    ReplicatedTopHooks hooks;
    hooks.after_step = [&, rank] { ++steps[rank]; };
    ReplicatedTop top(*tops[rank], mutexes[rank],
                      std::make_unique<ReplicaGroup>(rendezvous.For(rank)), hooks,
                      std::chrono::microseconds(500));
    // Rank 0 trains batches 0..4, rank 1 batches 5..7.
    for (int i = rank == 0 ? 0 : 5; i < (rank == 0 ? 5 : 8); ++i) {
      const TopModel::Step step = top.Train(xs[i], ys[i], [] { return 1.0; });
      EXPECT_EQ(step.cut_gradient.sizes(), xs[i].sizes());
      EXPECT_TRUE(step.cut_gradient.abs().sum().item<double>() > 0);
    }
    others_done();
  });
  EXPECT_EQ(steps[0], steps[1]);
  EXPECT_GE(steps[0], 5);  // ticks with work on either side: at least the larger count
  EXPECT_LE(steps[0], 8);
  const std::vector<at::Tensor> a = tops[0]->ParameterCopies(), b = tops[1]->ParameterCopies();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::equal(a[i], b[i])) << "parameter " << i << " differs";
    EXPECT_FALSE(at::equal(a[i], start[i])) << "parameter " << i << " did not move";
  }
}

std::unique_ptr<TopModel> MakeSgdTop(uint64_t seed) {
  at::manual_seed(seed);
  TopOptimizerOptions sgd;
  sgd.name = "sgd";
  sgd.learning_rate = 0.1;
  sgd.momentum = 0.9;
  return MakeTopModel(nn::Sequential(nn::Linear(5, 8), nn::ReLU(), nn::Linear(8, 3)), sgd);
}

struct Pending {
  at::Tensor x, y;
  double scale = 1.0;
};

// One step of `top` on all `batches`: loss sum_i (n_i s_i / sum_j n_j s_j) CE_mean_i, the full
// step; returns each batch's own d CE_mean_i / d x_i.
std::vector<at::Tensor> ReferenceStep(TopModel& top, const std::vector<Pending>& batches) {
  double total = 0;
  for (const Pending& batch : batches) total += static_cast<double>(batch.x.size(0)) * batch.scale;
  nn::Sequential layers = top.layers();
  top.optimizer().zero_grad();
  std::vector<at::Tensor> cuts;
  for (const Pending& batch : batches) {
    const double weight = static_cast<double>(batch.x.size(0)) * batch.scale / total;
    at::Tensor x = batch.x.detach().requires_grad_(true);
    const at::Tensor loss = torch::nn::functional::cross_entropy(layers->forward(x), batch.y);
    (loss * weight).backward();
    cuts.push_back(x.grad() / weight);
  }
  top.optimizer().step();
  return cuts;
}

// Both replicas, two rounds of several steps each: every round is one merged tick per replica.
TEST(ReplicatedTop, MergedTicksEqualOneStepOnAllBatches) {
  std::unique_ptr<TopModel> tops[2] = {MakeSgdTop(1), MakeSgdTop(2)};
  std::unique_ptr<TopModel> reference = MakeSgdTop(1);
  at::manual_seed(7);
  const int64_t rows[2][2][3] = {{{3, 4, 5}, {4, 3, 0}}, {{2, 4, 6}, {5, 2, 0}}};
  const double scales[2][2][3] = {{{1.0, 0.5, 0.25}, {1.0, 0.75, 0}}, {{0.8, 1.0, 1.0}, {0.5, 1.0, 0}}};
  std::vector<Pending> pending[2][2];  // [round][rank]
  for (int round = 0; round < 2; ++round) {
    for (int rank = 0; rank < 2; ++rank) {
      for (int i = 0; i < 3 && rows[rank][round][i] > 0; ++i) {
        const int64_t n = rows[rank][round][i];
        pending[round][rank].push_back(
            {at::randn({n, 5}), at::randint(0, 3, {n}, at::kLong), scales[rank][round][i]});
      }
    }
  }
  std::vector<at::Tensor> expected_cuts[2][2];
  for (int round = 0; round < 2; ++round) {
    std::vector<Pending> all = pending[round][0];
    all.insert(all.end(), pending[round][1].begin(), pending[round][1].end());
    const std::vector<at::Tensor> cuts = ReferenceStep(*reference, all);
    const size_t first = pending[round][0].size();
    expected_cuts[round][0].assign(cuts.begin(), cuts.begin() + static_cast<long>(first));
    expected_cuts[round][1].assign(cuts.begin() + static_cast<long>(first), cuts.end());
  }
  Rendezvous rendezvous;
  std::mutex mutexes[2];
  int64_t steps[2] = {0, 0};
  std::vector<at::Tensor> got_cuts[2][2];
  RunBoth([&](int rank, const std::function<void()>& others_done) {
    std::atomic<size_t> expected{pending[0][rank].size()};
    ReplicatedTopHooks hooks;
    hooks.after_step = [&, rank] { ++steps[rank]; };
    hooks.expected_steps = [&] { return expected.load(); };
    // A long idle tick: the first tick with work waits for this round's steps, all of them.
    ReplicatedTop top(*tops[rank], mutexes[rank],
                      std::make_unique<ReplicaGroup>(rendezvous.For(rank)), hooks,
                      std::chrono::microseconds(2000000), StepMergerOptions{64, milliseconds(1000)});
    for (int round = 0; round < 2; ++round) {
      expected = pending[round][rank].size();
      std::vector<std::future<TopModel::Step>> replies;
      for (const Pending& batch : pending[round][rank]) {
        replies.push_back(std::async(std::launch::async, [&top, &batch] {
          const double scale = batch.scale;
          return top.Train(batch.x, batch.y, [scale] { return scale; });
        }));
      }
      for (auto& reply : replies) got_cuts[round][rank].push_back(reply.get().cut_gradient);
    }
    others_done();
  });
  EXPECT_EQ(steps[0], 2);
  EXPECT_EQ(steps[1], 2);
  const std::vector<at::Tensor> a = tops[0]->ParameterCopies(), b = tops[1]->ParameterCopies();
  const std::vector<at::Tensor> want = reference->ParameterCopies();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::equal(a[i], b[i])) << "parameter " << i << " differs between the replicas";
    EXPECT_TRUE(at::allclose(a[i], want[i], 1e-5, 1e-5)) << "parameter " << i;
  }
  for (int round = 0; round < 2; ++round) {
    for (int rank = 0; rank < 2; ++rank) {
      ASSERT_EQ(got_cuts[round][rank].size(), expected_cuts[round][rank].size());
      for (size_t i = 0; i < got_cuts[round][rank].size(); ++i) {
        EXPECT_TRUE(at::allclose(got_cuts[round][rank][i], expected_cuts[round][rank][i], 1e-5,
                                 1e-6))
            << "round " << round << " rank " << rank << " hospital " << i;
      }
    }
  }
}

v1::TrainRequest Batch(const std::string& session, int64_t seed) {
  at::manual_seed(seed);
  v1::TrainRequest request;
  request.set_protocol_version(protocol::kProtocolVersion);
  request.set_session_id(session);
  protocol::EncodeDense(at::randn({4, 128}), request.mutable_activations());
  protocol::EncodeDense(at::randint(0, 3, {4}, at::kLong), request.mutable_labels());
  return request;
}

TEST(ReplicatedServer, HospitalsOnTwoReplicasTrainOneModel) {
  Rendezvous rendezvous;
  std::vector<at::Tensor> parameters[2];
  int64_t steps[2] = {0, 0};
  RunBoth([&](int rank, const std::function<void()>& others_done) {
    SplitServerOptions options = test::MlpOptions();
    options.seed = 1 + rank;  // rank 1 starts elsewhere and takes rank 0's weights
    options.replicas = rendezvous.For(rank);
    options.replica_idle_tick = std::chrono::microseconds(500);
    SplitServer server(options);
    const std::string session = server.Join("hospital", test::JoinFor(server)).session_id();
    for (int i = 0; i < 4 + rank; ++i) server.Train("hospital", Batch(session, 10 * rank + i));
    others_done();
    // Both have trained everything: the clock may still tick, but without work nothing moves.
    parameters[rank] = server.top_parameters();
    steps[rank] = server.step();
    EXPECT_EQ(server.counters().samples, 4 * (4 + rank));
    EXPECT_EQ(server.replicas_ended(), "");
    others_done();  // neither replica stops before both have read
  });
  EXPECT_EQ(steps[0], steps[1]);
  EXPECT_GE(steps[0], 5);
  for (size_t i = 0; i < parameters[0].size(); ++i) {
    EXPECT_TRUE(at::equal(parameters[0][i], parameters[1][i])) << "parameter " << i;
  }
}

TEST(ReplicatedServer, MergedStepsOnTwoReplicasTrainOneModel) {
  Rendezvous rendezvous;
  std::vector<at::Tensor> parameters[2];
  int64_t steps[2] = {0, 0};
  RunBoth([&](int rank, const std::function<void()>& others_done) {
    SplitServerOptions options = test::MlpOptions();
    options.seed = 1 + rank;
    options.replicas = rendezvous.For(rank);
    options.replica_idle_tick = std::chrono::microseconds(500);
    options.merge = StepMergerOptions{32, std::chrono::microseconds(2000)};
    SplitServer server(options);
    std::vector<std::future<void>> hospitals;
    for (int h = 0; h < 3; ++h) {
      const std::string name = "hospital" + std::to_string(h);
      const std::string session = server.Join(name, test::JoinFor(server)).session_id();
      hospitals.push_back(std::async(std::launch::async, [&, name, session, h] {
        for (int i = 0; i < 4; ++i) server.Train(name, Batch(session, 100 * rank + 10 * h + i));
      }));
    }
    for (auto& hospital : hospitals) hospital.get();
    others_done();
    parameters[rank] = server.top_parameters();
    steps[rank] = server.step();
    EXPECT_EQ(server.counters().samples, 4 * 3 * 4);
    EXPECT_EQ(server.replicas_ended(), "");
    others_done();  // neither replica stops before both have read
  });
  EXPECT_EQ(steps[0], steps[1]);
  EXPECT_GE(steps[0], 4);   // each replica's hospitals' 12 steps in at least 4 ticks
  EXPECT_LE(steps[0], 24);
  for (size_t i = 0; i < parameters[0].size(); ++i) {
    EXPECT_TRUE(at::equal(parameters[0][i], parameters[1][i])) << "parameter " << i;
  }
}

TEST(ReplicatedServer, AReplicaThatShutsDownEndsTheGroupForTheOthers) {
  Rendezvous rendezvous;
  std::promise<void> rank1_gone;
  auto rank1 = std::async(std::launch::async, [&] {
    SplitServerOptions options = test::MlpOptions();
    options.replicas = rendezvous.For(1);
    { SplitServer server(options); }
    rank1_gone.set_value();
  });
  SplitServerOptions options = test::MlpOptions();
  options.replicas = rendezvous.For(0);
  SplitServer server(options);
  const std::string session = server.Join("hospital", test::JoinFor(server)).session_id();
  rank1_gone.get_future().wait();
  rank1.get();
  try {
    server.Train("hospital", Batch(session, 1));
    ADD_FAILURE() << "a step was taken by a group that ended";
  } catch (const Refusal& refusal) {
    EXPECT_EQ(refusal.kind(), RefusalKind::kReplicaLost);
    EXPECT_NE(std::string(refusal.what()).find("replica group ended"), std::string::npos)
        << refusal.what();
  }
  EXPECT_NE(server.replicas_ended(), "");
  EXPECT_EQ(server.counters().refused_steps, 1);
}

TEST(ReplicatedServer, ReplicasWithDifferentSettingsRefuseToStart) {
  Rendezvous rendezvous;
  std::string messages[2];
  RunBoth([&](int rank, const std::function<void()>& others_done) {
    SplitServerOptions options = test::MlpOptions();
    options.learning_rate = rank == 0 ? 1e-3 : 1e-2;
    options.replicas = rendezvous.For(rank);
    try {
      SplitServer server(options);
      ADD_FAILURE() << "replica " << rank << " started with other settings";
    } catch (const UserError& error) {
      messages[rank] = error.what();
    }
    others_done();
  });
  EXPECT_NE(messages[0].find("the replicas run different settings"), std::string::npos)
      << messages[0];
  EXPECT_NE(messages[1].find("rank 0 runs model"), std::string::npos) << messages[1];
  EXPECT_NE(messages[1].find("lr 0.01"), std::string::npos) << messages[1];
}

TEST(ReplicatedServer, OnlyTheVanillaSingleScheduleIsReplicated) {
  SplitServerOptions options = test::MlpOptions();
  options.replicas.replicas = 2;
  options.replicas.rendezvous_port = 1;
  options.optimizer = "kfac";
  try {
    SplitServer server(options);
    ADD_FAILURE() << "K-FAC with replicas was accepted";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find("K-FAC"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace cleave::server
