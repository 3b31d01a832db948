// The compression methods, by name: the one list every flag, config and log line is checked
// against. Strings become a Method here and nowhere else.
#pragma once

#include <string>
#include <vector>

namespace cleave {

enum class Method { kNone, kTopK, kGaussianK, kGaussianKPlus, kRandomK };

// "none", "topk", "gaussiank", "gaussiank+", "randomk".
const char* MethodName(Method method);
// Throws UserError naming the valid methods.
Method ParseMethod(const std::string& text);
// Every method's name, in the enum's order (for flag checks and help texts).
const std::vector<std::string>& MethodNames();
// "none, topk, gaussiank, gaussiank+, randomk"
std::string MethodList();

}  // namespace cleave
