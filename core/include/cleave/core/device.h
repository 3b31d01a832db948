// Where a half's layers and tensors live: `--device cpu|cuda|cuda:N|auto` on both binaries.
// The wire stays on the host: tensors are moved to the device after decoding and back before
// encoding (compress/ selects on the device when it is a GPU).
#pragma once

#include <c10/core/Device.h>

#include <string>

namespace cleave {

// True when this LibTorch was built with CUDA and sees at least one GPU.
bool CudaAvailable();

// "cpu"; "cuda" or "cuda:N" (UserError when CUDA is not available, or N is not a visible GPU);
// "auto" (the first GPU when CUDA is available, else the CPU). UserError for anything else.
c10::Device ResolveDevice(const std::string& name);

// The --device flag's help text, the same on both ends.
inline constexpr const char* kDeviceFlagHelp =
    "Where this side's layers, activations, compression and NoPeek run: cpu, cuda, cuda:N, or "
    "auto (a GPU when LibTorch has CUDA and one is visible)";

}  // namespace cleave
