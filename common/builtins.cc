#include "common/builtins.h"

#include "common/duration.h"

namespace zf {

const std::vector<BuiltinSpec>& all_builtins() {
  using enum ArgType;
  // Defaults are chosen so that nothing is replaced or removed unless the job
  // says so: no overwrite, no recursion, a missing path is an error. mkdir
  // creates missing parents by default (like `mkdir -p`), which only adds.
  static const std::vector<BuiltinSpec> table = {
      {"noop", {}},
      {"echo", {{"text", Text, true, ""}}},
      {"sleep", {{"duration", Duration, true, ""}}},
      {"copy",
       {{"from", Path, true, ""},
        {"to", Path, true, ""},
        {"overwrite", Flag, false, "false"},
        {"recursive", Flag, false, "false"}}},
      {"move", {{"from", Path, true, ""}, {"to", Path, true, ""}, {"overwrite", Flag, false, "false"}}},
      {"delete",
       {{"path", Path, true, ""}, {"recursive", Flag, false, "false"}, {"missing_ok", Flag, false, "false"}}},
      {"mkdir", {{"path", Path, true, ""}, {"parents", Flag, false, "true"}}},
  };
  return table;
}

const BuiltinSpec* find_builtin(std::string_view name) {
  for (const auto& b : all_builtins())
    if (b.name == name) return &b;
  return nullptr;
}

const BuiltinArg* BuiltinSpec::find_arg(std::string_view arg) const {
  for (const auto& a : args)
    if (a.name == arg) return &a;
  return nullptr;
}

std::string BuiltinSpec::arg_names() const {
  std::string out;
  for (const auto& a : args) out += (out.empty() ? "" : ", ") + std::string(a.name);
  return out.empty() ? "none" : out;
}

Result<bool> parse_flag(std::string_view value) {
  if (value == "true") return true;
  if (value == "false") return false;
  return make_error("expected \"true\" or \"false\", not '" + std::string(value) + "'");
}

Status check_builtin_arg(const BuiltinArg& arg, std::string_view value) {
  switch (arg.type) {
    case ArgType::Text: return {};
    case ArgType::Duration: {
      auto d = parse_duration(value);
      if (!d.ok()) return d.error();
      return {};
    }
    case ArgType::Flag: {
      auto f = parse_flag(value);
      if (!f.ok()) return f.error();
      return {};
    }
    case ArgType::Path:
      if (value.empty()) return make_error("expected a path, not an empty string");
      if (value.find('\0') != std::string_view::npos) return make_error("a path cannot contain a NUL byte");
      return {};
  }
  return {};
}

Result<std::map<std::string, std::string>> resolve_builtin_args(const BuiltinSpec& spec,
                                                               const std::map<std::string, std::string>& given) {
  std::map<std::string, std::string> out;
  for (const auto& a : spec.args) {
    std::string name(a.name);
    auto it = given.find(name);
    if (it == given.end()) {
      if (a.required) return make_error("argument '" + name + "' is missing");
      out[name] = std::string(a.default_value);
      continue;
    }
    if (auto s = check_builtin_arg(a, it->second); !s.ok())
      return make_error("argument '" + name + "': " + s.error().message);
    out[name] = it->second;
  }
  for (const auto& [k, v] : given)
    if (!spec.find_arg(k)) return make_error("unknown argument '" + k + "' (allowed: " + spec.arg_names() + ")");
  return out;
}

}  // namespace zf
