// Error messages for TOML files, shared by the job, queue and trigger
// loaders: "file:line:col: field 'steps[0].run': expected ...".
#pragma once

#include <string>
#include <string_view>

#include <toml++/toml.h>

#include "common/result.h"

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
