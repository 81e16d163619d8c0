#include "common/trigger.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "common/toml_context.h"  // toml++, included the one way (see there)

namespace zf {

namespace {

namespace chr = std::chrono;

const char* const kAllowedKeys =
    "every, cron, at, watch, start, end, timezone, on_missed, pattern, poll, existing, params";

using Context = TomlContext;

Result<Millis> get_duration(const Context& cx, const toml::node& n, std::string_view field, Millis lo,
                            Millis hi) {
  auto s = get_string(cx, n, field);
  if (!s.ok()) return s.error();
  auto d = parse_duration(*s);
  if (!d.ok()) return cx.at(&n, field, d.error().message);
  if (*d < lo) return cx.at(&n, field, "must be at least " + format_duration(lo));
  if (*d > hi) return cx.at(&n, field, "must be at most " + format_duration(hi));
  return *d;
}

// An instant: an RFC 3339 string, or a TOML offset date-time written bare.
Result<TimePoint> get_instant(const Context& cx, const toml::node& n, std::string_view field) {
  if (const auto* dt = n.as_date_time()) {
    const toml::date_time& v = dt->get();
    if (!v.offset)
      return cx.at(&n, field, "needs a UTC offset (e.g. 2026-05-01T10:00:00Z or ...+02:00)");
    char buf[64];
    std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02u:%02u:%02u.%09u", static_cast<int>(v.date.year),
                  static_cast<unsigned>(v.date.month), static_cast<unsigned>(v.date.day),
                  static_cast<unsigned>(v.time.hour), static_cast<unsigned>(v.time.minute),
                  static_cast<unsigned>(v.time.second), static_cast<unsigned>(v.time.nanosecond));
    std::string text = buf;
    int off = v.offset->minutes;
    char obuf[16];
    std::snprintf(obuf, sizeof obuf, "%c%02d:%02d", off < 0 ? '-' : '+', std::abs(off) / 60, std::abs(off) % 60);
    text += obuf;
    auto t = parse_rfc3339(text);
    if (!t.ok()) return cx.at(&n, field, t.error().message);
    return *t;
  }
  if (n.is_date() || n.is_time()) return cx.at(&n, field, "expected a date and time with a UTC offset");
  auto s = get_string(cx, n, field);
  if (!s.ok()) return cx.at(&n, field, "expected an RFC 3339 time such as \"2026-05-01T10:00:00Z\"");
  auto t = parse_rfc3339(*s);
  if (!t.ok()) return cx.at(&n, field, t.error().message);
  return *t;
}

bool is_param_name(std::string_view s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

Result<std::map<std::string, std::string>> get_params(const Context& cx, const toml::node& n,
                                                      std::string_view field) {
  const auto* t = n.as_table();
  if (!t) return cx.at(&n, field, "expected a table of values, e.g. params = { day = \"today\" }");
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : *t) {
    std::string name(k.str());
    std::string sub = std::string(field) + "." + name;
    if (!is_param_name(name))
      return cx.at(&v, sub, "parameter names use letters, digits and _ and do not start with a digit");
    std::string value;
    // As for parameter defaults: numbers and booleans are kept as text.
    if (v.is_string()) value = *v.value<std::string>();
    else if (v.is_integer()) value = std::to_string(*v.value<int64_t>());
    else if (v.is_boolean()) value = *v.value<bool>() ? "true" : "false";
    else return cx.at(&v, sub, "expected a string, integer or boolean");
    if (value.size() > kMaxTriggerParamValueBytes) return cx.at(&v, sub, "value is larger than 64 KiB");
    out[name] = std::move(value);
  }
  if (out.size() > kMaxTriggerParams) return cx.at(&n, field, "too many parameters");
  return out;
}

bool is_timer_only_key(std::string_view k) {
  return k == "start" || k == "end" || k == "timezone" || k == "on_missed";
}
bool is_watch_only_key(std::string_view k) { return k == "pattern" || k == "poll" || k == "existing"; }

Result<TriggerSpec> parse_one(const Context& cx, const toml::node& n, std::size_t index) {
  std::string prefix = "triggers[" + std::to_string(index) + "]";
  const auto* t = n.as_table();
  if (!t) return cx.at(&n, prefix, "expected a table ([[triggers]])");

  // The kind key first: it decides which other keys are allowed. toml++
  // iterates keys in sorted order, so "the second kind key" is the one
  // written later in the file.
  const toml::node* kind_node = nullptr;
  std::string kind_key;
  for (const auto& [k, v] : *t) {
    std::string key(k.str());
    if (key != "every" && key != "cron" && key != "at" && key != "watch") continue;
    if (kind_node) {
      bool later = v.source().begin.line > kind_node->source().begin.line ||
                   (v.source().begin.line == kind_node->source().begin.line &&
                    v.source().begin.column > kind_node->source().begin.column);
      const toml::node* second = later ? &v : kind_node;
      std::string second_key = later ? key : kind_key;
      std::string first_key = later ? kind_key : key;
      return cx.at(second, prefix + "." + second_key,
                   "a trigger has exactly one of 'every', 'cron', 'at' or 'watch' (this one also has '" +
                       first_key + "')");
    }
    kind_node = &v;
    kind_key = key;
  }
  if (!kind_node)
    return cx.at(&n, prefix,
                 "a trigger needs one of 'every = \"DURATION\"', 'cron = \"m h dom mon dow\"', "
                 "'at = \"RFC 3339 time\"' or 'watch = \"DIR\"'");

  TriggerSpec spec;
  const std::string kind_field = prefix + "." + kind_key;
  if (kind_key == "every") {
    spec.kind = TriggerSpec::Kind::Every;
    auto d = get_duration(cx, *kind_node, kind_field, kMinEvery, kMaxEvery);
    if (!d.ok()) return d.error();
    spec.every = *d;
  } else if (kind_key == "cron") {
    spec.kind = TriggerSpec::Kind::Cron;
    auto s = get_string(cx, *kind_node, kind_field);
    if (!s.ok()) return s.error();
    auto c = CronExpr::parse(*s);
    if (!c.ok()) return cx.at(kind_node, kind_field, c.error().message);
    if (!c->can_fire()) return cx.at(kind_node, kind_field, "cron '" + *s + "' can never fire (no such day)");
    spec.cron = std::move(*c);
  } else if (kind_key == "at") {
    spec.kind = TriggerSpec::Kind::At;
    auto i = get_instant(cx, *kind_node, kind_field);
    if (!i.ok()) return i.error();
    spec.at = *i;
  } else {
    spec.kind = TriggerSpec::Kind::Watch;
    auto s = get_string(cx, *kind_node, kind_field);
    if (!s.ok()) return s.error();
    if (s->empty() || (*s)[0] != '/')
      return cx.at(kind_node, kind_field, "expected an absolute folder path (the master's file system)");
    if (s->find('\0') != std::string::npos) return cx.at(kind_node, kind_field, "contains a NUL byte");
    spec.watch = *s;
    while (spec.watch.size() > 1 && spec.watch.back() == '/') spec.watch.pop_back();
  }

  for (const auto& [k, v] : *t) {
    std::string key(k.str());
    std::string field = prefix + "." + key;
    if (key == kind_key) continue;
    if (key == "every" || key == "cron" || key == "at" || key == "watch") continue;  // checked above
    bool known = is_timer_only_key(key) || is_watch_only_key(key) || key == "params";
    if (!known) return cx.at(&v, field, "unknown field (allowed: " + std::string(kAllowedKeys) + ")");
    if (is_timer_only_key(key) && !spec.is_timer())
      return cx.at(&v, field, "'" + key + "' applies only to timer triggers (every, cron, at)");
    if (is_watch_only_key(key) && spec.is_timer())
      return cx.at(&v, field, "'" + key + "' requires 'watch' (it applies only to file triggers)");
    if ((key == "start" || key == "end") && spec.kind == TriggerSpec::Kind::At)
      return cx.at(&v, field, "a one-shot 'at' trigger has no start/end window");
    if (key == "timezone" && spec.kind != TriggerSpec::Kind::Cron)
      return cx.at(&v, field,
                   "'timezone' applies only to cron triggers ('every' counts elapsed time, 'at' carries its "
                   "own offset)");

    if (key == "start" || key == "end") {
      auto i = get_instant(cx, v, field);
      if (!i.ok()) return i.error();
      (key == "start" ? spec.start : spec.end) = *i;
    } else if (key == "timezone") {
      auto s = get_string(cx, v, field);
      if (!s.ok()) return s.error();
      auto z = TimeZone::load(*s);
      if (!z.ok()) return cx.at(&v, field, z.error().message);
      spec.zone = std::move(*z);
    } else if (key == "on_missed") {
      auto s = get_string(cx, v, field);
      if (!s.ok()) return s.error();
      if (*s == "skip") spec.on_missed = TriggerSpec::OnMissed::Skip;
      else if (*s == "once") spec.on_missed = TriggerSpec::OnMissed::Once;
      else return cx.at(&v, field, "expected \"skip\" or \"once\"");
    } else if (key == "pattern") {
      auto s = get_string(cx, v, field);
      if (!s.ok()) return s.error();
      if (s->empty()) return cx.at(&v, field, "must not be empty");
      if (s->find('/') != std::string::npos)
        return cx.at(&v, field, "matches file names inside the folder and cannot contain '/'");
      spec.pattern = *s;
    } else if (key == "poll") {
      auto d = get_duration(cx, v, field, kMinPoll, std::chrono::hours(24));
      if (!d.ok()) return d.error();
      spec.poll = *d;
    } else if (key == "existing") {
      if (!v.is_boolean()) return cx.at(&v, field, "expected true or false");
      spec.existing = *v.value<bool>();
    } else if (key == "params") {
      auto p = get_params(cx, v, field);
      if (!p.ok()) return p.error();
      if (spec.kind == TriggerSpec::Kind::Watch && p->count(std::string(kFileParam)))
        return cx.at(&v, field + "." + std::string(kFileParam),
                     "is set by the watch trigger to the path of each file");
      spec.params = std::move(*p);
    }
  }
  if (spec.start && spec.end && *spec.end < *spec.start)
    return cx.at((*t)["end"].node(), prefix + ".end", "is before 'start'");
  return spec;
}

int digits(std::string_view s, std::size_t pos, std::size_t n, bool& ok) {
  int v = 0;
  for (std::size_t i = pos; i < pos + n; ++i) {
    if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) {
      ok = false;
      return 0;
    }
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

}  // namespace

const char* kind_name(TriggerSpec::Kind kind) {
  switch (kind) {
    case TriggerSpec::Kind::Every: return "every";
    case TriggerSpec::Kind::Cron: return "cron";
    case TriggerSpec::Kind::At: return "at";
    case TriggerSpec::Kind::Watch: return "watch";
  }
  return "?";
}

bool same_trigger(const TriggerSpec& a, const TriggerSpec& b) {
  if (a.kind != b.kind || a.params != b.params) return false;
  switch (a.kind) {
    case TriggerSpec::Kind::Every:
    case TriggerSpec::Kind::Cron:
    case TriggerSpec::Kind::At: {
      bool same_cron = a.cron.has_value() == b.cron.has_value() &&
                       (!a.cron || a.cron->to_string() == b.cron->to_string());
      return a.every == b.every && same_cron && a.at == b.at && a.start == b.start && a.end == b.end &&
             a.zone.name() == b.zone.name() && a.on_missed == b.on_missed;
    }
    case TriggerSpec::Kind::Watch:
      return a.watch == b.watch && a.pattern == b.pattern && a.poll == b.poll && a.existing == b.existing;
  }
  return false;
}

Result<std::vector<TriggerSpec>> parse_triggers(const toml::node& triggers_node, std::string_view source_name) {
  Context cx(source_name);
  const auto* arr = triggers_node.as_array();
  if (!arr) return cx.at(&triggers_node, "triggers", "expected an array of tables ([[triggers]])");
  if (arr->size() > kMaxTriggers)
    return cx.at(&triggers_node, "triggers", "too many triggers (at most " + std::to_string(kMaxTriggers) + ")");
  std::vector<TriggerSpec> out;
  out.reserve(arr->size());
  for (std::size_t i = 0; i < arr->size(); ++i) {
    auto spec = parse_one(cx, *arr->get(i), i);
    if (!spec.ok()) return spec.error();
    out.push_back(std::move(*spec));
  }
  return out;
}

Result<TimePoint> parse_rfc3339(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return make_error("invalid time '" + std::string(text) + "': " + std::string(why) +
                      " (use RFC 3339, e.g. 2026-05-01T10:00:00Z or 2026-05-01T12:00:00+02:00)");
  };
  bool ok = true;
  if (text.size() < 19) return bad("expected YYYY-MM-DDTHH:MM:SS and a UTC offset");
  int year = digits(text, 0, 4, ok);
  int month = digits(text, 5, 2, ok);
  int day = digits(text, 8, 2, ok);
  int hour = digits(text, 11, 2, ok);
  int minute = digits(text, 14, 2, ok);
  int second = digits(text, 17, 2, ok);
  if (!ok || text[4] != '-' || text[7] != '-' || text[13] != ':' || text[16] != ':' ||
      (text[10] != 'T' && text[10] != 't' && text[10] != ' '))
    return bad("expected YYYY-MM-DDTHH:MM:SS");
  if (year < 1900 || year > 2200) return bad("year out of range 1900-2200");
  chr::year_month_day ymd{chr::year{year}, chr::month{static_cast<unsigned>(month)},
                          chr::day{static_cast<unsigned>(day)}};
  if (!ymd.ok()) return bad("no such date");
  if (hour > 23 || minute > 59) return bad("no such time of day");
  if (second > 59) return bad("seconds out of range 0-59 (leap seconds are not supported)");
  std::size_t i = 19;
  chr::nanoseconds frac{0};
  if (i < text.size() && text[i] == '.') {
    ++i;
    std::size_t begin = i;
    std::int64_t ns = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      if (i - begin < 9) ns = ns * 10 + (text[i] - '0');
      ++i;
    }
    if (i == begin) return bad("expected digits after '.'");
    for (std::size_t n = std::min<std::size_t>(i - begin, 9); n < 9; ++n) ns *= 10;
    frac = chr::nanoseconds(ns);
  }
  if (i >= text.size()) return bad("missing UTC offset ('Z' or +HH:MM)");
  chr::minutes offset{0};
  if (text[i] == 'Z' || text[i] == 'z') {
    ++i;
  } else if (text[i] == '+' || text[i] == '-') {
    int oh = digits(text, i + 1, 2, ok);
    int om = digits(text, i + 4, 2, ok);
    if (!ok || i + 3 >= text.size() || text[i + 3] != ':') return bad("offset must be +HH:MM or -HH:MM");
    if (oh > 23 || om > 59) return bad("offset out of range");
    offset = chr::minutes(oh * 60 + om);
    if (text[i] == '-') offset = -offset;
    i += 6;
  } else {
    return bad("missing UTC offset ('Z' or +HH:MM)");
  }
  if (i != text.size()) return bad("unexpected text after the offset");
  auto local = chr::sys_days{ymd}.time_since_epoch() + chr::hours(hour) + chr::minutes(minute) +
               chr::seconds(second);
  return TimePoint{chr::duration_cast<TimePoint::duration>(local - offset + frac)};
}

std::string format_rfc3339(TimePoint t) {
  auto ms = chr::floor<chr::milliseconds>(t);
  auto days = chr::floor<chr::days>(ms);
  chr::year_month_day ymd{days};
  chr::hh_mm_ss hms{ms - days};
  char buf[48];
  int n = std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02ld:%02ld:%02ld", static_cast<int>(ymd.year()),
                        static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                        static_cast<long>(hms.hours().count()), static_cast<long>(hms.minutes().count()),
                        static_cast<long>(hms.seconds().count()));
  std::string out(buf, static_cast<std::size_t>(n));
  if (hms.subseconds().count() != 0) {
    std::snprintf(buf, sizeof buf, ".%03ld", static_cast<long>(hms.subseconds().count()));
    out += buf;
  }
  return out + "Z";
}

std::optional<TimePoint> next_fire(const TriggerSpec& spec, TimePoint after, const TimeZone& tz,
                                   TimePoint anchor) {
  std::optional<TimePoint> t;
  switch (spec.kind) {
    case TriggerSpec::Kind::Watch:
      return std::nullopt;
    case TriggerSpec::Kind::At:
      if (spec.at > after) t = spec.at;
      break;
    case TriggerSpec::Kind::Every: {
      if (spec.every <= Millis::zero()) return std::nullopt;
      TimePoint base = spec.start ? *spec.start : anchor;
      if (after < base) {
        t = base;
      } else {
        auto step = chr::duration_cast<TimePoint::duration>(spec.every);
        auto k = (after - base) / step + 1;
        t = base + k * step;
      }
      break;
    }
    case TriggerSpec::Kind::Cron: {
      if (!spec.cron) return std::nullopt;
      // First firing >= start, i.e. strictly after start - 1ns.
      TimePoint from = after;
      if (spec.start && *spec.start - TimePoint::duration(1) > from) from = *spec.start - TimePoint::duration(1);
      auto c = spec.cron->next_after(chr::floor<chr::seconds>(from), tz);
      if (c) t = TimePoint{chr::duration_cast<TimePoint::duration>(c->time_since_epoch())};
      break;
    }
  }
  if (t && spec.end && *t > *spec.end) return std::nullopt;
  return t;
}

TimePoint latest_fire_at_or_before(const TriggerSpec& spec, const TimeZone& tz, TimePoint anchor,
                                   TimePoint known, TimePoint now) {
  if (known >= now) return known;
  if (spec.kind == TriggerSpec::Kind::Every && spec.every > Millis::zero()) {
    auto step = chr::duration_cast<TimePoint::duration>(spec.every);
    TimePoint limit = spec.end && *spec.end < now ? *spec.end : now;
    if (limit <= known) return known;
    return known + ((limit - known) / step) * step;  // known is on the grid
  }
  // Bisection. Invariants: `lo` is a firing <= now; no firing lies in (hi, now].
  TimePoint lo = known;
  TimePoint hi = now;
  for (int i = 0; i < 200; ++i) {
    auto x = next_fire(spec, lo, tz, anchor);
    if (!x || *x > hi) return lo;
    lo = *x;
    if (lo >= hi) return lo;
    TimePoint mid = lo + (hi - lo) / 2;
    auto y = next_fire(spec, mid, tz, anchor);
    if (y && *y <= hi) lo = *y;
    else hi = mid;
  }
  return lo;  // not reached for any real schedule: each round halves (lo, hi]
}

MissedPlan plan_missed(const TriggerSpec& spec, const TimeZone& tz, TimePoint anchor, TimePoint last_fired,
                       TimePoint now) {
  MissedPlan plan;
  plan.next = next_fire(spec, now, tz, anchor);
  auto first = next_fire(spec, last_fired, tz, anchor);
  if (!first || *first > now) return plan;
  plan.missed = true;
  if (spec.on_missed == TriggerSpec::OnMissed::Once)
    plan.catch_up = latest_fire_at_or_before(spec, tz, anchor, *first, now);
  return plan;
}

}  // namespace zf
