// A cluster member's connection as seen by the master, as an explicit state
// machine; member_next() is the one place where its transitions are defined.
#pragma once

#include <optional>
#include <string_view>

namespace zf {

enum class MemberState {
  Active,    // admitted, takes assignments
  Draining,  // takes no new assignments, finishes what it has
  Left,      // said DISCONNECT
  Lost,      // missed its heartbeats (or could not be reached)
};

enum class MemberEvent {
  Ready,       // READY (first registration or a re-registration)
  Drain,       // the operator asked it to drain
  Disconnect,  // it said DISCONNECT
  Expire,      // no sign of life for liveness × interval
  Unreachable, // a send to it failed (ROUTER_MANDATORY)
};

std::string_view member_state_name(MemberState s);
std::string_view member_event_name(MemberEvent e);
std::optional<MemberState> member_next(MemberState s, MemberEvent e);
inline bool is_present(MemberState s) { return s == MemberState::Active || s == MemberState::Draining; }

}  // namespace zf
