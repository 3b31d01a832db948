// ReplicatedTop and SplitServer with replicas, two replicas in threads of this process on
// loopback: hospitals' steps on either replica leave both with bit-identical layers and the same
// step count (rank 1 starts from other weights and takes rank 0's), the returned cut gradient is
// the batch's own, and a replica that shuts down ends the group: the other refuses steps with
// kReplicaLost (UNAVAILABLE) and says why.
#include "cleave/server/replicated_top.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <future>

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

// Both ranks' bodies in threads; a rank's body gets `others_done`, which it waits on before it
// lets its replica go (the first to stop ends the group).
void RunBoth(const std::function<void(int, const std::function<void()>&)>& body) {
  std::promise<void> done[2];
  std::shared_future<void> finished[2] = {done[0].get_future().share(),
                                          done[1].get_future().share()};
  std::vector<std::future<void>> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    ranks.push_back(std::async(std::launch::async, [&, rank] {
      body(rank, [&, rank] {
        done[rank].set_value();
        finished[1 - rank].wait();
      });
    }));
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
  });
  EXPECT_EQ(steps[0], steps[1]);
  EXPECT_GE(steps[0], 5);
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
