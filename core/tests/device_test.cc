#include "cleave/core/device.h"

#include <gtest/gtest.h>

#include "cleave/core/error.h"

namespace cleave {
namespace {

TEST(DeviceTest, CpuIsAlwaysThere) { EXPECT_EQ(ResolveDevice("cpu"), c10::Device(c10::kCPU)); }

TEST(DeviceTest, AutoPicksTheGpuOnlyWhenThereIsOne) {
  const c10::Device device = ResolveDevice("auto");
  EXPECT_EQ(device.is_cuda(), CudaAvailable());
}

TEST(DeviceTest, CudaIsRefusedWithOneLineWithoutAGpu) {
  if (CudaAvailable()) {
    EXPECT_EQ(ResolveDevice("cuda"), c10::Device(c10::kCUDA, 0));
    EXPECT_EQ(ResolveDevice("cuda:0"), c10::Device(c10::kCUDA, 0));
    EXPECT_THROW(ResolveDevice("cuda:1000"), UserError);
    return;
  }
  try {
    ResolveDevice("cuda");
    FAIL() << "cuda accepted without a GPU";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ResolveDevice("cuda:0"), UserError);
}

TEST(DeviceTest, UnknownNamesAreRefused) {
  for (const char* name : {"", "gpu", "cuda0", "cuda:", "cuda:x", "cuda:-1", "mps", "CPU"}) {
    EXPECT_THROW(ResolveDevice(name), UserError) << name;
  }
}

}  // namespace
}  // namespace cleave
