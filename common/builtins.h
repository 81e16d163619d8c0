// The built-in steps a worker runs in-process, without spawning: their names
// and arguments. The loader validates job files against this table and the
// worker's executor implements each entry.
#pragma once

#include <string_view>
#include <vector>

namespace zf {

struct BuiltinSpec {
  std::string_view name;
  std::vector<std::string_view> required;
  std::vector<std::string_view> optional;
};

// nullptr if there is no such builtin.
const BuiltinSpec* find_builtin(std::string_view name);
const std::vector<BuiltinSpec>& all_builtins();

}  // namespace zf
