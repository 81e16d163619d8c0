// The lifecycle of a job instance as an explicit state machine; next_state()
// is the one place where its transitions are defined.
//   queued -> assigned -> running -> succeeded | failed | cancelled | timed_out
//   assigned | running -> lost -> (re-queued as a new attempt) queued
//   failed | timed_out -> queued as a new attempt, when the job's retry policy says so
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace zf {

enum class InstanceState { Queued, Assigned, Running, Succeeded, Failed, Cancelled, TimedOut, Lost };
// How many states there are, for arrays indexed by state (Lost stays last).
inline constexpr size_t kInstanceStates = static_cast<size_t>(InstanceState::Lost) + 1;

enum class InstanceEvent {
  Dispatch,  // the master sent ASSIGN to a member
  Start,     // the member reported STARTED
  Succeed,   // FINISHED succeeded
  Fail,      // FINISHED failed
  TimeOut,   // FINISHED timed_out
  Cancel,    // removed while queued, or FINISHED cancelled
  Lose,      // its member vanished
  Requeue,   // a lost, failed or timed-out instance is retried as a new attempt
};

std::string_view state_name(InstanceState s);
// The tap event type of entering state s: "instance." + state_name(s).
std::string_view instance_event_type(InstanceState s);
std::optional<InstanceState> parse_state(std::string_view name);
std::string_view instance_event_name(InstanceEvent e);
// Terminal for this attempt; lost, failed and timed_out may still be
// followed by Requeue, at once, when the retry policy allows.
bool is_terminal(InstanceState s);
std::optional<InstanceState> next_state(InstanceState s, InstanceEvent e);

}  // namespace zf
