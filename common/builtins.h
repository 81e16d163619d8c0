// The built-in steps a worker runs in-process, without spawning: their names
// and arguments. The loader validates job files against this table and the
// worker's executor implements each entry (noop, echo, sleep in
// worker/execution.cc; the file builtins in worker/file_builtins.cc). The
// format for operators is in schemas/job-format.md.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace zf {

// How an argument's value is read. Values are always text (templates until
// the master substitutes the parameters); the type says what text is valid.
enum class ArgType {
  Text,      // anything
  Duration,  // "250ms", "1m30s" (common/duration.h)
  Flag,      // "true" or "false"
  Path,      // a file system path: not empty, no NUL byte
};

struct BuiltinArg {
  std::string_view name;
  ArgType type = ArgType::Text;
  bool required = false;
  std::string_view default_value;  // used when an optional argument is absent
};

struct BuiltinSpec {
  std::string_view name;
  std::vector<BuiltinArg> args;

  // nullptr if the builtin has no such argument.
  const BuiltinArg* find_arg(std::string_view arg) const;
  // "from, to, overwrite": for error messages.
  std::string arg_names() const;
};

// nullptr if there is no such builtin.
const BuiltinSpec* find_builtin(std::string_view name);
const std::vector<BuiltinSpec>& all_builtins();

// Whether `value` is valid for the argument's type. The loader calls it for
// values without templates; the worker calls it again after substitution.
// The message does not name the argument (callers add the field or step).
Status check_builtin_arg(const BuiltinArg& arg, std::string_view value);

// "true" -> true, "false" -> false, anything else an Error.
Result<bool> parse_flag(std::string_view value);

// The arguments of a resolved step (parameters substituted), each checked
// against its type, with the defaults of absent optional ones filled in.
// Error: "argument 'to': expected a path, not an empty string", a missing
// required argument or an unknown one.
Result<std::map<std::string, std::string>> resolve_builtin_args(const BuiltinSpec& spec,
                                                               const std::map<std::string, std::string>& given);

}  // namespace zf
