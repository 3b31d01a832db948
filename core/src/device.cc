#include "cleave/core/device.h"

#include <torch/cuda.h>

#include <cstdlib>

#include "cleave/core/error.h"

namespace cleave {

bool CudaAvailable() { return torch::cuda::is_available(); }

c10::Device ResolveDevice(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "auto") return CudaAvailable() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  const std::string prefix = "cuda";
  CLEAVE_CHECK_USER(name.compare(0, prefix.size(), prefix) == 0,
                    "unknown device '", name, "' (use cpu, cuda, cuda:N or auto)");
  int index = 0;
  if (name.size() > prefix.size()) {
    const std::string digits = name.substr(prefix.size() + 1);
    char* end = nullptr;
    const long value = std::strtol(digits.c_str(), &end, 10);
    CLEAVE_CHECK_USER(name[prefix.size()] == ':' && !digits.empty() && *end == '\0' && value >= 0 &&
                          value < 1024,
                      "unknown device '", name, "' (use cpu, cuda, cuda:N or auto)");
    index = static_cast<int>(value);
  }
  CLEAVE_CHECK_USER(CudaAvailable(), "--device ", name,
                    ": no CUDA device here (this LibTorch was built without CUDA, or no GPU is "
                    "visible); use --device cpu or auto");
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  CLEAVE_CHECK_USER(index < count, "--device ", name, ": only ", count, " GPU(s) visible");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace cleave
