#include "common/builtins.h"

namespace zf {

const std::vector<BuiltinSpec>& all_builtins() {
  static const std::vector<BuiltinSpec> table = {
      {"noop", {}, {}},
      {"echo", {"text"}, {}},
      {"sleep", {"duration"}, {}},
  };
  return table;
}

const BuiltinSpec* find_builtin(std::string_view name) {
  for (const auto& b : all_builtins())
    if (b.name == name) return &b;
  return nullptr;
}

}  // namespace zf
