#include "master/member_state.h"

namespace zf {

std::string_view member_state_name(MemberState s) {
  switch (s) {
    case MemberState::Active: return "active";
    case MemberState::Draining: return "draining";
    case MemberState::Left: return "left";
    case MemberState::Lost: return "lost";
  }
  return "?";
}

std::string_view member_event_name(MemberEvent e) {
  switch (e) {
    case MemberEvent::Ready: return "ready";
    case MemberEvent::Drain: return "drain";
    case MemberEvent::Disconnect: return "disconnect";
    case MemberEvent::Expire: return "expire";
    case MemberEvent::Unreachable: return "unreachable";
  }
  return "?";
}

std::optional<MemberState> member_next(MemberState s, MemberEvent e) {
  using S = MemberState;
  using E = MemberEvent;
  switch (s) {
    case S::Active:
      if (e == E::Ready) return S::Active;
      if (e == E::Drain) return S::Draining;
      if (e == E::Disconnect) return S::Left;
      if (e == E::Expire || e == E::Unreachable) return S::Lost;
      break;
    case S::Draining:
      if (e == E::Ready) return S::Draining;
      if (e == E::Disconnect) return S::Left;
      if (e == E::Expire || e == E::Unreachable) return S::Lost;
      break;
    case S::Left:
    case S::Lost:
      if (e == E::Ready) return S::Active;
      break;
  }
  return std::nullopt;
}

}  // namespace zf
