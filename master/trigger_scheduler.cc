#include "master/trigger_scheduler.h"

#include <algorithm>
#include <utility>

namespace zf {

TriggerScheduler::TriggerScheduler(Millis misfire_grace) : misfire_grace_(misfire_grace) {}

void TriggerScheduler::unschedule(const std::string& job, JobState& state) {
  for (std::size_t i = 0; i < state.triggers.size(); ++i) {
    if (state.triggers[i].next) timeline_.erase(Entry{*state.triggers[i].next, job, i});
  }
}

void TriggerScheduler::schedule(const std::string& job, std::size_t index, TriggerState& t) {
  if (t.next) timeline_.insert(Entry{*t.next, job, index});
}

void TriggerScheduler::set_job(const std::string& job, std::vector<TriggerSpec> triggers, TimePoint now) {
  auto it = jobs_.find(job);
  JobState fresh;
  JobState& state = it != jobs_.end() ? it->second : fresh;
  if (it != jobs_.end()) unschedule(job, state);

  std::vector<TriggerState> updated;
  updated.reserve(triggers.size());
  for (std::size_t i = 0; i < triggers.size(); ++i) {
    if (i < state.triggers.size() && same_trigger(state.triggers[i].spec, triggers[i])) {
      updated.push_back(std::move(state.triggers[i]));
      continue;
    }
    TriggerState t;
    t.spec = std::move(triggers[i]);
    t.anchor = now;
    t.next = next_fire(t.spec, now, t.spec.zone, t.anchor);
    updated.push_back(std::move(t));
  }
  state.triggers = std::move(updated);
  if (it == jobs_.end()) it = jobs_.emplace(job, std::move(fresh)).first;
  if (it->second.enabled) {
    for (std::size_t i = 0; i < it->second.triggers.size(); ++i) schedule(job, i, it->second.triggers[i]);
  }
}

void TriggerScheduler::remove_job(const std::string& job) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return;
  if (it->second.enabled) unschedule(job, it->second);
  jobs_.erase(it);
}

bool TriggerScheduler::enable(const std::string& job, TimePoint now) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return false;
  if (it->second.enabled) return true;
  it->second.enabled = true;
  for (std::size_t i = 0; i < it->second.triggers.size(); ++i) {
    TriggerState& t = it->second.triggers[i];
    t.catch_up_pending = false;
    t.next = next_fire(t.spec, now, t.spec.zone, t.anchor);
    schedule(job, i, t);
  }
  return true;
}

bool TriggerScheduler::disable(const std::string& job) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return false;
  if (!it->second.enabled) return true;
  unschedule(job, it->second);
  it->second.enabled = false;
  return true;
}

bool TriggerScheduler::is_enabled(const std::string& job) const {
  auto it = jobs_.find(job);
  return it != jobs_.end() && it->second.enabled;
}

bool TriggerScheduler::restore_last_fired(const std::string& job, std::size_t index, TimePoint last_fired,
                                          TimePoint now) {
  auto it = jobs_.find(job);
  if (it == jobs_.end() || index >= it->second.triggers.size()) return false;
  TriggerState& t = it->second.triggers[index];
  if (!t.spec.is_timer()) return false;
  if (it->second.enabled && t.next) timeline_.erase(Entry{*t.next, job, index});
  if (t.spec.kind == TriggerSpec::Kind::Every && !t.spec.start) t.anchor = last_fired;
  MissedPlan plan = plan_missed(t.spec, t.spec.zone, t.anchor, last_fired, now);
  t.catch_up_pending = plan.catch_up.has_value();
  t.next = plan.catch_up ? plan.catch_up : plan.next;
  if (it->second.enabled) schedule(job, index, t);
  return true;
}

std::optional<TimePoint> TriggerScheduler::next_deadline() const {
  if (timeline_.empty()) return std::nullopt;
  return std::get<0>(*timeline_.begin());
}

std::vector<TriggerScheduler::Firing> TriggerScheduler::due(TimePoint now) {
  std::vector<Firing> out;
  while (!timeline_.empty() && std::get<0>(*timeline_.begin()) <= now) {
    auto node = timeline_.extract(timeline_.begin());
    auto& [when, job, index] = node.value();
    TriggerState& t = jobs_.find(job)->second.triggers[index];

    bool fire = true;
    bool catch_up = false;
    TimePoint scheduled = when;
    if (t.catch_up_pending) {
      catch_up = true;  // decided by restore_last_fired; `when` is the latest missed time
    } else {
      scheduled = latest_fire_at_or_before(t.spec, t.spec.zone, t.anchor, when, now);
      if (now - when > misfire_grace_) {
        catch_up = true;
        fire = t.spec.on_missed == TriggerSpec::OnMissed::Once;
      }
    }
    t.catch_up_pending = false;
    t.next = next_fire(t.spec, now, t.spec.zone, t.anchor);
    if (fire) out.push_back(Firing{job, index, scheduled, catch_up, t.spec.params});
    if (t.next) {
      // Reuse the extracted node (and its job string) for the new entry.
      when = *t.next;
      timeline_.insert(std::move(node));
    }
  }
  // Entries came out in order of their due time; a trigger overdue by more
  // than one period reports a later (its latest) time, so restore the order.
  std::stable_sort(out.begin(), out.end(), [](const Firing& a, const Firing& b) {
    return std::tie(a.scheduled, a.job, a.trigger) < std::tie(b.scheduled, b.job, b.trigger);
  });
  return out;
}

std::vector<std::optional<TimePoint>> TriggerScheduler::next_fire_times(const std::string& job) const {
  std::vector<std::optional<TimePoint>> out;
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return out;
  for (const auto& t : it->second.triggers) out.push_back(it->second.enabled ? t.next : std::nullopt);
  return out;
}

}  // namespace zf
