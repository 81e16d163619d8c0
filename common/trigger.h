// Triggers of a job: the `[[triggers]]` tables of a job file (timer: every,
// cron, at; file system: watch), validated, and the pure time arithmetic the
// master's scheduler needs (next firing, what to do after missed firings).
// Format and semantics: docs/triggers.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cron.h"
#include "common/duration.h"
#include "common/result.h"
#include "common/time_zone.h"

namespace toml {
inline namespace v3 {
class node;
}
}  // namespace toml

namespace zf {

using TimePoint = std::chrono::system_clock::time_point;

// Limits that hold against careless or hostile job files.
inline constexpr std::size_t kMaxTriggers = 256;
inline constexpr std::size_t kMaxTriggerParams = 64;
inline constexpr std::size_t kMaxTriggerParamValueBytes = 64 * 1024;
// An interval shorter than this would create instances faster than any
// operator wants; longer than this, the arithmetic stays far from overflow.
inline constexpr Millis kMinEvery = std::chrono::milliseconds(100);
inline constexpr Millis kMaxEvery = std::chrono::hours(24 * 3650);
inline constexpr Millis kMinPoll = std::chrono::milliseconds(100);
inline constexpr Millis kDefaultPoll = std::chrono::seconds(5);
// The parameter a watch trigger sets to the path of the file.
inline constexpr std::string_view kFileParam = "file";

// One validated `[[triggers]]` table. A small value, safe to copy and to
// share between threads.
struct TriggerSpec {
  enum class Kind { Every, Cron, At, Watch };
  // What happens to firings the master could not make at their time (it was
  // down, or its loop was late by more than the scheduler's grace):
  // Skip drops them; Once makes one catch-up firing for all of them.
  enum class OnMissed { Skip, Once };

  Kind kind = Kind::Every;

  // Timer kinds.
  Millis every{0};                    // Every: the interval
  std::optional<CronExpr> cron;       // Cron: the expression
  TimePoint at{};                     // At: the one instant
  std::optional<TimePoint> start;     // Every/Cron: no firing before (inclusive)
  std::optional<TimePoint> end;       // Every/Cron: no firing after (inclusive)
  TimeZone zone = TimeZone::utc();    // Cron: the zone its fields are read in
  OnMissed on_missed = OnMissed::Once;

  // Watch kind.
  std::string watch;                  // absolute folder path
  std::string pattern = "*";          // fnmatch pattern for file names
  Millis poll = kDefaultPoll;         // polling interval and stability time
  bool existing = false;              // also fire for files present at creation

  // Parameter values for the instances this trigger creates (for Watch,
  // `file` is added per firing and may not be set here).
  std::map<std::string, std::string> params;

  bool is_timer() const { return kind != Kind::Watch; }
};

const char* kind_name(TriggerSpec::Kind kind);  // "every", "cron", "at", "watch"

// Two specs that would fire at the same times with the same parameters (and,
// for Watch, watch the same files the same way). The scheduler keeps a
// trigger's state across a `job put` that does not change it.
bool same_trigger(const TriggerSpec& a, const TriggerSpec& b);

// Parses the value of a job file's `triggers` key (an array of tables).
// Errors read like the job loader's:
//   "jobs/a.toml:7:9: field 'triggers[0].every': invalid duration 'x' ..."
// The time zone of a cron trigger is loaded here (an unknown zone is an
// error at `job put`, not at firing time). Checking `params` names against
// the job's declared parameters is left to the job loader.
Result<std::vector<TriggerSpec>> parse_triggers(const toml::node& triggers_node, std::string_view source_name);

// RFC 3339 instants with an offset: "2026-05-01T10:00:00Z",
// "2026-05-01T12:00:00.250+02:00" ('t', 'z' and a space for 'T' accepted).
// Years 1900-2200.
Result<TimePoint> parse_rfc3339(std::string_view text);
// UTC, "2026-05-01T10:00:00Z"; milliseconds are shown when not zero.
std::string format_rfc3339(TimePoint t);

// The first firing of a timer trigger strictly after `after`, inside its
// start/end window; nullopt if there is none (window over, `at` passed, a
// cron expression that cannot fire, or a Watch trigger).
//  * Every fires at base + k·every (k ≥ 0), base = start if given, else
//    `anchor` (the time the trigger was created). So a trigger created at
//    `anchor` first fires at anchor + every.
//  * Cron fires at the expression's times read in `tz` (docs/cron.md).
//  * At fires once, at `at`.
std::optional<TimePoint> next_fire(const TriggerSpec& spec, TimePoint after, const TimeZone& tz,
                                   TimePoint anchor);

// The latest firing at or before `now`, given `known`, a firing at or before
// `now`. Exact for every kind; for cron a bisection of O(log(now - known))
// next_fire calls, so a long downtime costs no more than a short one.
TimePoint latest_fire_at_or_before(const TriggerSpec& spec, const TimeZone& tz, TimePoint anchor,
                                   TimePoint known, TimePoint now);

// What to do with a timer trigger that last fired (its scheduled time) at
// `last_fired` when the master looks at it again at `now`, e.g. after a
// restart. Never more than one catch-up, however long the downtime.
struct MissedPlan {
  bool missed = false;                 // some firing fell in (last_fired, now]
  std::optional<TimePoint> catch_up;   // on_missed = once: the scheduled time of
                                       // the one catch-up (the latest missed firing)
  std::optional<TimePoint> next;       // the next regular firing, strictly after now
};
MissedPlan plan_missed(const TriggerSpec& spec, const TimeZone& tz, TimePoint anchor,
                       TimePoint last_fired, TimePoint now);

}  // namespace zf
