// The worker's connection to the master as an explicit state machine
// (Paranoid Pirate: heartbeats both ways, reconnect with backoff).
// link_next() is the one place where transitions are defined.
#pragma once

#include <optional>
#include <string_view>

namespace zf {

enum class LinkState {
  Disconnected,  // no socket; connect on the next loop turn
  Registering,   // READY sent, waiting for WELCOME
  Connected,     // admitted: assignments flow, heartbeats both ways
  Backoff,       // socket dropped; wait before connecting again
  Refused,       // the master refused us (e.g. protocol version): give up
  Stopped,       // shutting down
};

enum class LinkEvent {
  Connect,           // a fresh socket connected and READY sent
  Welcome,           // WELCOME received
  MasterSilent,      // nothing from the master for liveness × interval
  MasterDisconnect,  // DISCONNECT received (master stopping, or it forgot us)
  Refused,           // REFUSED received
  BackoffOver,       // the backoff delay has passed
  Stop,              // the worker was asked to stop
};

std::string_view link_state_name(LinkState s);
std::string_view link_event_name(LinkEvent e);

// The state after `event` in `state`, or nullopt if the event is not
// expected there (the caller logs it and keeps the state).
std::optional<LinkState> link_next(LinkState state, LinkEvent event);

}  // namespace zf
