#include "cleave/test_support/fashion_mnist.h"

#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <numeric>
#include <utility>
#include <vector>

namespace cleave::test_support {

std::string FashionMnistDir() {
  const char* dir = std::getenv("CLEAVE_FASHION_MNIST_DIR");
  return dir != nullptr && *dir != '\0' ? dir : kDefaultFashionMnistDir;
}

std::optional<std::string> FashionMnistProblem() {
  const std::filesystem::path dir = FashionMnistDir();
  for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(dir / name, error) &&
        !std::filesystem::is_regular_file(dir / (std::string(name) + ".gz"), error)) {
      return "Fashion-MNIST not found: no " + (dir / name).string() + "[.gz]";
    }
  }
  return std::nullopt;
}

bool SkipDatasetTests() {
  const char* skip = std::getenv("CLEAVE_SKIP_DATASET_TESTS");
  return skip != nullptr && std::string(skip) == "1";
}

const Dataset& FashionMnist(FashionMnistSplit split, int64_t rows) {
  static std::mutex mutex;
  static std::map<std::pair<FashionMnistSplit, int64_t>, Dataset> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = loaded.find({split, rows});
  if (found == loaded.end()) {
    Dataset all = LoadFashionMnist(FashionMnistDir(), split);
    if (rows >= 0 && rows < all.size()) {
      std::vector<int64_t> head(rows);
      std::iota(head.begin(), head.end(), 0);
      all = all.Subset(head);
    }
    found = loaded.emplace(std::make_pair(split, rows), std::move(all)).first;
  }
  return found->second;
}

}  // namespace cleave::test_support
