// Each state machine on its own: every allowed transition, and that nothing
// leaves a final state.
#include <doctest/doctest.h>

#include "master/instance_state.h"
#include "master/member_state.h"
#include "worker/link_state.h"

using namespace zf;

TEST_CASE("an instance goes queued, assigned, running, then one final state") {
  using S = InstanceState;
  using E = InstanceEvent;
  CHECK(next_state(S::Queued, E::Dispatch) == S::Assigned);
  CHECK(next_state(S::Assigned, E::Start) == S::Running);
  CHECK(next_state(S::Running, E::Succeed) == S::Succeeded);
  CHECK(next_state(S::Running, E::Fail) == S::Failed);
  CHECK(next_state(S::Running, E::TimeOut) == S::TimedOut);
  CHECK(next_state(S::Running, E::Cancel) == S::Cancelled);
  CHECK(next_state(S::Running, E::Lose) == S::Lost);
  CHECK(next_state(S::Queued, E::Cancel) == S::Cancelled);
  CHECK(next_state(S::Assigned, E::Succeed) == S::Succeeded);  // finished before STARTED was seen
  CHECK(next_state(S::Assigned, E::Lose) == S::Lost);
  CHECK(next_state(S::Lost, E::Requeue) == S::Queued);
  // Not allowed:
  CHECK_FALSE(next_state(S::Queued, E::Start));
  CHECK_FALSE(next_state(S::Queued, E::Succeed));
  CHECK_FALSE(next_state(S::Queued, E::Lose));
  CHECK_FALSE(next_state(S::Running, E::Dispatch));
  CHECK_FALSE(next_state(S::Running, E::Start));
  for (auto s : {S::Succeeded, S::Failed, S::Cancelled, S::TimedOut, S::Lost}) {
    CHECK(is_terminal(s));
    for (auto e : {E::Dispatch, E::Start, E::Succeed, E::Fail, E::TimeOut, E::Cancel, E::Lose})
      CHECK_FALSE(next_state(s, e));
  }
  // Retries: only outcomes a retry policy can name go back to queued.
  CHECK(next_state(S::Failed, E::Requeue) == S::Queued);
  CHECK(next_state(S::TimedOut, E::Requeue) == S::Queued);
  CHECK_FALSE(next_state(S::Succeeded, E::Requeue));
  CHECK_FALSE(next_state(S::Cancelled, E::Requeue));
  CHECK_FALSE(next_state(S::Queued, E::Requeue));
  CHECK(is_terminal(S::Lost));
  CHECK_FALSE(is_terminal(S::Running));
  for (auto s : {S::Queued, S::Assigned, S::Running, S::Succeeded, S::Failed, S::Cancelled, S::TimedOut, S::Lost})
    CHECK(parse_state(state_name(s)) == s);
  CHECK_FALSE(parse_state("finished"));
}

TEST_CASE("a member joins, drains, leaves or is lost, and may come back") {
  using S = MemberState;
  using E = MemberEvent;
  CHECK(member_next(S::Lost, E::Ready) == S::Active);
  CHECK(member_next(S::Active, E::Ready) == S::Active);
  CHECK(member_next(S::Active, E::Drain) == S::Draining);
  CHECK(member_next(S::Active, E::Disconnect) == S::Left);
  CHECK(member_next(S::Active, E::Expire) == S::Lost);
  CHECK(member_next(S::Active, E::Unreachable) == S::Lost);
  CHECK(member_next(S::Draining, E::Disconnect) == S::Left);
  CHECK(member_next(S::Draining, E::Expire) == S::Lost);
  CHECK(member_next(S::Left, E::Ready) == S::Active);
  CHECK_FALSE(member_next(S::Lost, E::Expire));
  CHECK_FALSE(member_next(S::Left, E::Disconnect));
  CHECK_FALSE(member_next(S::Lost, E::Drain));
  CHECK(is_present(S::Draining));
  CHECK_FALSE(is_present(S::Lost));
}

TEST_CASE("the worker's link registers, connects, backs off and reconnects") {
  using S = LinkState;
  using E = LinkEvent;
  CHECK(link_next(S::Disconnected, E::Connect) == S::Registering);
  CHECK(link_next(S::Registering, E::Welcome) == S::Connected);
  CHECK(link_next(S::Registering, E::MasterSilent) == S::Backoff);
  CHECK(link_next(S::Connected, E::MasterSilent) == S::Backoff);
  CHECK(link_next(S::Connected, E::MasterDisconnect) == S::Backoff);
  CHECK(link_next(S::Backoff, E::BackoffOver) == S::Disconnected);
  CHECK(link_next(S::Registering, E::Refused) == S::Refused);
  CHECK(link_next(S::Connected, E::Stop) == S::Stopped);
  CHECK_FALSE(link_next(S::Disconnected, E::Welcome));
  CHECK_FALSE(link_next(S::Backoff, E::Welcome));
  for (auto e : {E::Connect, E::Welcome, E::MasterSilent, E::MasterDisconnect, E::Refused, E::BackoffOver, E::Stop}) {
    CHECK_FALSE(link_next(S::Refused, e));
    CHECK_FALSE(link_next(S::Stopped, e));
  }
}
