#include "common/job_loader.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "common/toml_context.h"  // toml++, included the one way (see there)

#include "common/builtins.h"

namespace zf {

namespace {

// Keys reserved for step kinds the format will grow (see schemas/job-format.md),
// so that files written for a later version fail clearly rather than oddly.
const std::set<std::string_view> kPlannedStepKinds = {"choose", "for_each", "try", "call"};

using Context = TomlContext;

Result<Millis> get_duration(const Context& cx, const toml::node& n, std::string_view field) {
  auto s = get_string(cx, n, field);
  if (!s.ok()) return s.error();
  auto d = parse_duration(*s);
  if (!d.ok()) return cx.at(&n, field, d.error().message);
  if (d->count() <= 0) return cx.at(&n, field, "must be greater than zero");
  return *d;
}

Status check_templates(const Context& cx, const toml::node& n, std::string_view field,
                       std::string_view tmpl, const std::vector<ParamSpec>& params) {
  auto names = template_names(tmpl);
  if (!names.ok()) return cx.at(&n, field, names.error().message);
  for (const auto& name : *names) {
    bool known = false;
    for (const auto& p : params) known = known || p.name == name;
    if (!known) return cx.at(&n, field, "uses '{{" + name + "}}' but the job has no parameter '" + name + "'");
  }
  return {};
}

Result<std::map<std::string, std::string>> get_string_table(const Context& cx, const toml::node& n,
                                                            std::string_view field) {
  const auto* t = n.as_table();
  if (!t) return cx.at(&n, field, "expected a table of strings");
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : *t) {
    std::string sub = std::string(field) + "." + std::string(k.str());
    auto s = get_string(cx, v, sub);
    if (!s.ok()) return s.error();
    out[std::string(k.str())] = *s;
  }
  return out;
}

Result<std::vector<ParamSpec>> load_params(const Context& cx, const toml::node& n) {
  const auto* t = n.as_table();
  if (!t) return cx.at(&n, "params", "expected a table: [params.NAME] with optional default and description");
  std::vector<ParamSpec> out;
  for (const auto& [k, v] : *t) {
    std::string name(k.str());
    std::string field = "params." + name;
    if (!is_valid_param_name(name))
      return cx.at(&v, field, "parameter names use letters, digits and _ and do not start with a digit");
    ParamSpec p;
    p.name = name;
    const auto* pt = v.as_table();
    if (!pt) return cx.at(&v, field, "expected a table with optional 'default' and 'description'");
    for (const auto& [pk, pv] : *pt) {
      std::string key(pk.str());
      if (key == "default") {
        // Numbers and booleans are accepted as defaults and kept as text.
        if (pv.is_string()) p.default_value = *pv.value<std::string>();
        else if (pv.is_integer()) p.default_value = std::to_string(*pv.value<int64_t>());
        else if (pv.is_boolean()) p.default_value = *pv.value<bool>() ? "true" : "false";
        else return cx.at(&pv, field + ".default", "expected a string, integer or boolean");
      } else if (key == "description") {
        auto s = get_string(cx, pv, field + ".description");
        if (!s.ok()) return s.error();
        p.description = *s;
      } else {
        return cx.at(&pv, field + "." + key, "unknown field (allowed: default, description)");
      }
    }
    out.push_back(std::move(p));
  }
  if (out.size() > kMaxParams) return cx.at(&n, "params", "too many parameters");
  return out;
}

Result<Step> load_step(const Context& cx, const toml::node& n, size_t index, const std::vector<ParamSpec>& params) {
  std::string prefix = "steps[" + std::to_string(index) + "]";
  const auto* t = n.as_table();
  if (!t) return cx.at(&n, prefix, "expected a table ([[steps]])");
  Step step;
  step.name = "step" + std::to_string(index + 1);
  const toml::node* kind_node = nullptr;
  for (const auto& [k, v] : *t) {
    std::string key(k.str());
    std::string field = prefix + "." + key;
    if (kPlannedStepKinds.count(key))
      return cx.at(&v, field, "step kind '" + key + "' is planned but not supported by this version");
    if (key == "run" || key == "builtin") {
      if (kind_node) return cx.at(&v, field, "a step has exactly one of 'run' or 'builtin'");
      kind_node = &v;
    }
  }
  if (!kind_node) return cx.at(&n, prefix, "a step needs 'run = [argv...]' or 'builtin = \"NAME\"'");

  const BuiltinSpec* builtin = nullptr;
  if (const auto* run = (*t)["run"].node()) {
    const auto* arr = run->as_array();
    if (!arr || arr->empty()) return cx.at(run, prefix + ".run", "expected a non-empty array of strings (argv)");
    for (size_t i = 0; i < arr->size(); ++i) {
      const auto& e = *arr->get(i);
      auto s = get_string(cx, e, prefix + ".run[" + std::to_string(i) + "]");
      if (!s.ok()) return s.error();
      if (auto c = check_templates(cx, e, prefix + ".run[" + std::to_string(i) + "]", *s, params); !c.ok())
        return c.error();
      step.run.push_back(*s);
    }
    step.kind = Step::Kind::Run;
  } else {
    const auto* b = (*t)["builtin"].node();
    auto s = get_string(cx, *b, prefix + ".builtin");
    if (!s.ok()) return s.error();
    builtin = find_builtin(*s);
    if (!builtin) {
      std::string names;
      for (const auto& bs : all_builtins()) names += (names.empty() ? "" : ", ") + std::string(bs.name);
      return cx.at(b, prefix + ".builtin", "unknown builtin '" + *s + "' (known: " + names + ")");
    }
    step.kind = Step::Kind::Builtin;
    step.builtin = *s;
  }

  for (const auto& [k, v] : *t) {
    std::string key(k.str());
    std::string field = prefix + "." + key;
    if (key == "run" || key == "builtin") continue;
    if (key == "name") {
      auto s = get_string(cx, v, field);
      if (!s.ok()) return s.error();
      step.name = *s;
    } else if (key == "timeout") {
      auto d = get_duration(cx, v, field);
      if (!d.ok()) return d.error();
      step.timeout = *d;
    } else if (key == "cwd") {
      auto s = get_string(cx, v, field);
      if (!s.ok()) return s.error();
      if (auto c = check_templates(cx, v, field, *s, params); !c.ok()) return c.error();
      step.cwd = *s;
    } else if (key == "env") {
      auto m = get_string_table(cx, v, field);
      if (!m.ok()) return m.error();
      for (const auto& [ek, ev] : *m) {
        if (ek.empty() || ek.find('=') != std::string::npos)
          return cx.at(&v, field + "." + ek, "not a valid environment variable name");
        if (auto c = check_templates(cx, v, field + "." + ek, ev, params); !c.ok()) return c.error();
      }
      step.env = std::move(*m);
    } else if (builtin) {
      const BuiltinArg* arg = builtin->find_arg(key);
      if (!arg)
        return cx.at(&v, field, "unknown argument for builtin '" + step.builtin + "' (allowed: " +
                                    builtin->arg_names() + ")");
      // Integers and booleans are kept as text, like parameter defaults, so
      // that `overwrite = true` reads as TOML and as "true" alike.
      std::string value;
      if (v.is_string()) value = *v.value<std::string>();
      else if (v.is_integer()) value = std::to_string(*v.value<int64_t>());
      else if (v.is_boolean()) value = *v.value<bool>() ? "true" : "false";
      else return cx.at(&v, field, "expected a string");
      if (auto c = check_templates(cx, v, field, value, params); !c.ok()) return c.error();
      // A value with a template is checked by the worker once substituted.
      if (value.find("{{") == std::string::npos)
        if (auto c = check_builtin_arg(*arg, value); !c.ok()) return cx.at(&v, field, c.error().message);
      step.args[key] = value;
    } else {
      return cx.at(&v, field, "unknown field (allowed: run, builtin, name, timeout, cwd, env)");
    }
  }
  if (builtin) {
    for (const auto& a : builtin->args)
      if (a.required && !step.args.count(std::string(a.name)))
        return cx.at(&n, prefix, "builtin '" + step.builtin + "' needs '" + std::string(a.name) + "'");
  }
  return step;
}


Result<int> get_int(const Context& cx, const toml::node& n, std::string_view field, int64_t lo, int64_t hi) {
  if (!n.is_integer()) return cx.at(&n, field, "expected an integer");
  int64_t v = *n.value<int64_t>();
  if (v < lo || v > hi)
    return cx.at(&n, field, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return static_cast<int>(v);
}

// The code point of the UTF-8 sequence at s[i] and its length; nullopt if
// the bytes are not valid UTF-8.
std::optional<std::pair<char32_t, size_t>> utf8_at(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const size_t n = b(i) >= 0xF0 ? 4 : b(i) >= 0xE0 ? 3 : b(i) >= 0xC2 ? 2 : 0;
  if (n == 0 || b(i) > 0xF4 || i + n > s.size()) return std::nullopt;
  char32_t cp = b(i) & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return std::nullopt;
    cp = (cp << 6) | (b(i + k) & 0x3F);
  }
  const char32_t min = n == 2 ? 0x80 : n == 3 ? 0x800 : 0x10000;
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return std::nullopt;
  return std::make_pair(cp, n);
}

// toml++ 3.3.0 (Debian 12) asks "is this a blank?" of every character of a
// key, of characters outside strings (a bare value runs to the next blank,
// ',', ']', '}' or '#'), and of the first character after a backslash in a
// string, with a function that has undefined behaviour for many non-ASCII
// code points (U+00A1-U+0499 among them; a UBSan finding of tests/fuzz,
// upstream marzer/tomlplusplus#190 and #295). Valid TOML has non-ASCII text
// only in string values and comments, so this refuses it anywhere else and
// after a backslash; except after a line-ending backslash in a multi-line
// string, which is valid TOML: there it becomes a \U escape, the same
// string. A quote starts a string only where one can (a key, or a value
// after '=', '[' or ','). Returns the text to give toml++.
Result<std::string> avoid_toml_unicode_bug(std::string_view s, std::string_view source_name) {
  std::string out;
  out.reserve(s.size());
  size_t line = 1, line_begin = 0;
  auto error = [&](size_t at, const std::string& what) {
    return make_error(std::string(source_name) + ":" + std::to_string(line) + ":" +
                      std::to_string(at - line_begin + 1) + ": " + what);
  };
  auto high = [&](size_t at) { return static_cast<unsigned char>(s[at]) >= 0x80; };
  std::vector<char> nest;  // the '[' (arrays) and '{' (inline tables) values are in
  bool in_key = true;        // at a statement start, in a table header, after '{' or ','
  bool value_start = false;  // after the '=' of a key, or '[' or ',' in an array
  bool in_header = false;
  size_t i = 0;
  if (s.substr(0, 3) == "\xEF\xBB\xBF") {  // a byte order mark, skipped by toml++
    out.append(s.substr(0, 3));
    i = 3;
  }
  while (i < s.size()) {
    const char c = s[i];
    if (c == '\n') {
      ++line;
      line_begin = i + 1;
      if (nest.empty()) {
        in_key = true;
        value_start = false;
      }
      out += c;
      ++i;
    } else if (c == '#') {
      const size_t end = std::min(s.find('\n', i), s.size());
      out.append(s.substr(i, end - i));
      i = end;
    } else if (c == ' ' || c == '\t' || c == '\r') {
      out += c;
      ++i;
    } else if ((c == '"' || c == '\'') && (in_key || value_start)) {
      value_start = false;
      const std::string delim(s.substr(i, 3) == std::string(3, c) ? 3 : 1, c);
      out += delim;
      i += delim.size();
      while (i < s.size()) {
        if (s.substr(i, delim.size()) == delim) {
          size_t close = delim.size();
          while (delim.size() == 3 && close < 5 && i + close < s.size() && s[i + close] == c) ++close;
          out.append(s.substr(i, close));
          i += close;
          break;
        }
        if (s[i] == '\n') {
          if (delim.size() == 1) break;  // unterminated: toml++ says so
          ++line;
          line_begin = i + 1;
        } else if (high(i) && in_key) {
          return error(i, "non-ASCII characters in keys are not supported");
        } else if (s[i] == '\\' && c == '"') {
          size_t j = i + 1;
          bool line_end = false;
          for (; j < s.size() && (s[j] == ' ' || s[j] == '\t' || s[j] == '\r' || s[j] == '\n'); ++j)
            line_end = line_end || s[j] == '\n';
          if (j < s.size() && high(j)) {
            const auto cp = utf8_at(s, j);
            if (delim.size() == 1 || !line_end || !cp)
              return error(j, "a non-ASCII character right after a backslash: write it as \\uXXXX");
            for (size_t k = i; k < j; ++k) {
              if (s[k] == '\n') {
                ++line;
                line_begin = k + 1;
              }
            }
            char esc[16];
            std::snprintf(esc, sizeof esc, "\\U%08X", static_cast<unsigned>(cp->first));
            out.append(s.substr(i, j - i)).append(esc);
            i = j + cp->second;
            continue;
          }
          if (i + 1 < s.size() && s[i + 1] != '\n') out += s[i++];  // so that \" does not end the string
        }
        out += s[i++];
      }
    } else if (value_start && std::string_view("[{]},").find(c) == std::string_view::npos) {
      // A bare value (number, date, boolean): toml++ reads it to a terminator.
      value_start = false;
      while (i < s.size() && std::string_view(" \t\r\n\v\f,]}#").find(s[i]) == std::string_view::npos) {
        if (high(i)) return error(i, "non-ASCII characters are allowed only in strings and comments");
        out += s[i++];
      }
    } else if (high(i)) {
      return error(i, "non-ASCII characters are allowed only in strings and comments");
    } else {
      const bool was_key = in_key;
      value_start = false;
      if (c == '[' && in_key && nest.empty()) {
        in_header = true;
      } else if (c == ']' && in_header) {
        in_header = in_key = false;
      } else if (c == '[' || c == '{') {
        nest.push_back(c);
        in_key = c == '{';
        value_start = c == '[';
      } else if ((c == ']' || c == '}') && !nest.empty()) {
        nest.pop_back();
        in_key = false;
      } else if (c == ',' && !nest.empty()) {
        in_key = nest.back() == '{';
        value_start = nest.back() == '[';
      } else if (c == '=' && !in_header) {
        in_key = false;
        value_start = was_key;
      }
      out += c;
      ++i;
    }
  }
  return out;
}

// TOML syntax errors, with the file, line and column of the problem.
Result<toml::table> parse_toml(std::string_view original, std::string_view source_name) {
  auto text = avoid_toml_unicode_bug(original, source_name);
  if (!text.ok()) return text.error();
  try {
    return toml::parse(*text, source_name);
  } catch (const toml::parse_error& e) {
    std::ostringstream msg;
    msg << source_name << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
        << e.description();
    return make_error(msg.str());
  } catch (const TomlCheckFailed& e) {
    // toml++ has no position for these; they are rare, malformed files.
    return make_error(std::string(source_name) + ": not valid TOML (the parser's check '" + e.what() + "' failed)");
  }
}

// The fields of a queue, shared by queue files and a job's [queue] table.
Status load_queue_fields(const Context& cx, const toml::table& t, std::string_view prefix, QueueConfig& q) {
  for (const auto& [k, v] : t) {
    std::string key(k.str());
    std::string field = prefix.empty() ? key : std::string(prefix) + "." + key;
    if (key == "name" && prefix.empty()) continue;
    if (key == "max_parallel") {
      auto n = get_int(cx, v, field, 1, 100000);
      if (!n.ok()) return n.error();
      q.max_parallel = *n;
    } else if (key == "max_total") {
      auto n = get_int(cx, v, field, 1, 10000000);
      if (!n.ok()) return n.error();
      q.max_total = *n;
    } else if (key == "max_queued") {
      auto n = get_int(cx, v, field, 1, 100000000);
      if (!n.ok()) return n.error();
      q.max_queued = *n;
    } else if (key == "min_delay") {
      auto s = get_string(cx, v, field);
      if (!s.ok()) return s.error();
      auto d = parse_duration(*s);
      if (!d.ok()) return cx.at(&v, field, d.error().message);
      q.min_delay = *d;
    } else if (key == "run_on" || key == "fallback") {
      auto s = get_string(cx, v, field);
      if (!s.ok()) return s.error();
      auto r = parse_run_on(*s);
      if (!r.ok()) return cx.at(&v, field, "expected \"any\", \"master\" or \"workers\"");
      if (key == "run_on") q.run_on = *r;
      else q.fallback = *r;
    } else {
      return cx.at(&v, field, "unknown field (allowed: max_parallel, max_total, max_queued, min_delay, run_on, fallback)");
    }
  }
  if (auto s = validate(q); !s.ok()) return cx.at(nullptr, prefix.empty() ? "" : prefix, s.error().message);
  return {};
}

}  // namespace

Result<Job> parse_job(std::string_view toml_text, std::string_view source_name) {
  Context cx(source_name);
  auto parsed = parse_toml(toml_text, source_name);
  if (!parsed.ok()) return parsed.error();
  toml::table& root = parsed.value();
  Job job;
  job.source_name = std::string(source_name);
  job.source_text = std::string(toml_text);

  const toml::node* name = root["name"].node();
  if (!name) return cx.at(nullptr, "name", "missing (every job has a name)");
  auto n = get_string(cx, *name, "name");
  if (!n.ok()) return n.error();
  if (!is_valid_job_name(*n))
    return cx.at(name, "name", "'" + *n + "' is not a valid job name (letters, digits, '.', '_', '-'; at most 128)");
  job.name = *n;

  if (const auto* p = root["params"].node()) {
    auto params = load_params(cx, *p);
    if (!params.ok()) return params.error();
    job.params = std::move(*params);
  }

  for (const auto& [k, v] : root) {
    std::string key(k.str());
    if (key == "name" || key == "params" || key == "steps") continue;
    if (key == "description") {
      auto s = get_string(cx, v, key);
      if (!s.ok()) return s.error();
      job.description = *s;
    } else if (key == "timeout") {
      auto d = get_duration(cx, v, key);
      if (!d.ok()) return d.error();
      job.timeout = *d;
    } else if (key == "queue") {
      if (v.is_string()) {
        job.queue = *v.value<std::string>();
        if (!is_valid_job_name(job.queue) || job.queue.find(':') != std::string::npos)
          return cx.at(&v, key, "'" + job.queue + "' is not a valid queue name");
      } else if (const auto* qt = v.as_table()) {
        QueueConfig q;
        q.name = "job:" + job.name;
        if (auto s = load_queue_fields(cx, *qt, "queue", q); !s.ok()) return s.error();
        job.local_queue = q;
      } else {
        return cx.at(&v, key, "expected a queue name or a [queue] table");
      }
    } else if (key == "requires") {
      const auto* arr = v.as_array();
      if (!arr) return cx.at(&v, key, "expected a list of worker tags");
      for (size_t i = 0; i < arr->size(); ++i) {
        auto t = get_string(cx, *arr->get(i), "requires[" + std::to_string(i) + "]");
        if (!t.ok()) return t.error();
        if (t->empty()) return cx.at(arr->get(i), "requires[" + std::to_string(i) + "]", "a tag is not empty");
        job.requires_tags.push_back(*t);
      }
    } else if (key == "triggers") {
      auto t = parse_triggers(v, source_name);
      if (!t.ok()) return t.error();
      job.triggers = std::move(*t);
    } else if (key == "retry") {
      const auto* rt = v.as_table();
      if (!rt) return cx.at(&v, key, "expected a [retry] table");
      RetryPolicy& r = job.retry;
      for (const auto& [rk, rv] : *rt) {
        std::string f = "retry." + std::string(rk.str());
        if (rk.str() == "attempts") {
          auto n = get_int(cx, rv, f, 1, 100);
          if (!n.ok()) return n.error();
          r.attempts = static_cast<uint32_t>(*n);
        } else if (rk.str() == "backoff" || rk.str() == "max_backoff") {
          auto d = get_duration(cx, rv, f);
          if (!d.ok()) return d.error();
          (rk.str() == "backoff" ? r.backoff : r.max_backoff) = *d;
        } else if (rk.str() == "on") {
          const auto* arr = rv.as_array();
          if (!arr) return cx.at(&rv, f, "expected a list of outcomes: \"failed\", \"timed_out\", \"lost\"");
          r.on_failed = r.on_timed_out = r.on_lost = false;
          for (size_t i = 0; i < arr->size(); ++i) {
            auto s = get_string(cx, *arr->get(i), f + "[" + std::to_string(i) + "]");
            if (!s.ok()) return s.error();
            if (*s == "failed") r.on_failed = true;
            else if (*s == "timed_out") r.on_timed_out = true;
            else if (*s == "lost") r.on_lost = true;
            else return cx.at(arr->get(i), f + "[" + std::to_string(i) + "]",
                              "unknown outcome '" + *s + "' (failed, timed_out, lost)");
          }
        } else {
          return cx.at(&rv, f, "unknown field (allowed: attempts, backoff, max_backoff, on)");
        }
      }
    } else if (key == "priority") {
      auto n = get_int(cx, v, key, -1000000, 1000000);
      if (!n.ok()) return n.error();
      job.priority = *n;
    } else {
      return cx.at(&v, key, "unknown field (allowed: name, description, timeout, queue, priority, retry, requires, triggers, params, steps)");
    }
  }

  const toml::node* steps = root["steps"].node();
  if (!steps) return cx.at(nullptr, "steps", "missing (a job needs at least one [[steps]])");
  const auto* arr = steps->as_array();
  if (!arr || arr->empty()) return cx.at(steps, "steps", "expected at least one [[steps]] table");
  for (size_t i = 0; i < arr->size(); ++i) {
    auto s = load_step(cx, *arr->get(i), i, job.params);
    if (!s.ok()) return s.error();
    job.steps.push_back(std::move(*s));
  }
  // Trigger parameters must be the job's own; a watch trigger passes `file`.
  auto has_param = [&](std::string_view n) {
    for (const auto& p : job.params)
      if (p.name == n) return true;
    return false;
  };
  const toml::node* tnode = root["triggers"].node();
  for (size_t i = 0; i < job.triggers.size(); ++i) {
    const toml::node* where = tnode && tnode->as_array() ? tnode->as_array()->get(i) : nullptr;
    std::string field = "triggers[" + std::to_string(i) + "]";
    for (const auto& [k, v] : job.triggers[i].params)
      if (!has_param(k)) return cx.at(where, field + ".params." + k, "the job has no parameter '" + k + "'");
    if (job.triggers[i].kind == TriggerSpec::Kind::Watch && !has_param(kFileParam))
      return cx.at(where, field, "a watch trigger passes the file as parameter 'file': declare [params.file]");
  }
  return job;
}

Result<Job> load_job_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(path + ": cannot read the file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_job(ss.str(), path);
}

Result<QueueConfig> parse_queue(std::string_view toml_text, std::string_view source_name) {
  Context cx(source_name);
  auto parsed = parse_toml(toml_text, source_name);
  if (!parsed.ok()) return parsed.error();
  toml::table& root = parsed.value();
  QueueConfig q;
  const toml::node* name = root["name"].node();
  if (!name) return cx.at(nullptr, "name", "missing (every queue has a name)");
  auto n = get_string(cx, *name, "name");
  if (!n.ok()) return n.error();
  if (!is_valid_job_name(*n) || n->find(':') != std::string::npos)
    return cx.at(name, "name", "'" + *n + "' is not a valid queue name (letters, digits, '.', '_', '-')");
  q.name = *n;
  if (auto s = load_queue_fields(cx, root, "", q); !s.ok()) return s.error();
  return q;
}

}  // namespace zf
