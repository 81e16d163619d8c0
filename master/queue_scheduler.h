// Credit accounting of the master's execution queues.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/queue_config.h"
#include "common/result.h"

namespace zf {

// Decides which waiting instance may start now, on which member and in which
// slot, and takes back the credit when the instance ends. It is the only place
// that counts queue credits and member slots, so "no start without a credit,
// no credit leaked" can be checked here alone.
//
// Owns: the queue configurations it was given, the ids of waiting instances in
// their order with the tags each requires, one credit per in-flight instance
// (queue, member, member slot, queue slot), the min_delay holds on queue slots,
// and the members' slot counts and tags. It does not own instances, jobs, sockets or clocks: the master's
// event loop reports what happened and passes `now` in.
//
// Single-threaded: owned by the master's event loop and called only from it.
//
// Semantics the caller can rely on:
//  * A queue's credit window is max_parallel × (eligible members alive),
//    capped by max_total. Eligible members are those run_on allows, or those
//    the fallback allows while none of the first kind is alive. Credits in use
//    are the in-flight instances plus the queue slots held by min_delay,
//    wherever they are (a credit on a member that is no longer eligible still
//    counts until it ends). A window that shrinks below its use kills
//    nothing; the queue just starts nothing until the use drops below it.
//  * A start needs: a credit in the window, a member that is eligible, has
//    every tag the instance requires, has a free member slot (in flight <
//    slots) and fewer than max_parallel of this queue's slots in use on it.
//    Among such members the least loaded (in flight / slots) wins, ties by
//    name. Tags only filter members: they add no credits and take none away
//    (the window counts eligible members whatever their tags).
//  * Order of waiting instances, within a queue and between queues competing
//    for the same member slot: those re-queued to the front first, then higher
//    priority, then earlier submission. Each start takes the first instance in
//    that order, over all queues, that can start now. So among instances with
//    no requirements the order is strict; an instance whose required tags no
//    usable member has is passed over, and never delays another instance of
//    its queue or of another queue (nor does a queue that cannot start
//    anything). Being passed over, it can wait behind later instances for as
//    long as those keep taking the queue's credits or the tagged members' slots.
//  * Tags: a member's tags are those of its latest member_joined(); a re-join
//    that drops a tag kills nothing (instances already running there keep
//    their credits), it only stops new starts that require the tag.
//  * min_delay: the queue slot an instance ended in stays occupied until
//    end + min_delay; the member slot is free at once. Holds are released by
//    dispatch(now); next_deadline() says when the next one falls due. A
//    changed min_delay moves existing holds to end + new min_delay. A member
//    that goes away takes its holds with it.
//  * Every end (finished, cancelled, timed out, member gone) returns the
//    credit exactly once; a second end of the same instance is refused.
//
// Indexing of requirements: the distinct requirement sets (sorted, without
// duplicates; "none" is one of them) are interned, and a set exists while some
// instance waiting with it does. The waiting instances of a queue are kept in
// one sub-line per requirement set they carry; each sub-line competes like a
// queue did before tags: under its head key, in its set's per-class wanting
// set, against its set's per-class index of free members with every tag of the
// set. A member with a free slot is listed in the free index of "none" and of
// each existing set whose tags it has.
//
// Cost per call, with W waiting instances, Q queues, M members, H held queue
// slots, and with requirements: R the distinct requirement sets of waiting
// instances, "none" always counted (R = 1 if nothing requires anything), L
// the sub-lines of the queue at hand (1 if none of its waiting instances
// requires anything), R_m the sets whose tags the member at hand has (0 while
// nothing waiting requires any of its tags), T the tags of the call. R and L
// stay small while jobs share a few requirement sets; in the worst case (every
// waiting instance with a set of its own) they grow to W, and dispatch with
// them: the indexing pays off only while sets are few.
//  * submit, cancel_waiting: O(log W + log Q + T log T + T log R), plus
//    O(L log Q) when the queue's state changes (all its sub-lines are listed or
//    unlisted). The first waiting instance of a new requirement set also pays
//    O(M (T + log M)) to build the set's member index, and the last one to
//    leave a set O(M R) to drop it.
//  * finished, adopt: O(log Q + log H + (1 + R_m) log M + L log Q).
//  * dispatch: O(log H) per hold that falls due, then per started instance
//    O(log W + log Q + (1 + R_m) log M + L log Q + Σ over the R sets of
//    (S + 1) · (log M + K)). For one set, S counts its sub-lines skipped
//    because on every free member of a class with the set's tags all their
//    queue's max_parallel slots are in use; for any one such member m, S ≤
//    m's slots + m's min_delay holds. K counts, for one queue, the free
//    members skipped for the same reason: at most the members where that
//    queue has slots in use. A set no free member of a class fits costs O(1)
//    for that class: its sub-lines are not walked. Apart from R and L nothing
//    grows with W; no call scans all queues or all waiting instances; a
//    dispatch that starts nothing costs the same walk once. Without
//    requirements R = L = 1 and R_m = 0: the cost before tags.
//  * member_joined (a new member), member_gone, add_or_update_queue,
//    remove_queue: O(Q L log Q) plus the member's or queue's own credits and
//    holds, since who is alive changes every queue's window; a member's join
//    or changed tags add O(R T). These follow membership changes and operator
//    actions, not instance traffic.
class QueueScheduler {
 public:
  using InstanceId = std::uint64_t;  // the instance id of the wire protocol
  using TimePoint = std::chrono::steady_clock::time_point;

  enum class EndReason { kFinished, kCancelled, kTimedOut };

  // One credit handed out: start `instance` of `queue` on `member`.
  struct Dispatch {
    InstanceId instance = 0;
    std::string queue;
    std::string member;
    int slot = 0;        // the member's slot, 0 ≤ slot < its slots (what the tap shows)
    int queue_slot = 0;  // the queue's slot on that member, 0 ≤ queue_slot < max_parallel
  };

  // What `queue list` shows. Ended counters only grow; together they satisfy
  //   dispatched + adopted = finished + cancelled + timed_out + lost + in_flight
  //   submitted = waiting + cancelled_waiting + dispatched
  struct QueueStats {
    std::string name;
    // "idle": nothing waiting; "no_credit": waiting, the window is in use (or
    // 0); "wanting": waiting with a free credit, starts as soon as an eligible
    // member with the tags some waiting instance requires has a free slot and
    // room for this queue.
    std::string_view state;
    std::int64_t window = 0;        // credits the queue may use now
    std::int64_t in_flight = 0;
    std::int64_t held = 0;          // queue slots held by min_delay
    std::int64_t waiting = 0;
    std::int64_t eligible_members = 0;
    std::int64_t submitted = 0;
    std::int64_t dispatched = 0;
    std::int64_t adopted = 0;
    std::int64_t finished = 0;
    std::int64_t cancelled = 0;     // ended by a cancel while running
    std::int64_t timed_out = 0;
    std::int64_t lost = 0;          // in flight on a member that left or was lost
    std::int64_t cancelled_waiting = 0;
  };

  struct MemberStats {
    std::string name;
    bool is_master = false;
    int slots = 0;
    int in_flight = 0;
    std::vector<std::string> tags;  // sorted, no duplicates
  };

  QueueScheduler();
  ~QueueScheduler();
  QueueScheduler(QueueScheduler&&) noexcept;
  QueueScheduler& operator=(QueueScheduler&&) noexcept;
  QueueScheduler(const QueueScheduler&) = delete;
  QueueScheduler& operator=(const QueueScheduler&) = delete;

  // Adds a queue, or replaces the configuration of the queue of that name.
  // A replacement applies at once to waiting instances; running ones keep
  // their credits. Error if the configuration is invalid (see validate()).
  Status add_or_update_queue(QueueConfig config);
  // Error while the queue has waiting or in-flight instances; its min_delay
  // holds are dropped with it.
  Status remove_queue(std::string_view name);

  // A member registered with `slots` execution slots for all queues together,
  // and with `tags` (order and duplicates do not matter; an empty tag is an
  // error). Joining again under the same name replaces its slots and tags
  // (lowering the slots below its in-flight count or dropping a tag kills
  // nothing); changing between master and worker is refused: the member must
  // go first.
  Status member_joined(std::string_view name, bool is_master, int slots, std::vector<std::string> tags = {});
  // The member left or was lost: to the credits both are the same. Returns the
  // instances that were in flight on it, in their queue order; their credits
  // are back. Error if no such member.
  Result<std::vector<InstanceId>> member_gone(std::string_view name);

  // Puts an instance in the waiting line of `queue`. `front`: re-queued after
  // its member was lost, so it goes before every instance not re-queued.
  // `required_tags`: it may start only on a member that has every one of them
  // (order and duplicates do not matter). Error if the queue is unknown, the
  // id is already waiting or in flight, or a required tag is empty. (A
  // re-queued instance must be submitted with its requirements again.)
  Status submit(InstanceId id, std::string_view queue, int priority = 0, bool front = false,
                std::vector<std::string> required_tags = {});
  // Error if the instance is not waiting (a running one ends via finished()).
  Status cancel_waiting(InstanceId id);
  // The instance ended on a member that is still there. Error, and nothing
  // changes, if it is not in flight (unknown, waiting, or already ended).
  Status finished(InstanceId id, TimePoint now, EndReason reason = EndReason::kFinished);
  // Takes a credit for an instance that a member reports it is running
  // without this scheduler having dispatched it (after a master restart).
  // It is already running, so neither the window nor the slots can refuse it.
  Result<Dispatch> adopt(InstanceId id, std::string_view queue, std::string_view member);

  // Releases the holds due at `now`, then starts up to `max_count` instances,
  // each with one credit. After a call with the default max_count nothing
  // that could start is left waiting.
  std::vector<Dispatch> dispatch(TimePoint now,
                                 std::size_t max_count = std::numeric_limits<std::size_t>::max());
  // When the next min_delay hold falls due: the master loop should call
  // dispatch() then. None if no slot is held.
  std::optional<TimePoint> next_deadline() const;

  std::optional<QueueStats> queue_stats(std::string_view name) const;
  std::vector<QueueStats> all_queue_stats() const;    // by name
  std::vector<MemberStats> all_member_stats() const;  // by name
  // The credit of an in-flight instance; none if it is not in flight.
  std::optional<Dispatch> in_flight(InstanceId id) const;
  bool is_waiting(InstanceId id) const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace zf
