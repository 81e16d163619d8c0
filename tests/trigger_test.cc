// Timer and file-system triggers: the job-file format, next firing times,
// missed firings after downtime, the master's trigger schedule, and the
// file watcher on a real temporary folder. Expected instants were worked
// out by hand (Berlin is UTC+1 in winter, UTC+2 from 2026-03-29 01:00Z).
#include "common/trigger.h"

#include <doctest/doctest.h>
#include <poll.h>
#include <stdlib.h>  // mkdtemp

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <toml++/toml.h>
#include <vector>

#include "master/file_watcher.h"
#include "master/trigger_scheduler.h"

namespace {

namespace chr = std::chrono;
using namespace std::chrono_literals;
using zf::TimePoint;
using zf::TriggerScheduler;
using zf::TriggerSpec;

TimePoint at(std::string_view s) {
  auto t = zf::parse_rfc3339(s);
  REQUIRE_MESSAGE(t.ok(), (t.ok() ? std::string() : t.error().message));
  return *t;
}

std::string show(std::optional<TimePoint> t) { return t ? zf::format_rfc3339(*t) : "never"; }

zf::TimeZone zone(const char* name) {
  auto tz = zf::TimeZone::load(name);
  REQUIRE_MESSAGE(tz.ok(), (tz.ok() ? std::string() : tz.error().message));
  return *tz;
}

zf::Result<std::vector<TriggerSpec>> parse(std::string_view text) {
  toml::table root;
  try {
    root = toml::parse(text, std::string_view("jobs/t.toml"));
  } catch (const toml::parse_error& e) {
    FAIL("test TOML does not parse: ", e.description());
  }
  const toml::node* n = root["triggers"].node();
  REQUIRE(n != nullptr);
  return zf::parse_triggers(*n, "jobs/t.toml");
}

TriggerSpec parse_one(std::string_view text) {
  auto r = parse(text);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? std::string() : r.error().message));
  REQUIRE(r->size() == 1);
  return r->front();
}

TriggerSpec every(zf::Millis interval, TriggerSpec::OnMissed on_missed = TriggerSpec::OnMissed::Once) {
  TriggerSpec t;
  t.kind = TriggerSpec::Kind::Every;
  t.every = interval;
  t.on_missed = on_missed;
  return t;
}

TriggerSpec one_shot(TimePoint when, TriggerSpec::OnMissed on_missed = TriggerSpec::OnMissed::Once) {
  TriggerSpec t;
  t.kind = TriggerSpec::Kind::At;
  t.at = when;
  t.on_missed = on_missed;
  return t;
}

TriggerSpec cron(const char* expr, TriggerSpec::OnMissed on_missed = TriggerSpec::OnMissed::Once) {
  TriggerSpec t;
  t.kind = TriggerSpec::Kind::Cron;
  auto c = zf::CronExpr::parse(expr);
  REQUIRE(c.ok());
  t.cron = *c;
  t.on_missed = on_missed;
  return t;
}

}  // namespace

// ---------------------------------------------------------------- format

TEST_CASE("trigger: RFC 3339 times are read exactly, with offsets and fractions") {
  CHECK(at("2026-01-01T00:00:00Z") == TimePoint{chr::sys_days{chr::year{2026} / 1 / 1}.time_since_epoch()});
  CHECK(at("2026-05-01T12:00:00.250+02:00") == at("2026-05-01T10:00:00.250Z"));
  CHECK(at("2026-05-01t05:30:00-04:30") == at("2026-05-01T10:00:00Z"));
  CHECK(zf::format_rfc3339(at("2026-05-01T12:00:00.250+02:00")) == "2026-05-01T10:00:00.250Z");
  CHECK(zf::format_rfc3339(at("2026-05-01 10:00:00z")) == "2026-05-01T10:00:00Z");
  for (const char* bad : {"2026-05-01T10:00:00", "2026-02-30T10:00:00Z", "2026-05-01T24:00:00Z",
                          "2026-05-01T10:00:60Z", "2026-05-01T10:00:00+2:00", "2026-05-01T10:00:00Zjunk",
                          "2300-01-01T00:00:00Z", "tomorrow", ""}) {
    CAPTURE(bad);
    CHECK_FALSE(zf::parse_rfc3339(bad).ok());
  }
}

TEST_CASE("trigger: every kind of trigger is read with its settings") {
  auto r = parse(R"(
[[triggers]]
every = "15m"
start = "2026-01-01T00:00:00Z"
end = 2026-12-31T23:59:59+01:00
on_missed = "skip"
params = { day = "today", n = 3, dry = true }

[[triggers]]
cron = "30 2 * * MON-FRI"
timezone = "Europe/Berlin"

[[triggers]]
at = "2026-05-01T12:00:00+02:00"

[[triggers]]
watch = "/srv/in/"
pattern = "*.csv"
poll = "2s"
existing = true
)");
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? std::string() : r.error().message));
  REQUIRE(r->size() == 4);
  const auto& e = (*r)[0];
  CHECK(e.kind == TriggerSpec::Kind::Every);
  CHECK(e.every == 15min);
  CHECK(show(e.start) == "2026-01-01T00:00:00Z");
  CHECK(show(e.end) == "2026-12-31T22:59:59Z");
  CHECK(e.on_missed == TriggerSpec::OnMissed::Skip);
  CHECK(e.params == std::map<std::string, std::string>{{"day", "today"}, {"dry", "true"}, {"n", "3"}});
  const auto& c = (*r)[1];
  CHECK(c.kind == TriggerSpec::Kind::Cron);
  CHECK(c.cron->to_string() == "30 2 * * MON-FRI");
  CHECK(c.zone.name() == "Europe/Berlin");
  CHECK(c.on_missed == TriggerSpec::OnMissed::Once);
  CHECK((*r)[2].kind == TriggerSpec::Kind::At);
  CHECK(show((*r)[2].at) == "2026-05-01T10:00:00Z");
  const auto& w = (*r)[3];
  CHECK(w.kind == TriggerSpec::Kind::Watch);
  CHECK(w.watch == "/srv/in");
  CHECK(w.pattern == "*.csv");
  CHECK(w.poll == 2s);
  CHECK(w.existing);
  CHECK_FALSE(w.is_timer());
  CHECK(parse_one("[[triggers]]\nwatch = \"/in\"\n").poll == zf::kDefaultPoll);
}

TEST_CASE("trigger: errors name the file, line, column and field") {
  struct Case {
    const char* toml;
    const char* error;
  };
  const Case cases[] = {
      {"[[triggers]]\nevery = \"soon\"\n",
       "jobs/t.toml:2:9: field 'triggers[0].every': invalid duration 'soon': expected a number (use e.g. 250ms, "
       "5s, 1m30s, 2h, 1d)"},
      {"[[triggers]]\nevery = \"1m\"\n\n[[triggers]]\nevery = \"50ms\"\n",
       "jobs/t.toml:5:9: field 'triggers[1].every': must be at least 100ms"},
      {"[[triggers]]\nevery = 5\n", "jobs/t.toml:2:9: field 'triggers[0].every': expected a string"},
      {"[[triggers]]\npattern = \"*.csv\"\n",
       "jobs/t.toml:1:1: field 'triggers[0]': a trigger needs one of 'every = \"DURATION\"', 'cron = \"m h dom mon "
       "dow\"', 'at = \"RFC 3339 time\"' or 'watch = \"DIR\"'"},
      {"[[triggers]]\nevery = \"1m\"\ncron = \"* * * * *\"\n",
       "jobs/t.toml:3:8: field 'triggers[0].cron': a trigger has exactly one of 'every', 'cron', 'at' or 'watch' "
       "(this one also has 'every')"},
      {"[[triggers]]\ncron = \"0 0 32 * *\"\n",
       "jobs/t.toml:2:8: field 'triggers[0].cron': cron '0 0 32 * *': field 3 (day of month): value 32 out of "
       "range 1-31"},
      {"[[triggers]]\ncron = \"0 0 30 2 *\"\n",
       "jobs/t.toml:2:8: field 'triggers[0].cron': cron '0 0 30 2 *' can never fire (no such day)"},
      {"[[triggers]]\nevery = \"1h\"\npattern = \"*.csv\"\n",
       "jobs/t.toml:3:11: field 'triggers[0].pattern': 'pattern' requires 'watch' (it applies only to file "
       "triggers)"},
      {"[[triggers]]\nwatch = \"/in\"\non_missed = \"once\"\n",
       "jobs/t.toml:3:13: field 'triggers[0].on_missed': 'on_missed' applies only to timer triggers (every, cron, "
       "at)"},
      {"[[triggers]]\nevery = \"1h\"\nevry = \"1h\"\n",
       "jobs/t.toml:3:8: field 'triggers[0].evry': unknown field (allowed: every, cron, at, watch, start, end, "
       "timezone, on_missed, pattern, poll, existing, params)"},
      {"[[triggers]]\ncron = \"@daily\"\ntimezone = \"Mars/Base\"\n",
       "jobs/t.toml:3:12: field 'triggers[0].timezone': unknown time zone 'Mars/Base'"},
      {"[[triggers]]\nevery = \"1h\"\ntimezone = \"UTC\"\n",
       "jobs/t.toml:3:12: field 'triggers[0].timezone': 'timezone' applies only to cron triggers ('every' counts "
       "elapsed time, 'at' carries its own offset)"},
      {"[[triggers]]\nat = \"2026-05-01T10:00:00\"\n",
       "jobs/t.toml:2:6: field 'triggers[0].at': invalid time '2026-05-01T10:00:00': missing UTC offset ('Z' or "
       "+HH:MM) (use RFC 3339, e.g. 2026-05-01T10:00:00Z or 2026-05-01T12:00:00+02:00)"},
      {"[[triggers]]\nat = 2026-05-01T10:00:00\n",
       "jobs/t.toml:2:6: field 'triggers[0].at': needs a UTC offset (e.g. 2026-05-01T10:00:00Z or ...+02:00)"},
      {"[[triggers]]\nat = \"2026-05-01T10:00:00Z\"\nstart = \"2026-01-01T00:00:00Z\"\n",
       "jobs/t.toml:3:9: field 'triggers[0].start': a one-shot 'at' trigger has no start/end window"},
      {"[[triggers]]\nevery = \"1h\"\nstart = \"2026-02-01T00:00:00Z\"\nend = \"2026-01-01T00:00:00Z\"\n",
       "jobs/t.toml:4:7: field 'triggers[0].end': is before 'start'"},
      {"[[triggers]]\nevery = \"1h\"\non_missed = \"all\"\n",
       "jobs/t.toml:3:13: field 'triggers[0].on_missed': expected \"skip\" or \"once\""},
      {"[[triggers]]\nwatch = \"in\"\n",
       "jobs/t.toml:2:9: field 'triggers[0].watch': expected an absolute folder path (the master's file system)"},
      {"[[triggers]]\nwatch = \"/in\"\npattern = \"sub/*.csv\"\n",
       "jobs/t.toml:3:11: field 'triggers[0].pattern': matches file names inside the folder and cannot contain "
       "'/'"},
      {"[[triggers]]\nwatch = \"/in\"\npoll = \"10ms\"\n",
       "jobs/t.toml:3:8: field 'triggers[0].poll': must be at least 100ms"},
      {"[[triggers]]\nwatch = \"/in\"\nexisting = \"yes\"\n",
       "jobs/t.toml:3:12: field 'triggers[0].existing': expected true or false"},
      {"[[triggers]]\nwatch = \"/in\"\nparams = { file = \"x\" }\n",
       "jobs/t.toml:3:10: field 'triggers[0].params.file': is set by the watch trigger to the path of each file"},
      {"[[triggers]]\nevery = \"1h\"\nparams = { day = 1.5 }\n",
       "jobs/t.toml:3:18: field 'triggers[0].params.day': expected a string, integer or boolean"},
      {"[[triggers]]\nevery = \"1h\"\nparams = { 9lives = \"x\" }\n",
       "jobs/t.toml:3:21: field 'triggers[0].params.9lives': parameter names use letters, digits and _ and do not "
       "start with a digit"},
      {"triggers = { every = \"1h\" }\n",
       "jobs/t.toml:1:12: field 'triggers': expected an array of tables ([[triggers]])"},
      {"triggers = [\"1h\"]\n", "jobs/t.toml:1:13: field 'triggers[0]': expected a table ([[triggers]])"},
  };
  for (const auto& c : cases) {
    std::string toml_text = c.toml;
    CAPTURE(toml_text);
    auto r = parse(c.toml);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message == c.error);
  }
}

// ---------------------------------------------------------------- next firing

TEST_CASE("trigger: every counts from its creation, or from the start of its window") {
  const auto utc = zf::TimeZone::utc();
  auto t = every(1min);
  const TimePoint created = at("2026-01-01T00:00:10Z");
  CHECK(show(zf::next_fire(t, created, utc, created)) == "2026-01-01T00:01:10Z");
  CHECK(show(zf::next_fire(t, at("2026-01-01T00:01:10Z"), utc, created)) == "2026-01-01T00:02:10Z");
  CHECK(show(zf::next_fire(t, at("2026-01-01T05:00:00Z"), utc, created)) == "2026-01-01T05:00:10Z");

  t.start = at("2026-01-01T00:00:00Z");
  t.end = at("2026-01-01T00:03:00Z");
  CHECK(show(zf::next_fire(t, at("2025-12-31T12:00:00Z"), utc, created)) == "2026-01-01T00:00:00Z");
  CHECK(show(zf::next_fire(t, created, utc, created)) == "2026-01-01T00:01:00Z");
  CHECK(show(zf::next_fire(t, at("2026-01-01T00:02:00Z"), utc, created)) == "2026-01-01T00:03:00Z");
  CHECK(show(zf::next_fire(t, at("2026-01-01T00:03:00Z"), utc, created)) == "never");
}

TEST_CASE("trigger: cron fires in its time zone and inside its window") {
  auto t = parse_one(R"(
[[triggers]]
cron = "0 9 * * *"
timezone = "Europe/Berlin"
start = "2026-03-28T12:00:00Z"
end = "2026-03-31T07:00:00Z"
)");
  const TimePoint anchor = at("2026-01-01T00:00:00Z");
  // Before the window: the first 09:00 Berlin inside it (summer time from
  // the 29th: 09:00 CEST is 07:00Z).
  CHECK(show(zf::next_fire(t, anchor, t.zone, anchor)) == "2026-03-29T07:00:00Z");
  CHECK(show(zf::next_fire(t, at("2026-03-29T07:00:00Z"), t.zone, anchor)) == "2026-03-30T07:00:00Z");
  // The end is inclusive.
  CHECK(show(zf::next_fire(t, at("2026-03-30T07:00:00Z"), t.zone, anchor)) == "2026-03-31T07:00:00Z");
  CHECK(show(zf::next_fire(t, at("2026-03-31T07:00:00Z"), t.zone, anchor)) == "never");
  // A start that is itself a firing time fires then.
  t.start = at("2026-03-29T07:00:00Z");
  CHECK(show(zf::next_fire(t, anchor, t.zone, anchor)) == "2026-03-29T07:00:00Z");
  // The same expression in New York (EDT, UTC-4 on 2026-03-29).
  const auto ny = zone("America/New_York");
  CHECK(show(zf::next_fire(t, anchor, ny, anchor)) == "2026-03-29T13:00:00Z");
}

TEST_CASE("trigger: at fires once, strictly after the given time") {
  const auto utc = zf::TimeZone::utc();
  auto t = one_shot(at("2026-05-01T10:00:00Z"));
  CHECK(show(zf::next_fire(t, at("2026-05-01T09:59:59Z"), utc, {})) == "2026-05-01T10:00:00Z");
  CHECK(show(zf::next_fire(t, at("2026-05-01T10:00:00Z"), utc, {})) == "never");
  TriggerSpec w;
  w.kind = TriggerSpec::Kind::Watch;
  CHECK(show(zf::next_fire(w, at("2026-05-01T10:00:00Z"), utc, {})) == "never");
}

TEST_CASE("trigger: after downtime, once plans one catch-up at the latest missed time and skip none") {
  const auto utc = zf::TimeZone::utc();
  const TimePoint created = at("2026-01-01T00:00:00Z");
  const TimePoint last = at("2026-01-01T00:05:00Z");
  const TimePoint now = at("2026-01-11T03:07:30Z");  // ten days down

  auto plan = zf::plan_missed(every(1min), utc, created, last, now);
  CHECK(plan.missed);
  CHECK(show(plan.catch_up) == "2026-01-11T03:07:00Z");
  CHECK(show(plan.next) == "2026-01-11T03:08:00Z");

  plan = zf::plan_missed(every(1min, TriggerSpec::OnMissed::Skip), utc, created, last, now);
  CHECK(plan.missed);
  CHECK_FALSE(plan.catch_up);
  CHECK(show(plan.next) == "2026-01-11T03:08:00Z");

  plan = zf::plan_missed(cron("*/7 * * * *"), utc, created, last, now);
  CHECK(show(plan.catch_up) == "2026-01-11T03:07:00Z");
  plan = zf::plan_missed(cron("30 2 * * MON"), utc, created, last, now);  // 2026-01-05 is a Monday
  CHECK(show(plan.catch_up) == "2026-01-05T02:30:00Z");
  CHECK(show(plan.next) == "2026-01-12T02:30:00Z");
  plan = zf::plan_missed(cron("30 2 * * MON"), utc, created, last, at("2026-01-05T02:29:59Z"));
  CHECK_FALSE(plan.missed);
  CHECK_FALSE(plan.catch_up);

  plan = zf::plan_missed(one_shot(at("2026-01-02T00:00:00Z")), utc, created, last, now);
  CHECK(show(plan.catch_up) == "2026-01-02T00:00:00Z");
  CHECK(show(plan.next) == "never");

  // A window that closed during the downtime: its last firing is caught up.
  auto windowed = every(1h);
  windowed.start = created;
  windowed.end = at("2026-01-03T12:30:00Z");
  plan = zf::plan_missed(windowed, utc, created, last, now);
  CHECK(show(plan.catch_up) == "2026-01-03T12:00:00Z");
  CHECK(show(plan.next) == "never");
}

// ---------------------------------------------------------------- scheduler

TEST_CASE("trigger scheduler: a restart after downtime gives one catch-up with once and none with skip") {
  const TimePoint created = at("2026-01-01T00:00:00Z");
  const TimePoint last = at("2026-01-01T00:05:00Z");
  const TimePoint now = at("2026-01-11T03:07:30Z");
  TriggerScheduler s;
  s.set_job("once", {every(1min), cron("*/5 * * * *"), one_shot(at("2026-01-02T00:00:00Z"))}, now);
  s.set_job("skip",
            {every(1min, TriggerSpec::OnMissed::Skip), cron("*/5 * * * *", TriggerSpec::OnMissed::Skip),
             one_shot(at("2026-01-02T00:00:00Z"), TriggerSpec::OnMissed::Skip)},
            now);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(s.restore_last_fired("once", i, last, now));
    CHECK(s.restore_last_fired("skip", i, last, now));
  }
  CHECK_FALSE(s.restore_last_fired("once", 3, last, now));
  CHECK_FALSE(s.restore_last_fired("nobody", 0, last, now));
  (void)created;

  auto firings = s.due(now);
  REQUIRE(firings.size() == 3);
  for (const auto& f : firings) {
    CHECK(f.job == "once");
    CHECK(f.catch_up);
  }
  CHECK(show(firings[0].scheduled) == "2026-01-02T00:00:00Z");
  CHECK(firings[0].trigger == 2);
  CHECK(show(firings[1].scheduled) == "2026-01-11T03:05:00Z");
  CHECK(firings[1].trigger == 1);
  CHECK(show(firings[2].scheduled) == "2026-01-11T03:07:00Z");  // the every grid of the last firing
  CHECK(firings[2].trigger == 0);
  CHECK(s.due(now).empty());
  CHECK(s.due(now + 20s).empty());
  CHECK(show(s.next_deadline()) == "2026-01-11T03:08:00Z");
  auto times = s.next_fire_times("skip");
  REQUIRE(times.size() == 3);
  CHECK(show(times[0]) == "2026-01-11T03:08:00Z");
  CHECK(show(times[1]) == "2026-01-11T03:10:00Z");
  CHECK(show(times[2]) == "never");

  // Regular firings afterwards, one per trigger per time.
  firings = s.due(at("2026-01-11T03:08:00Z"));
  REQUIRE(firings.size() == 2);
  CHECK_FALSE(firings[0].catch_up);
  CHECK(show(firings[0].scheduled) == "2026-01-11T03:08:00Z");

  // A quick restart that missed nothing gives nothing.
  TriggerScheduler quick;
  quick.set_job("j", {every(1min)}, now);
  quick.restore_last_fired("j", 0, at("2026-01-11T03:07:00Z"), now);
  CHECK(quick.due(now).empty());
  CHECK(show(quick.next_deadline()) == "2026-01-11T03:08:00Z");
}

TEST_CASE("trigger scheduler: a late loop fires an overdue trigger once, and a misfire follows on_missed") {
  const TimePoint t0 = at("2026-01-01T00:00:00Z");
  TriggerScheduler s(60s);
  s.set_job("once", {every(1min)}, t0);
  s.set_job("skip", {every(1min, TriggerSpec::OnMissed::Skip)}, t0);
  // 10 s late: a normal firing for both.
  auto f = s.due(t0 + 70s);
  REQUIRE(f.size() == 2);
  CHECK_FALSE(f[0].catch_up);
  CHECK_FALSE(f[1].catch_up);
  CHECK(show(f[0].scheduled) == "2026-01-01T00:01:00Z");
  // Suspended for an hour: skip drops it, once fires one catch-up.
  f = s.due(t0 + 1h + 70s);
  REQUIRE(f.size() == 1);
  CHECK(f[0].job == "once");
  CHECK(f[0].catch_up);
  CHECK(show(f[0].scheduled) == "2026-01-01T01:01:00Z");
  CHECK(show(s.next_deadline()) == "2026-01-01T01:02:00Z");
  CHECK(s.due(t0 + 1h + 119s).empty());
}

TEST_CASE("trigger scheduler: 10,000 triggers come out in time order, and only the due ones") {
  const TimePoint base = at("2026-01-01T00:00:00Z");
  constexpr int kJobs = 10'000;
  TriggerScheduler s;
  for (int i = 0; i < kJobs; ++i) {
    // A permutation of 0..9999 seconds, so insertion order is not time order.
    auto offset = chr::seconds((static_cast<long>(i) * 7919) % kJobs);
    auto t = one_shot(base + offset);
    t.params["i"] = std::to_string(i);
    s.set_job("job" + std::to_string(i), {t}, base - 1s);
  }
  CHECK(s.scheduled_count() == kJobs);
  CHECK(show(s.next_deadline()) == "2026-01-01T00:00:00Z");

  std::set<std::string> seen;
  TimePoint prev = base - 1s;
  for (auto now : {base + 4999s + 500ms, base + 9999s}) {
    auto firings = s.due(now);
    CHECK(firings.size() == 5000);
    for (const auto& f : firings) {
      CHECK(f.scheduled >= prev);
      CHECK(f.scheduled <= now);
      CHECK(f.params.at("i") == f.job.substr(3));
      CHECK(seen.insert(f.job).second);
      prev = f.scheduled;
    }
  }
  CHECK(seen.size() == kJobs);
  CHECK_FALSE(s.next_deadline());
  CHECK(s.due(base + 100'000s).empty());
}

TEST_CASE("trigger scheduler: interleaved interval triggers fire in time order") {
  const TimePoint t0 = at("2026-01-01T00:00:00Z");
  TriggerScheduler s;
  s.set_job("a", {every(3s), every(5s)}, t0);
  s.set_job("b", {every(4s)}, t0);
  std::vector<std::pair<long, std::string>> got;
  for (auto now = t0; now <= t0 + 12s; now += 1s)
    for (const auto& f : s.due(now))
      got.emplace_back(chr::duration_cast<chr::seconds>(f.scheduled - t0).count(),
                       f.job + std::to_string(f.trigger));
  std::vector<std::pair<long, std::string>> want = {{3, "a0"}, {4, "b0"},  {5, "a1"}, {6, "a0"},
                                                    {8, "b0"}, {9, "a0"},  {10, "a1"}, {12, "a0"},
                                                    {12, "b0"}};
  CHECK(got == want);
}

TEST_CASE("trigger scheduler: a disabled job does not fire and resumes from now when enabled") {
  const TimePoint t0 = at("2026-01-01T00:00:00Z");
  TriggerScheduler s;
  s.set_job("j", {every(1min), every(1min)}, t0);
  s.set_job("k", {every(7min)}, t0);
  CHECK(s.disable("j"));
  CHECK_FALSE(s.is_enabled("j"));
  CHECK(s.next_fire_times("j") == std::vector<std::optional<TimePoint>>{std::nullopt, std::nullopt});
  CHECK(show(s.next_deadline()) == "2026-01-01T00:07:00Z");
  auto f = s.due(t0 + 10min);
  REQUIRE(f.size() == 1);
  CHECK(f[0].job == "k");
  CHECK(s.enable("j", t0 + 10min + 30s));
  CHECK(s.enable("j", t0 + 10min + 30s));  // twice is once
  CHECK(show(s.next_deadline()) == "2026-01-01T00:11:00Z");
  f = s.due(t0 + 11min);
  REQUIRE(f.size() == 2);
  CHECK_FALSE(f[0].catch_up);
  CHECK(f[0].job == "j");
  CHECK(f[1].job == "j");
  CHECK_FALSE(s.enable("nobody", t0));
  CHECK_FALSE(s.disable("nobody"));

  // Replacing a disabled job keeps it disabled; removing it forgets it.
  CHECK(s.disable("j"));
  s.set_job("j", {every(2min)}, t0 + 11min);
  CHECK_FALSE(s.is_enabled("j"));
  s.remove_job("j");
  s.remove_job("k");
  CHECK_FALSE(s.has_job("j"));
  CHECK_FALSE(s.next_deadline());
  CHECK(s.scheduled_count() == 0);
}

TEST_CASE("trigger scheduler: putting an unchanged job again keeps its schedule") {
  const TimePoint t0 = at("2026-01-01T00:00:00Z");
  TriggerScheduler s;
  TriggerSpec w;
  w.kind = TriggerSpec::Kind::Watch;
  w.watch = "/in";
  s.set_job("j", {every(1min), w}, t0);
  s.set_job("j", {every(1min), w}, t0 + 30s);
  CHECK(show(s.next_fire_times("j")[0]) == "2026-01-01T00:01:00Z");
  CHECK(show(s.next_fire_times("j")[1]) == "never");
  s.set_job("j", {every(2min)}, t0 + 30s);
  CHECK(s.next_fire_times("j").size() == 1);
  CHECK(show(s.next_fire_times("j")[0]) == "2026-01-01T00:02:30Z");
  CHECK(s.scheduled_count() == 1);
}

// ---------------------------------------------------------------- file watcher

namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "zf-trigger-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

TriggerSpec watch_spec(const TempDir& dir, zf::Millis poll, bool existing = false) {
  TriggerSpec t;
  t.kind = TriggerSpec::Kind::Watch;
  t.watch = dir.path.string();
  t.pattern = "*.csv";
  t.poll = poll;
  t.existing = existing;
  return t;
}

// Collects events until `done` says so or `limit` passes. Every wait is bounded.
struct Collector {
  zf::FileWatcher& watcher;
  std::vector<zf::FileEvent> files;
  std::map<std::string, chr::steady_clock::time_point> received;  // last File event per path
  int ready = 0;
  std::vector<std::string> errors;

  template <class Done>
  bool run_until(Done done, chr::milliseconds limit) {
    auto deadline = chr::steady_clock::now() + limit;
    while (!done()) {
      auto left = chr::duration_cast<chr::milliseconds>(deadline - chr::steady_clock::now()).count();
      if (left <= 0) return false;
      pollfd p{watcher.fd(), POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(left));
      for (auto& e : watcher.take()) {
        if (e.kind == zf::FileEvent::Kind::Ready) ++ready;
        else if (e.kind == zf::FileEvent::Kind::Error) errors.push_back(e.message);
        else {
          received[e.path] = chr::steady_clock::now();
          files.push_back(std::move(e));
        }
      }
    }
    return true;
  }
  void quiet(chr::milliseconds period) {
    run_until([] { return false; }, period);
  }
};

void drop_files_and_check(bool use_inotify) {
  TempDir dir;
  write_file(dir.file("old.csv"), "was here before\n");
  auto w = zf::FileWatcher::create(zf::FileWatcher::Options{use_inotify});
  REQUIRE(w.ok());
  zf::FileWatcher& watcher = **w;
  const auto poll = 150ms;
  watcher.add("j", 0, watch_spec(dir, poll));
  Collector c{watcher, {}, {}, 0, {}};
  REQUIRE(c.run_until([&] { return c.ready == 1; }, 5s));

  // 15 files written at once, 5 appended to in pieces for about 3 polls,
  // and two that do not match.
  for (int i = 0; i < 15; ++i) write_file(dir.file("quick" + std::to_string(i) + ".csv"), "a,b\n1,2\n");
  write_file(dir.file("note.txt"), "x");
  write_file(dir.file(".partial.csv"), "x");
  constexpr int kSlow = 5;
  constexpr int kChunks = 15;
  std::mutex mu;
  std::map<std::string, chr::steady_clock::time_point> last_write;
  std::thread slow([&] {
    std::vector<std::ofstream> outs;
    for (int i = 0; i < kSlow; ++i) outs.emplace_back(dir.file("slow" + std::to_string(i) + ".csv"), std::ios::binary);
    for (int chunk = 0; chunk < kChunks; ++chunk) {
      for (int i = 0; i < kSlow; ++i) {
        auto before = chr::steady_clock::now();
        outs[i] << "row " << chunk << "\n" << std::flush;
        std::lock_guard<std::mutex> lock(mu);
        last_write[dir.file("slow" + std::to_string(i) + ".csv")] = before;
      }
      std::this_thread::sleep_for(30ms);
    }
  });
  bool got_all = c.run_until([&] { return c.files.size() >= 20; }, 10s);
  slow.join();
  CHECK(got_all);
  c.quiet(4 * poll);  // nothing more comes
  CHECK(c.errors.empty());
  REQUIRE(c.files.size() == 20);

  std::set<std::string> paths;
  for (const auto& e : c.files) {
    CAPTURE(e.path);
    CHECK(e.job == "j");
    CHECK(e.trigger == 0);
    CHECK(paths.insert(e.path).second);
    // The reported version is the final one: the whole file.
    CHECK(e.size == std::filesystem::file_size(e.path));
    auto mtime = std::filesystem::last_write_time(e.path);
    CHECK(e.mtime.time_since_epoch() ==
          chr::duration_cast<TimePoint::duration>(chr::file_clock::to_sys(mtime).time_since_epoch()));
  }
  CHECK_FALSE(paths.count(dir.file("old.csv")));
  for (int i = 0; i < kSlow; ++i) {
    auto p = dir.file("slow" + std::to_string(i) + ".csv");
    CAPTURE(p);
    REQUIRE(paths.count(p));
    // Taken only after it had stopped changing for a poll interval.
    CHECK(c.received[p] >= last_write[p] + poll);
  }

  // Rewriting a file is a new version; it fires once more.
  write_file(dir.file("quick3.csv"), "a,b\n1,2\n3,4\n");
  CHECK(c.run_until([&] { return c.files.size() >= 21; }, 5s));
  c.quiet(3 * poll);
  REQUIRE(c.files.size() == 21);
  CHECK(c.files.back().path == dir.file("quick3.csv"));
  CHECK(c.files.back().size == 12);
  // And a pre-existing file that changes is a changed file.
  write_file(dir.file("old.csv"), "changed\n");
  CHECK(c.run_until([&] { return c.files.size() >= 22; }, 5s));
  CHECK(c.files.back().path == dir.file("old.csv"));
}

}  // namespace

TEST_CASE("file watcher: 20 dropped files give exactly 20 events, each once it stopped changing (inotify)") {
  drop_files_and_check(true);
}

TEST_CASE("file watcher: the same holds with polling alone") { drop_files_and_check(false); }

TEST_CASE("file watcher: files already there fire only with existing = true") {
  TempDir dir;
  for (int i = 0; i < 3; ++i) write_file(dir.file("pre" + std::to_string(i) + ".csv"), "x\n");
  auto w = zf::FileWatcher::create();
  REQUIRE(w.ok());
  zf::FileWatcher& watcher = **w;
  watcher.add("ignore", 0, watch_spec(dir, 100ms, false));
  watcher.add("take", 2, watch_spec(dir, 100ms, true));
  Collector c{watcher, {}, {}, 0, {}};
  REQUIRE(c.run_until([&] { return c.files.size() >= 3; }, 5s));
  c.quiet(400ms);
  CHECK(c.ready == 2);
  REQUIRE(c.files.size() == 3);
  for (const auto& e : c.files) {
    CHECK(e.job == "take");
    CHECK(e.trigger == 2);
  }

  // A new file fires for both watches of the folder.
  write_file(dir.file("new.csv"), "y\n");
  REQUIRE(c.run_until([&] { return c.files.size() >= 5; }, 5s));
  CHECK(c.files[3].path == dir.file("new.csv"));
  CHECK(c.files[4].path == dir.file("new.csv"));
  CHECK(c.files[3].job != c.files[4].job);

  // After remove, nothing more for that watch; adding the same spec again
  // keeps the running one.
  watcher.remove_job("take");
  watcher.add("ignore", 0, watch_spec(dir, 100ms, false));
  write_file(dir.file("later.csv"), "z\n");
  REQUIRE(c.run_until([&] { return c.files.size() >= 6; }, 5s));
  c.quiet(300ms);
  REQUIRE(c.files.size() == 6);
  CHECK(c.files[5].job == "ignore");
  CHECK(c.ready == 2);
}

TEST_CASE("file watcher: a missing folder is reported once and watched until it appears") {
  TempDir dir;
  auto sub = dir.path / "later";
  auto w = zf::FileWatcher::create();
  REQUIRE(w.ok());
  zf::FileWatcher& watcher = **w;
  TriggerSpec t = watch_spec(dir, 100ms);
  t.watch = sub.string();
  watcher.add("j", 0, t);
  Collector c{watcher, {}, {}, 0, {}};
  REQUIRE(c.run_until([&] { return c.ready == 1 && !c.errors.empty(); }, 5s));
  CHECK(c.errors[0].find("No such file or directory") != std::string::npos);
  c.quiet(300ms);
  CHECK(c.errors.size() == 1);
  // Files in a folder that appears later are new files.
  std::filesystem::create_directory(sub);
  write_file((sub / "a.csv").string(), "1\n");
  REQUIRE(c.run_until([&] { return c.files.size() == 1; }, 5s));
  CHECK(c.files[0].path == (sub / "a.csv").string());
}
