#include "common/job.h"

#include <cctype>

namespace zf {

namespace {
bool name_char(char c, bool allow_punct) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' ||
         (allow_punct && (c == '.' || c == '-'));
}
}  // namespace

bool is_valid_job_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxJobNameBytes || name[0] == '.' || name[0] == '-') return false;
  for (char c : name)
    if (!name_char(c, true)) return false;
  return true;
}

std::string queue_of(const Job& job) {
  if (job.local_queue) return job.local_queue->name;
  if (!job.queue.empty()) return job.queue;
  return std::string(kDefaultQueue);
}

bool is_valid_param_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char c : name)
    if (!name_char(c, false)) return false;
  return true;
}

namespace {
// Walks a template; calls on_text for literal runs and on_name for {{name}}.
template <class Text, class Name>
Status walk_template(std::string_view t, Text&& on_text, Name&& on_name) {
  size_t i = 0;
  while (i < t.size()) {
    size_t open = t.find("{{", i);
    if (open == std::string_view::npos) {
      on_text(t.substr(i));
      break;
    }
    on_text(t.substr(i, open - i));
    size_t close = t.find("}}", open + 2);
    if (close == std::string_view::npos)
      return make_error("unclosed '{{' in '" + std::string(t) + "'");
    std::string_view inner = t.substr(open + 2, close - open - 2);
    while (!inner.empty() && inner.front() == ' ') inner.remove_prefix(1);
    while (!inner.empty() && inner.back() == ' ') inner.remove_suffix(1);
    if (!is_valid_param_name(inner))
      return make_error("'{{" + std::string(t.substr(open + 2, close - open - 2)) +
                        "}}' is not a parameter name in '" + std::string(t) + "'");
    if (auto s = on_name(inner); !s.ok()) return s;
    i = close + 2;
  }
  return {};
}
}  // namespace

Result<std::vector<std::string>> template_names(std::string_view tmpl) {
  std::vector<std::string> names;
  auto s = walk_template(tmpl, [](std::string_view) {},
                         [&](std::string_view n) -> Status {
                           names.emplace_back(n);
                           return {};
                         });
  if (!s.ok()) return s.error();
  return names;
}

Result<std::string> substitute(std::string_view tmpl, const std::map<std::string, std::string>& params) {
  std::string out;
  out.reserve(tmpl.size());
  auto s = walk_template(tmpl, [&](std::string_view text) { out += text; },
                         [&](std::string_view n) -> Status {
                           auto it = params.find(std::string(n));
                           if (it == params.end()) return make_error("unknown parameter '" + std::string(n) + "'");
                           out += it->second;
                           return {};
                         });
  if (!s.ok()) return s.error();
  return out;
}

Result<ResolvedInstance> resolve_instance(const Job& job, const std::map<std::string, std::string>& given) {
  if (given.size() > kMaxParams)
    return make_error("too many parameters (" + std::to_string(given.size()) + ", at most " +
                      std::to_string(kMaxParams) + ")");
  ResolvedInstance out;
  for (const auto& [k, v] : given) {
    bool known = false;
    for (const auto& p : job.params) known = known || p.name == k;
    if (!known) return make_error("job '" + job.name + "' has no parameter '" + k + "'");
    if (v.size() > kMaxParamValueBytes)
      return make_error("parameter '" + k + "' is too long (" + std::to_string(v.size()) + " bytes, at most " +
                        std::to_string(kMaxParamValueBytes) + ")");
  }
  for (const auto& p : job.params) {
    if (auto it = given.find(p.name); it != given.end()) out.params[p.name] = it->second;
    else if (p.default_value) out.params[p.name] = *p.default_value;
    else return make_error("job '" + job.name + "' needs parameter '" + p.name + "'");
  }
  auto sub = [&](const std::string& t, std::string& dst) -> Status {
    auto r = substitute(t, out.params);
    if (!r.ok()) return r.error();
    dst = std::move(r.value());
    return {};
  };
  for (const auto& st : job.steps) {
    proto::StepSpec s;
    s.name = st.name;
    s.kind = st.kind == Step::Kind::Run ? "run" : "builtin";
    s.builtin = st.builtin;
    for (const auto& a : st.run) {
      std::string v;
      if (auto r = sub(a, v); !r.ok()) return r.error();
      s.argv.push_back(std::move(v));
    }
    for (const auto& [k, t] : st.args)
      if (auto r = sub(t, s.args[k]); !r.ok()) return r.error();
    for (const auto& [k, t] : st.env)
      if (auto r = sub(t, s.env[k]); !r.ok()) return r.error();
    if (auto r = sub(st.cwd, s.cwd); !r.ok()) return r.error();
    s.timeout_ms = st.timeout ? static_cast<uint64_t>(st.timeout->count()) : 0;
    out.steps.push_back(std::move(s));
  }
  return out;
}

}  // namespace zf
