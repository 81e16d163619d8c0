#include "master/instance_state.h"

namespace zf {

std::string_view state_name(InstanceState s) {
  switch (s) {
    case InstanceState::Queued: return "queued";
    case InstanceState::Assigned: return "assigned";
    case InstanceState::Running: return "running";
    case InstanceState::Succeeded: return "succeeded";
    case InstanceState::Failed: return "failed";
    case InstanceState::Cancelled: return "cancelled";
    case InstanceState::TimedOut: return "timed_out";
    case InstanceState::Lost: return "lost";
  }
  return "?";
}

std::string_view instance_event_type(InstanceState s) {
  switch (s) {
    case InstanceState::Queued: return "instance.queued";
    case InstanceState::Assigned: return "instance.assigned";
    case InstanceState::Running: return "instance.running";
    case InstanceState::Succeeded: return "instance.succeeded";
    case InstanceState::Failed: return "instance.failed";
    case InstanceState::Cancelled: return "instance.cancelled";
    case InstanceState::TimedOut: return "instance.timed_out";
    case InstanceState::Lost: return "instance.lost";
  }
  return "instance.?";
}

std::optional<InstanceState> parse_state(std::string_view name) {
  for (auto s : {InstanceState::Queued, InstanceState::Assigned, InstanceState::Running, InstanceState::Succeeded,
                 InstanceState::Failed, InstanceState::Cancelled, InstanceState::TimedOut, InstanceState::Lost})
    if (state_name(s) == name) return s;
  return std::nullopt;
}

std::string_view instance_event_name(InstanceEvent e) {
  switch (e) {
    case InstanceEvent::Dispatch: return "dispatch";
    case InstanceEvent::Start: return "start";
    case InstanceEvent::Succeed: return "succeed";
    case InstanceEvent::Fail: return "fail";
    case InstanceEvent::TimeOut: return "time-out";
    case InstanceEvent::Cancel: return "cancel";
    case InstanceEvent::Lose: return "lose";
    case InstanceEvent::Requeue: return "requeue";
  }
  return "?";
}

bool is_terminal(InstanceState s) {
  return s == InstanceState::Succeeded || s == InstanceState::Failed || s == InstanceState::Cancelled ||
         s == InstanceState::TimedOut || s == InstanceState::Lost;
}

std::optional<InstanceState> next_state(InstanceState s, InstanceEvent e) {
  using S = InstanceState;
  using E = InstanceEvent;
  auto ending = [](E ev) -> std::optional<S> {
    switch (ev) {
      case E::Succeed: return S::Succeeded;
      case E::Fail: return S::Failed;
      case E::TimeOut: return S::TimedOut;
      case E::Cancel: return S::Cancelled;
      case E::Lose: return S::Lost;
      default: return std::nullopt;
    }
  };
  switch (s) {
    case S::Queued:
      if (e == E::Dispatch) return S::Assigned;
      if (e == E::Cancel) return S::Cancelled;
      return std::nullopt;
    case S::Assigned:
      if (e == E::Start) return S::Running;
      return ending(e);  // a short instance may finish before STARTED is processed
    case S::Running: return ending(e);
    case S::Lost:
    case S::Failed:
    case S::TimedOut:
      if (e == E::Requeue) return S::Queued;
      return std::nullopt;
    case S::Succeeded:
    case S::Cancelled: return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace zf
