#include "cleave/server/replica_group.h"

#include <ATen/ATen.h>
#include <net/if.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cmath>
#include <limits>
#include <map>

namespace cleave::server {

namespace {

constexpr char kClockPrefix[] = "cleave/replica/clock/";

std::shared_ptr<gloo::transport::Device> MakeDevice(const std::string& interface) {
  // An interface name when the system knows one by that name, otherwise a host or address.
  if (if_nametoindex(interface.c_str()) != 0) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(interface);
  }
  return c10d::ProcessGroupGloo::createDeviceForHostname(interface);
}

// Identifies a list of tensors by count, dtypes and shapes (equal on every replica or not).
int64_t Signature(const std::vector<at::Tensor>& tensors) {
  std::string text = std::to_string(tensors.size());
  for (const at::Tensor& tensor : tensors) {
    text += "|" + std::string(c10::toString(tensor.scalar_type()));
    for (int64_t size : tensor.sizes()) text += "," + std::to_string(size);
  }
  // 62 bits: the negation taken below never overflows.
  return static_cast<int64_t>(std::hash<std::string>{}(text) & ((uint64_t{1} << 62) - 1));
}

// One line: c10::Error's what() carries a backtrace.
std::string OneLine(const std::exception& error) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
  const std::string message = c10_error ? c10_error->msg() : error.what();
  return message.substr(0, message.find('\n'));
}

void Wait(const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait()) throw ReplicaFailure("the collective did not complete");
}

}  // namespace

void ParseRendezvous(const std::string& text, const std::string& flag, ReplicaGroupOptions& into) {
  const size_t colon = text.rfind(':');
  CLEAVE_CHECK_USER(colon != std::string::npos && colon > 0 && colon + 1 < text.size(), flag,
                    " must be HOST:PORT, got '", text, "'");
  const std::string port = text.substr(colon + 1);
  CLEAVE_CHECK_USER(port.find_first_not_of("0123456789") == std::string::npos && port.size() <= 5,
                    flag, ": '", port, "' is not a port number");
  const int number = std::stoi(port);
  CLEAVE_CHECK_USER(number <= 65535, flag, ": port ", number, " is beyond 65535");
  into.rendezvous_host = text.substr(0, colon);
  into.rendezvous_port = static_cast<uint16_t>(number);
}

void ValidateReplicaOptions(const ReplicaGroupOptions& options) {
  CLEAVE_CHECK_USER(options.replicas >= 1 && options.replicas <= 1024,
                    "--replicas must be in [1, 1024], got ", options.replicas);
  CLEAVE_CHECK_USER(options.rank >= 0 && options.rank < options.replicas,
                    "--replica-rank must be in [0, ", options.replicas, "), got ", options.rank);
  CLEAVE_CHECK_USER(!options.interface.empty(), "--replica-interface must not be empty");
  CLEAVE_CHECK_USER(!options.rendezvous_host.empty(), "--rendezvous needs a host");
  CLEAVE_CHECK_USER(options.timeout.count() > 0, "--replica-timeout-ms must be positive");
  CLEAVE_CHECK_USER(options.rank == 0 || options.rendezvous_port != 0,
                    "--rendezvous needs a port on ranks other than 0");
}

struct ReplicaGroup::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::Store> clock;  // this group's keys, apart from Gloo's
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

ReplicaGroup::ReplicaGroup(ReplicaGroupOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {
  ValidateReplicaOptions(options_);
  const std::string where = detail::Concat("replica ", options_.rank, " of ", options_.replicas);
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = options_.rendezvous_port;
    store_options.isServer = options_.rank == 0;
    store_options.waitWorkers = false;  // the Gloo rendezvous below waits for everyone
    // c10d counts the store's connect timeout in whole seconds (0 fails at once): round up.
    store_options.timeout = std::chrono::ceil<std::chrono::seconds>(options_.timeout);
    impl_->store = c10::make_intrusive<c10d::TCPStore>(options_.rendezvous_host, store_options);
    if (options_.rank == 0 && options_.on_store_listening) {
      options_.on_store_listening(impl_->store->getPort());
    }
    impl_->clock = c10::make_intrusive<c10d::PrefixStore>("cleave", impl_->store);
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(options_.timeout);
    gloo_options->devices.push_back(MakeDevice(options_.interface));
    gloo_options->threads = 1;
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo", impl_->store), options_.rank,
        options_.replicas, gloo_options);
  } catch (const std::exception& error) {
    throw ReplicaFailure(detail::Concat(
        where, ": the rendezvous at ", options_.rendezvous_host, ":", options_.rendezvous_port,
        " (Gloo on ", options_.interface, ") failed within ", options_.timeout.count(),
        " ms: ", OneLine(error)));
  }
}

ReplicaGroup::~ReplicaGroup() = default;

void ReplicaGroup::Run(const char* what, const std::function<void()>& collective) {
  const int64_t number = sequence_++;
  try {
    if (options_.replicas > 1) {
      const std::string position = std::to_string(number);
      impl_->clock->set(kClockPrefix + std::to_string(options_.rank),
                        std::vector<uint8_t>(position.begin(), position.end()));
    }
    collective();
  } catch (const ReplicaFailure& failure) {
    throw ReplicaFailure(detail::Concat("replica ", options_.rank, " of ", options_.replicas, ": ",
                                        what, " (collective #", number, "): ", failure.what(),
                                        "; ", DescribeOthers()));
  } catch (const std::exception& error) {
    throw ReplicaFailure(detail::Concat(
        "replica ", options_.rank, " of ", options_.replicas, ": ", what, " (collective #", number,
        ") failed: ", OneLine(error), "; ", DescribeOthers(),
        "; a replica died or stopped answering within ", options_.timeout.count(), " ms"));
  }
}

std::string ReplicaGroup::DescribeOthers() {
  const int64_t mine = sequence_ - 1;
  std::string out;
  try {
    for (int rank = 0; rank < options_.replicas; ++rank) {
      if (rank == options_.rank) continue;
      const std::string key = kClockPrefix + std::to_string(rank);
      if (!out.empty()) out += ", ";
      if (!impl_->clock->check({key})) {
        out += detail::Concat("rank ", rank, " never reached a collective");
        continue;
      }
      const std::vector<uint8_t> value = impl_->clock->get(key);
      const int64_t theirs = std::stoll(std::string(value.begin(), value.end()));
      out += theirs >= mine ? detail::Concat("rank ", rank, " reached it")
                            : detail::Concat("rank ", rank, " is at collective #", theirs);
    }
  } catch (const std::exception&) {
    return "the rendezvous store on rank 0 is unreachable (rank 0 is down?)";
  }
  return out;
}

void ReplicaGroup::Broadcast(std::vector<at::Tensor>& tensors, int root) {
  CLEAVE_ENFORCE(root >= 0 && root < options_.replicas, "root ", root, " outside the group");
  Run("broadcast", [&] {
    // Every replica learns whether all hold the same list before any bytes move: a mismatch
    // then fails on every rank rather than leaving some waiting.
    const int64_t signature = Signature(tensors);
    std::vector<at::Tensor> check{at::tensor({signature, -signature}, at::kLong)};
    c10d::AllreduceOptions max;
    max.reduceOp = c10d::ReduceOp::MAX;
    Wait(impl_->group->allreduce(check, max));
    const int64_t* bounds = check[0].data_ptr<int64_t>();
    if (bounds[0] != -bounds[1]) {
      throw ReplicaFailure("the replicas hold different tensors (count, dtypes or shapes)");
    }
    std::map<at::ScalarType, std::vector<size_t>> by_dtype;
    for (size_t i = 0; i < tensors.size(); ++i) by_dtype[tensors[i].scalar_type()].push_back(i);
    at::NoGradGuard no_grad;
    for (const auto& [dtype, indices] : by_dtype) {
      std::vector<at::Tensor> pieces;
      for (size_t i : indices) pieces.push_back(tensors[i].detach().reshape(-1).to(at::kCPU));
      std::vector<at::Tensor> flat{at::cat(pieces).contiguous()};
      c10d::BroadcastOptions from;
      from.rootRank = root;
      Wait(impl_->group->broadcast(flat, from));
      int64_t offset = 0;
      for (size_t i : indices) {
        const int64_t count = tensors[i].numel();
        tensors[i].copy_(flat[0].narrow(0, offset, count).view(tensors[i].sizes()));
        offset += count;
      }
    }
  });
}

void ReplicaGroup::BroadcastBytes(std::string& bytes, int root) {
  CLEAVE_ENFORCE(root >= 0 && root < options_.replicas, "root ", root, " outside the group");
  Run("broadcast of bytes", [&] {
    std::vector<at::Tensor> size{at::tensor({static_cast<int64_t>(bytes.size())}, at::kLong)};
    c10d::BroadcastOptions from;
    from.rootRank = root;
    Wait(impl_->group->broadcast(size, from));
    const int64_t count = size[0].item<int64_t>();
    if (options_.rank != root) bytes.assign(static_cast<size_t>(count), '\0');
    if (count == 0) return;
    std::vector<at::Tensor> data{at::from_blob(bytes.data(), {count}, at::kByte)};
    Wait(impl_->group->broadcast(data, from));
  });
}

std::vector<double> ReplicaGroup::AllReduceSums(const std::vector<double>& values) {
  CLEAVE_ENFORCE(!values.empty(), "nothing to sum");
  std::vector<at::Tensor> sums{at::tensor(values, at::kDouble)};
  Run("allreduce of counts", [&] { Wait(impl_->group->allreduce(sums)); });
  const double* sum = sums[0].data_ptr<double>();
  return std::vector<double>(sum, sum + values.size());
}

double ReplicaGroup::AllReduceGradients(const std::vector<at::Tensor>& grads,
                                        double local_weight) {
  CLEAVE_ENFORCE(std::isfinite(local_weight) && local_weight >= 0, "bad weight ", local_weight);
  CLEAVE_ENFORCE(!grads.empty(), "no gradients to average");
  const at::ScalarType dtype = grads.front().scalar_type();
  std::vector<at::Tensor> pieces;
  at::NoGradGuard no_grad;
  for (const at::Tensor& grad : grads) {
    CLEAVE_ENFORCE(grad.defined() && grad.scalar_type() == dtype && at::isFloatingType(dtype),
                   "gradients must be defined and of one floating dtype");
    // A replica without work sends zeros, not 0 * g: its g may be anything (even not finite).
    pieces.push_back(local_weight > 0 ? grad.detach().reshape(-1).to(at::kCPU) * local_weight
                                      : at::zeros({grad.numel()}, grad.options().device(at::kCPU)));
  }
  pieces.push_back(at::full({1}, local_weight, at::TensorOptions().dtype(dtype)));
  std::vector<at::Tensor> flat{at::cat(pieces)};
  Run("allreduce of the gradients", [&] { Wait(impl_->group->allreduce(flat)); });
  const int64_t total = flat[0].numel() - 1;
  const double global_weight = flat[0][total].item<double>();
  if (global_weight > 0) flat[0].narrow(0, 0, total).div_(global_weight);
  int64_t offset = 0;
  for (const at::Tensor& grad : grads) {
    const int64_t count = grad.numel();
    at::Tensor target = grad;  // shares storage: the caller's grads change in place
    target.copy_(flat[0].narrow(0, offset, count).view(grad.sizes()));
    offset += count;
  }
  return global_weight;
}

}  // namespace cleave::server
