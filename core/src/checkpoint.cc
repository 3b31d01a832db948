#include "cleave/core/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <zlib.h>

#include <cstring>

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

template <typename T>
void Append(std::string* out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
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

}  // namespace

void SaveCheckpoint(const std::string& path, const torch::nn::Module& module,
                    const torch::optim::Optimizer* optimizer, const CheckpointMeta& meta) {
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
  std::string names;
  for (const auto& [name, value] : meta.counters) {
    archive.write(kCounterPrefix + name, at::tensor({value}, at::kLong));
    names += name + "\n";
  }
  archive.write(kCounterNames, at::from_blob(names.data(), {static_cast<int64_t>(names.size())},
                                             at::kChar)
                                   .clone());
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
  const std::string file = ReadFile(path, "checkpoint");
  auto corrupt = [&path](const std::string& why) {
    return UserError("checkpoint '" + path + "' is corrupt: " + why);
  };
  if (file.size() < kHeaderSize || std::memcmp(file.data(), kMagic, sizeof(kMagic)) != 0) {
    throw corrupt("not a cleave checkpoint (bad header)");
  }
  const auto payload_size = Read<uint64_t>(file, 8);
  const auto crc = Read<uint32_t>(file, 16);
  const auto fingerprint_size = Read<uint32_t>(file, 20);
  if (fingerprint_size > 1024 || kHeaderSize + fingerprint_size > file.size()) {
    throw corrupt("bad fingerprint length");
  }
  const size_t payload_offset = kHeaderSize + fingerprint_size;
  if (payload_size != file.size() - payload_offset) {
    throw corrupt("truncated (" + std::to_string(file.size() - payload_offset) + " of " +
                  std::to_string(payload_size) + " payload bytes)");
  }
  if (Crc32(file.data() + payload_offset, payload_size) != crc) {
    throw corrupt("CRC mismatch");
  }
  CheckpointMeta meta;
  meta.fingerprint = file.substr(kHeaderSize, fingerprint_size);
  if (!expected_fingerprint.empty() && meta.fingerprint != expected_fingerprint) {
    throw UserError("checkpoint '" + path + "' was written for model " + meta.fingerprint +
                    ", this model is " + expected_fingerprint);
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(file.data() + payload_offset, payload_size);
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
      meta.counters[name] = value.item<int64_t>();
      begin = end == std::string::npos ? names.size() : end + 1;
    }
    // Header, CRC and fingerprint were checked above, so this only fails on a zoo change.
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    module.load(model_archive);
    if (optimizer != nullptr) {
      torch::serialize::InputArchive optimizer_archive;
      if (archive.try_read("optimizer", optimizer_archive)) optimizer->load(optimizer_archive);
    }
  } catch (const c10::Error& error) {
    throw UserError("checkpoint '" + path + "' does not fit this model: " +
                    error.what_without_backtrace());
  }
  return meta;
}

}  // namespace cleave
