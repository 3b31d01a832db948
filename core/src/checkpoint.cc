#include "cleave/core/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <sstream>
#include <type_traits>
#include <utility>
#include <vector>

#include "cleave/core/error.h"
#include "cleave/core/file_io.h"

namespace cleave {

namespace {

// File layout: magic (8) | payload length (u64 LE) | CRC32 of payload (u32 LE) |
// fingerprint length (u32 LE) | fingerprint | payload (a LibTorch archive).
constexpr char kMagic[8] = {'C', 'L', 'V', 'C', 'K', 'P', 'T', '1'};
constexpr size_t kHeaderSize = 8 + 8 + 4 + 4;
constexpr const char* kCounterPrefix = "cleave_counter.";
constexpr const char* kCounterNames = "cleave_counter_names";
constexpr uint32_t kMaxFingerprintSize = 1024;
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the header is written little-endian");

template <typename T>
void Append(std::string* out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out->append(bytes, sizeof(T));
}

template <typename T>
T Read(const std::string& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

uint32_t Crc32(const char* data, size_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  while (size > 0) {
    const uInt chunk = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data), chunk);
    data += chunk;
    size -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

// A parameter or buffer of the module being loaded, and its value read from the checkpoint.
struct LoadedTensor {
  const char* kind;  // "parameter" or "buffer"
  std::string name;  // dotted path, e.g. "0.weight"
  at::Tensor target;
  at::Tensor value;
};

// Reads every parameter and buffer of `module` (recursively) from `archive` into fresh tensors,
// following Module::save's layout, without touching the module (Module::load would replace the
// module's tensors as it goes, and would take whatever shape the file has).
void ReadModuleTensors(const torch::nn::Module& module, torch::serialize::InputArchive& archive,
                       const std::string& prefix, std::vector<LoadedTensor>* out) {
  for (const auto& item : module.named_parameters(/*recurse=*/false)) {
    LoadedTensor loaded{"parameter", prefix + item.key(), item.value(), at::Tensor()};
    archive.read(item.key(), loaded.value);
    out->push_back(std::move(loaded));
  }
  for (const auto& item : module.named_buffers(/*recurse=*/false)) {
    LoadedTensor loaded{"buffer", prefix + item.key(), item.value(), at::Tensor()};
    archive.read(item.key(), loaded.value, /*is_buffer=*/true);
    out->push_back(std::move(loaded));
  }
  for (const auto& child : module.named_children()) {
    if (!child.value()->is_serializable()) continue;
    torch::serialize::InputArchive child_archive;
    archive.read(child.key(), child_archive);
    ReadModuleTensors(*child.value(), child_archive, prefix + child.key() + ".", out);
  }
}

std::string ShapeText(const at::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes() << " " << tensor.scalar_type();
  return out.str();
}

// The state tensors the known optimizers (Adam, AdamW, SGD) keep for one parameter, by name;
// undefined ones left out. Other optimizers' state is not inspected.
std::vector<std::pair<const char*, at::Tensor>> OptimizerStateTensors(
    const torch::optim::OptimizerParamState& state) {
  std::vector<std::pair<const char*, at::Tensor>> tensors;
  if (const auto* adam = dynamic_cast<const torch::optim::AdamParamState*>(&state)) {
    tensors = {{"exp_avg", adam->exp_avg()},
               {"exp_avg_sq", adam->exp_avg_sq()},
               {"max_exp_avg_sq", adam->max_exp_avg_sq()}};
  } else if (const auto* adamw = dynamic_cast<const torch::optim::AdamWParamState*>(&state)) {
    tensors = {{"exp_avg", adamw->exp_avg()},
               {"exp_avg_sq", adamw->exp_avg_sq()},
               {"max_exp_avg_sq", adamw->max_exp_avg_sq()}};
  } else if (const auto* sgd = dynamic_cast<const torch::optim::SGDParamState*>(&state)) {
    tensors = {{"momentum_buffer", sgd->momentum_buffer()}};
  }
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const auto& named) { return !named.second.defined(); }),
                tensors.end());
  return tensors;
}

// Calls fn(param, state_name, state_tensor) for every known state tensor of every parameter.
template <typename Fn>
void ForEachOptimizerState(const torch::optim::Optimizer& optimizer, Fn&& fn) {
  for (const auto& group : optimizer.param_groups()) {
    for (const at::Tensor& param : group.params()) {
      const auto it = optimizer.state().find(c10::guts::to_string(param.unsafeGetTensorImpl()));
      if (it == optimizer.state().end()) continue;
      for (const auto& [name, state] : OptimizerStateTensors(*it->second)) fn(param, name, state);
    }
  }
}

// The state tensors the known optimizers keep per parameter must have the parameter's shape
// (LibTorch's Optimizer::load does not check; a mismatch would only fail at the next step).
void CheckOptimizerState(const torch::optim::Optimizer& optimizer, const std::string& fail_prefix) {
  ForEachOptimizerState(optimizer,
                        [&](const at::Tensor& param, const char*, const at::Tensor& state) {
                          if (state.sizes() != param.sizes()) {
                            throw UserError(fail_prefix + "optimizer state " + ShapeText(state) +
                                            " does not fit a parameter " + ShapeText(param));
                          }
                        });
}

bool IsFinite(const at::Tensor& tensor) {
  if (!tensor.defined() || !(tensor.is_floating_point() || tensor.is_complex())) return true;
  return tensor.isfinite().all().item<bool>();
}

// The first optimizer state tensor holding NaN or Inf, described with the module's name for its
// parameter ("optimizer state 'exp_avg' of parameter '0.weight'"); empty if all are finite.
std::string NonFiniteOptimizerState(const torch::optim::Optimizer& optimizer,
                                    const torch::nn::Module& module) {
  std::string found;
  ForEachOptimizerState(
      optimizer, [&](const at::Tensor& param, const char* name, const at::Tensor& state) {
        if (!found.empty() || IsFinite(state)) return;
        std::string param_name = "(not in the module)";
        for (const auto& item : module.named_parameters()) {
          if (item.value().is_same(param)) param_name = "'" + item.key() + "'";
        }
        found = std::string("optimizer state '") + name + "' of parameter " + param_name;
      });
  return found;
}

// A checkpoint file whose header, length, CRC and fingerprint were checked; the payload is a
// LibTorch archive.
struct CheckedFile {
  std::string bytes;
  size_t payload_offset = 0;
  size_t payload_size = 0;
};

// Reads and checks the file as a whole, parsing nothing (LoadCheckpoint and ReadCheckpointMeta
// refuse the same files the same way); fills meta->fingerprint.
CheckedFile ReadCheckedFile(const std::string& path, const std::string& expected_fingerprint,
                            CheckpointMeta* meta) {
  CheckedFile file{ReadFile(path, "checkpoint")};
  const std::string& bytes = file.bytes;
  auto corrupt = [&path](const std::string& why) {
    return UserError("checkpoint '" + path + "' is corrupt: " + why);
  };
  if (bytes.size() < kHeaderSize || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    throw corrupt("not a cleave checkpoint (bad header)");
  }
  const auto payload_size = Read<uint64_t>(bytes, 8);
  const auto crc = Read<uint32_t>(bytes, 16);
  const auto fingerprint_size = Read<uint32_t>(bytes, 20);
  if (fingerprint_size > kMaxFingerprintSize || kHeaderSize + fingerprint_size > bytes.size()) {
    throw corrupt("bad fingerprint length");
  }
  file.payload_offset = kHeaderSize + fingerprint_size;
  if (payload_size != bytes.size() - file.payload_offset) {
    throw corrupt("truncated (" + std::to_string(bytes.size() - file.payload_offset) + " of " +
                  std::to_string(payload_size) + " payload bytes)");
  }
  file.payload_size = payload_size;
  if (Crc32(bytes.data() + file.payload_offset, file.payload_size) != crc) {
    throw corrupt("CRC mismatch");
  }
  meta->fingerprint = bytes.substr(kHeaderSize, fingerprint_size);
  if (!expected_fingerprint.empty() && meta->fingerprint != expected_fingerprint) {
    throw UserError("checkpoint '" + path + "' was written for model " + meta->fingerprint +
                    ", expected " + expected_fingerprint);
  }
  return file;
}

// Reads the named counters SaveCheckpoint wrote into meta->counters.
void ReadCounters(torch::serialize::InputArchive& archive, CheckpointMeta* meta) {
  at::Tensor names_tensor;
  archive.read(kCounterNames, names_tensor);
  const std::string names(static_cast<const char*>(names_tensor.data_ptr()),
                          static_cast<size_t>(names_tensor.numel()));
  size_t begin = 0;
  while (begin < names.size()) {
    const size_t end = names.find('\n', begin);
    const std::string name = names.substr(begin, end - begin);
    at::Tensor value;
    archive.read(kCounterPrefix + name, value);
    meta->counters[name] = value.item<int64_t>();
    begin = end == std::string::npos ? names.size() : end + 1;
  }
}

}  // namespace

void SaveCheckpoint(const std::string& path, const torch::nn::Module& module,
                    const torch::optim::Optimizer* optimizer, const CheckpointMeta& meta) {
  // A step that diverged must not overwrite the last good checkpoint.
  const std::string refuse = "refusing to write checkpoint '" + path + "': ";
  for (const auto& item : module.named_parameters()) {
    CLEAVE_CHECK_USER(IsFinite(item.value()), refuse, "parameter '", item.key(), "' is not finite");
  }
  for (const auto& item : module.named_buffers()) {
    CLEAVE_CHECK_USER(IsFinite(item.value()), refuse, "buffer '", item.key(), "' is not finite");
  }
  if (optimizer != nullptr) {
    const std::string state = NonFiniteOptimizerState(*optimizer, module);
    CLEAVE_CHECK_USER(state.empty(), refuse, state, " is not finite");
  }

  torch::serialize::OutputArchive archive;
  {
    torch::serialize::OutputArchive model_archive;
    module.save(model_archive);
    archive.write("model", model_archive);
  }
  if (optimizer != nullptr) {
    torch::serialize::OutputArchive optimizer_archive;
    optimizer->save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
  }
  CLEAVE_ENFORCE(meta.fingerprint.size() <= kMaxFingerprintSize, "fingerprint too long");
  std::string names;
  for (const auto& [name, value] : meta.counters) {
    CLEAVE_ENFORCE(!name.empty() && name.find('\n') == std::string::npos, "bad counter name '",
                   name, "'");
    archive.write(kCounterPrefix + name, at::tensor({value}, at::kLong));
    names += name + "\n";
  }
  archive.write(
      kCounterNames,
      at::from_blob(names.data(), {static_cast<int64_t>(names.size())}, at::kChar).clone());
  std::string payload;
  archive.save_to([&payload](const void* data, size_t size) {
    payload.append(static_cast<const char*>(data), size);
    return size;
  });

  std::string file(kMagic, sizeof(kMagic));
  Append<uint64_t>(&file, payload.size());
  Append<uint32_t>(&file, Crc32(payload.data(), payload.size()));
  Append<uint32_t>(&file, static_cast<uint32_t>(meta.fingerprint.size()));
  file += meta.fingerprint;
  file += payload;
  WriteFileAtomic(path, file, 0600);
}

CheckpointMeta LoadCheckpoint(const std::string& path, torch::nn::Module& module,
                              torch::optim::Optimizer* optimizer,
                              const std::string& expected_fingerprint) {
  // 1. The file as a whole: header, length, CRC, fingerprint. Nothing is parsed before this.
  CheckpointMeta meta;
  const CheckedFile file = ReadCheckedFile(path, expected_fingerprint, &meta);
  const std::string corrupt = "checkpoint '" + path + "' is corrupt: ";

  const std::string misfit = "checkpoint '" + path + "' does not fit this model: ";
  using OptimizerState = std::decay_t<decltype(optimizer->state())>;
  OptimizerState optimizer_before;
  bool optimizer_loaded = false;
  try {
    // 2. Everything into temporaries: counters, then parameters and buffers, checked against
    // the module's names, shapes and types.
    torch::serialize::InputArchive archive;
    archive.load_from(file.bytes.data() + file.payload_offset, file.payload_size);
    ReadCounters(archive, &meta);
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    std::vector<LoadedTensor> tensors;
    ReadModuleTensors(module, model_archive, "", &tensors);
    for (const LoadedTensor& loaded : tensors) {
      if (loaded.value.sizes() != loaded.target.sizes() ||
          loaded.value.scalar_type() != loaded.target.scalar_type()) {
        throw UserError(misfit + "'" + loaded.name + "' is " + ShapeText(loaded.value) +
                        " in the checkpoint, " + ShapeText(loaded.target) + " here");
      }
      CLEAVE_CHECK_USER(IsFinite(loaded.value), corrupt, loaded.kind, " '", loaded.name,
                        "' is not finite");
    }

    // 3. The optimizer, which LibTorch loads in place: keep its state to put back on failure.
    torch::serialize::InputArchive optimizer_archive;
    if (optimizer != nullptr && archive.try_read("optimizer", optimizer_archive)) {
      for (const auto& [key, state] : optimizer->state()) optimizer_before[key] = state->clone();
      optimizer_loaded = true;
      optimizer->load(optimizer_archive);
      CheckOptimizerState(*optimizer, misfit);
      const std::string state = NonFiniteOptimizerState(*optimizer, module);
      CLEAVE_CHECK_USER(state.empty(), corrupt, state, " is not finite");
    }

    // 4. Commit: copy values into the module's own tensors (the optimizer keeps pointing at
    // them).
    at::NoGradGuard no_grad;
    for (const LoadedTensor& loaded : tensors) loaded.target.copy_(loaded.value);
  } catch (const UserError&) {
    if (optimizer_loaded) optimizer->state() = std::move(optimizer_before);
    throw;
  } catch (const c10::Error& error) {
    if (optimizer_loaded) optimizer->state() = std::move(optimizer_before);
    throw UserError(misfit + error.what_without_backtrace());
  } catch (const std::exception& error) {
    if (optimizer_loaded) optimizer->state() = std::move(optimizer_before);
    throw UserError(misfit + error.what());
  }
  return meta;
}

CheckpointMeta ReadCheckpointMeta(const std::string& path,
                                  const std::string& expected_fingerprint) {
  CheckpointMeta meta;
  const CheckedFile file = ReadCheckedFile(path, expected_fingerprint, &meta);
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.bytes.data() + file.payload_offset, file.payload_size);
    ReadCounters(archive, &meta);
  } catch (const c10::Error& error) {
    throw UserError("checkpoint '" + path + "' is corrupt: " + error.what_without_backtrace());
  } catch (const std::exception& error) {
    throw UserError("checkpoint '" + path + "' is corrupt: " + error.what());
  }
  return meta;
}

}  // namespace cleave
