#include "cleave/compress/method.h"

#include "cleave/core/error.h"

namespace cleave {

namespace {

constexpr Method kMethods[] = {Method::kNone, Method::kTopK, Method::kGaussianK,
                               Method::kGaussianKPlus, Method::kRandomK};

}  // namespace

const char* MethodName(Method method) {
  switch (method) {
    case Method::kNone:
      return "none";
    case Method::kTopK:
      return "topk";
    case Method::kGaussianK:
      return "gaussiank";
    case Method::kGaussianKPlus:
      return "gaussiank+";
    case Method::kRandomK:
      return "randomk";
  }
  return "unknown";
}

Method ParseMethod(const std::string& text) {
  for (Method method : kMethods) {
    if (text == MethodName(method)) return method;
  }
  throw UserError("unknown compression method '" + text + "' (use " + MethodList() + ")");
}

const std::vector<std::string>& MethodNames() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (Method method : kMethods) out.push_back(MethodName(method));
    return out;
  }();
  return names;
}

std::string MethodList() {
  std::string out;
  for (const std::string& name : MethodNames()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

}  // namespace cleave
