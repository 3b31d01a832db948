// A TorchScript split made in C++ (torch::jit::Module::define: the IR torch.jit.script writes),
// with the cleave metadata, for tests of the binaries' libraries that must not need Python.
#pragma once

#include <cstdint>
#include <string>

namespace cleave::test_support {

struct ScriptHalfPaths {
  std::string bottom;  // [features] -> linear -> ReLU -> dropout(0.1, training) -> [4]
  std::string top;     // [4] -> linear -> [classes] (U-shaped: [4] -> linear -> ReLU -> [8])
  std::string tail;    // U-shaped only: [8] -> linear -> [classes]
};

// Writes `dir`/`name`_bottom.pt and `dir`/`name`_top.pt, both with metadata naming `split_id`;
// weights drawn from a generator seeded with `seed`.
ScriptHalfPaths WriteScriptHalves(const std::string& dir, const std::string& name,
                                  const std::string& split_id, int64_t features = 8,
                                  int64_t classes = 3, uint64_t seed = 1);

// A U-shaped export: `dir`/`name`_bottom.pt, _top.pt (the server's middle) and _tail.pt, with
// middle_shape {8} and tail_layers 1 in every part's metadata.
ScriptHalfPaths WriteUShapedScriptParts(const std::string& dir, const std::string& name,
                                        const std::string& split_id, int64_t features = 8,
                                        int64_t classes = 3, uint64_t seed = 1);

}  // namespace cleave::test_support
