// When the timer triggers of the master's jobs fire.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/trigger.h"

namespace zf {

// Keeps the next firing of every timer trigger of every job in one ordered
// set, keyed (time, job, trigger index), so the loop's sleep is the time to
// the set's first entry and a tick touches only the triggers that are due.
// Watch triggers are kept (so trigger indices line up with the job file) but
// never fire here: FileWatcher reports their files.
//
// Owns copies of the trigger specs, each trigger's anchor (the time it was
// created, the grid of `every` without `start`), and its next firing. It
// owns no clock, timer or thread: the caller passes `now` and sleeps.
//
// Single-threaded: owned by the master's event loop and called only from it.
//
// Semantics:
//  * due(now) returns every firing with scheduled time <= now, in time
//    order, and schedules each trigger's next firing strictly after `now`.
//    A trigger that is overdue by several periods fires once (never a
//    storm); its Firing carries the latest of the overdue times.
//  * A firing the loop reaches more than `misfire_grace` late (the machine
//    was suspended, the loop was stuck) is a missed one and follows the
//    trigger's on_missed: skip drops it, once fires it (catch_up = true).
//  * After a restart, restore_last_fired() says when a trigger last fired;
//    firings between then and `now` were missed whatever their lateness,
//    so on_missed = once yields exactly one catch-up, skip none.
//  * A disabled job keeps its triggers but has no entries in the set;
//    enabling it schedules from `now` (nothing missed while disabled fires).
//
// Cost: set_job, remove_job, enable, disable O(T log N) for a job with T
// triggers among N scheduled; due() O(log N) per firing (a cron trigger
// that is overdue by more than one period adds O(log(overdue)) next_fire
// calls); next_deadline O(1).
class TriggerScheduler {
 public:
  struct Firing {
    std::string job;
    std::size_t trigger = 0;   // index in the job's [[triggers]]
    TimePoint scheduled{};     // the time it was due (persist it as "last fired")
    bool catch_up = false;     // a catch-up for missed firings (on_missed = once)
    std::map<std::string, std::string> params;  // the trigger's params
  };

  explicit TriggerScheduler(Millis misfire_grace = std::chrono::seconds(60));

  // Adds a job's triggers or replaces them. A trigger equal (same_trigger)
  // to the one at the same index keeps its anchor and next firing, so a
  // `job put` of an unchanged file does not move its schedule; any other
  // trigger is created at `now`. A replaced job stays enabled or disabled.
  void set_job(const std::string& job, std::vector<TriggerSpec> triggers, TimePoint now);
  void remove_job(const std::string& job);
  bool has_job(const std::string& job) const { return jobs_.count(job) != 0; }

  // false if the job is unknown. Enabling an enabled job changes nothing.
  bool enable(const std::string& job, TimePoint now);
  bool disable(const std::string& job);
  bool is_enabled(const std::string& job) const;

  // After a restart: trigger `index` of `job` last fired with scheduled time
  // `last_fired` (for one that never fired, pass the time it was created).
  // Also re-anchors an `every` trigger without `start` on that time, so its
  // grid survives restarts. Firings missed in (last_fired, now] give one
  // catch-up at the next due(now) if on_missed = once, none if skip. false
  // if the job or index is unknown or the trigger is a watch trigger.
  bool restore_last_fired(const std::string& job, std::size_t index, TimePoint last_fired, TimePoint now);

  // The earliest scheduled firing of an enabled job; nullopt if none.
  std::optional<TimePoint> next_deadline() const;

  // Every firing due at `now`, in order of time (ties by job, then index),
  // each trigger rescheduled. Firings dropped by on_missed = skip are not
  // returned.
  std::vector<Firing> due(TimePoint now);

  // For `job show`: the next firing of each trigger of the job, by index;
  // nullopt for watch triggers, finished ones and all of a disabled job.
  // Empty if the job is unknown.
  std::vector<std::optional<TimePoint>> next_fire_times(const std::string& job) const;

  std::size_t scheduled_count() const { return timeline_.size(); }

 private:
  struct TriggerState {
    TriggerSpec spec;
    TimePoint anchor{};
    std::optional<TimePoint> next;   // in timeline_ iff set and the job is enabled
    bool catch_up_pending = false;   // `next` is a catch-up from restore_last_fired
  };
  struct JobState {
    std::vector<TriggerState> triggers;
    bool enabled = true;
  };
  using Entry = std::tuple<TimePoint, std::string, std::size_t>;

  void unschedule(const std::string& job, JobState& state);
  void schedule(const std::string& job, std::size_t index, TriggerState& t);

  Millis misfire_grace_;
  std::map<std::string, JobState, std::less<>> jobs_;
  std::set<Entry> timeline_;
};

}  // namespace zf
