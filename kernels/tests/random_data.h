// Seeded test inputs of the shapes sparsification meets: normal, Laplace, heavy-tailed, post-ReLU.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace cleave::kernels::testing {

enum class Distribution { kNormal, kLaplace, kStudentT2, kPostRelu };

inline const char* Name(Distribution d) {
  switch (d) {
    case Distribution::kNormal:
      return "Normal";
    case Distribution::kLaplace:
      return "Laplace";
    case Distribution::kStudentT2:
      return "StudentT2";
    case Distribution::kPostRelu:
      return "PostRelu";
  }
  return "?";
}

inline std::vector<float> RandomData(size_t n, Distribution d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.1f, 1.0f);
  std::exponential_distribution<float> exponential(1.0f);
  std::student_t_distribution<float> student(2.0f);
  std::bernoulli_distribution coin(0.5);
  std::vector<float> x(n);
  for (float& v : x) {
    switch (d) {
      case Distribution::kNormal:
        v = normal(rng);
        break;
      case Distribution::kLaplace:
        v = (coin(rng) ? 1.0f : -1.0f) * exponential(rng);
        break;
      case Distribution::kStudentT2:
        v = student(rng);
        break;
      case Distribution::kPostRelu:
        v = std::max(0.0f, normal(rng));
        break;
    }
  }
  return x;
}

}  // namespace cleave::kernels::testing
