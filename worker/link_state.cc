#include "worker/link_state.h"

namespace zf {

std::string_view link_state_name(LinkState s) {
  switch (s) {
    case LinkState::Disconnected: return "disconnected";
    case LinkState::Registering: return "registering";
    case LinkState::Connected: return "connected";
    case LinkState::Backoff: return "backoff";
    case LinkState::Refused: return "refused";
    case LinkState::Stopped: return "stopped";
  }
  return "?";
}

std::string_view link_event_name(LinkEvent e) {
  switch (e) {
    case LinkEvent::Connect: return "connect";
    case LinkEvent::Welcome: return "welcome";
    case LinkEvent::MasterSilent: return "master-silent";
    case LinkEvent::MasterDisconnect: return "master-disconnect";
    case LinkEvent::Refused: return "refused";
    case LinkEvent::BackoffOver: return "backoff-over";
    case LinkEvent::Stop: return "stop";
  }
  return "?";
}

std::optional<LinkState> link_next(LinkState s, LinkEvent e) {
  using S = LinkState;
  using E = LinkEvent;
  if (s == S::Stopped || s == S::Refused) return std::nullopt;
  if (e == E::Stop) return S::Stopped;
  switch (s) {
    case S::Disconnected:
      if (e == E::Connect) return S::Registering;
      break;
    case S::Registering:
      if (e == E::Welcome) return S::Connected;
      if (e == E::MasterSilent || e == E::MasterDisconnect) return S::Backoff;
      if (e == E::Refused) return S::Refused;
      break;
    case S::Connected:
      if (e == E::Welcome) return S::Connected;
      if (e == E::MasterSilent || e == E::MasterDisconnect) return S::Backoff;
      if (e == E::Refused) return S::Refused;
      break;
    case S::Backoff:
      if (e == E::BackoffOver) return S::Disconnected;
      break;
    case S::Refused:
    case S::Stopped: break;
  }
  return std::nullopt;
}

}  // namespace zf
