// Error messages for TOML files, shared by the job, queue and trigger
// loaders: "file:line:col: field 'steps[0].run': expected ...".
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#include "common/result.h"

// toml++ 3.3.0 (Debian 12) checks preconditions of its own parser with
// TOML_ASSERT, and some malformed files break them ("[#" as a table header,
// a date-time with no digit after its 'T'): by default the process aborts,
// and under NDEBUG the check is an assumption (undefined behaviour). Found by
// tests/fuzz; upstream marzer/tomlplusplus#301. Here a failed check throws
// TomlCheckFailed, which the loaders report as a syntax error, with NDEBUG
// lifted around the include so that every build checks. Include toml++ only
// through this header, so that every file compiles it the same way (a
// direct include before this one is a macro redefinition error).
namespace zf {
struct TomlCheckFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] inline void toml_check_failed(const char* check) { throw TomlCheckFailed(check); }
}  // namespace zf
#define TOML_ASSERT(expr) ((expr) ? static_cast<void>(0) : ::zf::toml_check_failed(#expr))
#pragma push_macro("NDEBUG")
#undef NDEBUG
#include <toml++/toml.h>
#pragma pop_macro("NDEBUG")

namespace zf {

// Names the file a node came from, for errors about that node.
class TomlContext {
 public:
  explicit TomlContext(std::string_view source) : source_(source) {}

  // node may be null (a missing field): then the message has no line.
  Error at(const toml::node* node, std::string_view field, std::string_view what) const {
    std::string where(source_);
    if (node && node->source().begin)
      where += ":" + std::to_string(node->source().begin.line) + ":" + std::to_string(node->source().begin.column);
    std::string msg = where + ": ";
    if (!field.empty()) msg += "field '" + std::string(field) + "': ";
    msg += what;
    return make_error(std::move(msg));
  }

 private:
  std::string source_;
};

inline Result<std::string> get_string(const TomlContext& cx, const toml::node& n, std::string_view field) {
  if (auto v = n.value<std::string>(); v && n.is_string()) return *v;
  return cx.at(&n, field, "expected a string");
}

}  // namespace zf
