#include "master/queue_scheduler.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <iterator>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace zf {
namespace {

using InstanceId = QueueScheduler::InstanceId;
using TimePoint = QueueScheduler::TimePoint;
using Dispatch = QueueScheduler::Dispatch;
using QueueId = std::uint32_t;
using MemberId = std::uint32_t;
using HoldId = std::uint64_t;
using ReqSetId = std::uint32_t;
constexpr ReqSetId kNoRequirements = 0;  // the empty requirement set; always exists

// run_on rules select whole classes of members, never single members. That is
// what lets queues be indexed by class instead of by member.
enum MemberClass : int { kMasterClass = 0, kWorkerClass = 1 };
constexpr int kClassCount = 2;
using ClassMask = unsigned;
constexpr ClassMask class_bit(int c) { return 1u << c; }

ClassMask classes_of(RunOn rule) {
  switch (rule) {
    case RunOn::kAny: return class_bit(kMasterClass) | class_bit(kWorkerClass);
    case RunOn::kMaster: return class_bit(kMasterClass);
    case RunOn::kWorkers: return class_bit(kWorkerClass);
  }
  return 0;
}

// Numbered slots handed out lowest number first; owned by a Member (its
// slots) or a Queue (its slots on one member). The capacity may drop below
// the number in use (lowered max_parallel or member slots): holders keep their
// numbers, and has_room() stays false until enough of them are given back.
// Whenever in_use() < capacity some number below the capacity is free, and it
// is the lowest free one, so take() never hands out a number past a lowered
// capacity unless the caller forces it (adopt).
class SlotPool {
 public:
  explicit SlotPool(int capacity) : capacity_(capacity) {}

  void set_capacity(int capacity) { capacity_ = capacity; }
  int capacity() const { return capacity_; }
  int in_use() const { return end_ - static_cast<int>(returned_.size()); }
  bool has_room() const { return in_use() < capacity_; }

  int take() {
    if (returned_.empty()) return end_++;
    const int number = *returned_.begin();
    returned_.erase(returned_.begin());
    return number;
  }

  void give_back(int number) {
    assert(number >= 0 && number < end_ && !returned_.contains(number));
    if (number != end_ - 1) {
      returned_.insert(number);
      return;
    }
    // Shrink from the top so that an idle pool holds nothing.
    --end_;
    while (!returned_.empty() && *returned_.rbegin() == end_ - 1) {
      returned_.erase(std::prev(returned_.end()));
      --end_;
    }
  }

 private:
  int capacity_;
  int end_ = 0;              // numbers [0, end_) were handed out at least once
  std::set<int> returned_;   // numbers below end_ that are free again
};

// Order of waiting instances: re-queued to the front first, then higher
// priority, then earlier submission (a global sequence, so keys of different
// queues compare too; that decides which queue gets a contested member slot).
struct WaitKey {
  int tier = 0;  // 0: re-queued to the front, 1: normal
  std::int64_t neg_priority = 0;
  std::uint64_t seq = 0;
  // Spelled out rather than a defaulted <=>, which GCC does not always
  // inline: this comparison is the hot path of every ordered waiting set.
  friend bool operator<(const WaitKey& a, const WaitKey& b) {
    if (a.tier != b.tier) return a.tier < b.tier;
    if (a.neg_priority != b.neg_priority) return a.neg_priority < b.neg_priority;
    return a.seq < b.seq;
  }
  bool operator==(const WaitKey&) const = default;
};

// An instance as the scheduler sees it. Ended instances are forgotten, so a
// second end finds no record: a double finish cannot return a credit twice.
enum class InstanceState { kWaiting, kInFlight, kEnded };
enum class InstanceEvent { kDispatch, kCancelWaiting, kEnd };

// The one place that says which instance events are allowed in which state.
std::optional<InstanceState> next_state(InstanceState state, InstanceEvent event) {
  switch (state) {
    case InstanceState::kWaiting:
      if (event == InstanceEvent::kDispatch) return InstanceState::kInFlight;
      if (event == InstanceEvent::kCancelWaiting) return InstanceState::kEnded;
      break;
    case InstanceState::kInFlight:
      if (event == InstanceEvent::kEnd) return InstanceState::kEnded;
      break;
    case InstanceState::kEnded:
      break;
  }
  return std::nullopt;
}

std::string_view state_name(InstanceState state) {
  switch (state) {
    case InstanceState::kWaiting: return "waiting";
    case InstanceState::kInFlight: return "in flight";
    case InstanceState::kEnded: return "ended";
  }
  return "?";
}

// Whether a queue competes for member slots. refresh() is the one place that
// moves a queue between these states; only kWanting queues are listed in the
// per-class wanting sets that dispatch() walks.
enum class QueueState {
  kIdle,      // nothing waiting
  kNoCredit,  // waiting, but every credit of the window is in use (or the window is 0)
  kWanting,   // waiting with a free credit; still needs a member with room
};

std::string_view state_name(QueueState state) {
  switch (state) {
    case QueueState::kIdle: return "idle";
    case QueueState::kNoCredit: return "no_credit";
    case QueueState::kWanting: return "wanting";
  }
  return "?";
}

struct Instance {
  InstanceState state = InstanceState::kWaiting;
  QueueId queue = 0;
  WaitKey key;
  ReqSetId reqset = kNoRequirements;  // waiting only: which sub-line it waits in
  MemberId member = 0;  // in flight only
  int slot = -1;        // in flight only
  int queue_slot = -1;  // in flight only
};

// A queue slot kept occupied after its instance ended. Life of a queue slot:
// free -> running (dispatch) -> held (end, min_delay > 0) -> free (deadline
// reached at dispatch(), or its member gone); running -> free when the end
// needs no hold or the member is gone.
struct Hold {
  QueueId queue = 0;
  MemberId member = 0;
  int queue_slot = 0;
  TimePoint ended_at;
  TimePoint until;
};

struct Counters {
  std::int64_t submitted = 0;
  std::int64_t dispatched = 0;
  std::int64_t adopted = 0;
  std::int64_t finished = 0;
  std::int64_t cancelled = 0;
  std::int64_t timed_out = 0;
  std::int64_t lost = 0;
  std::int64_t cancelled_waiting = 0;
};

struct ReqSet;

// The waiting instances of one queue that require one requirement set, in
// their order. A queue's instances without requirements form one line; each
// distinct requirement set adds one. A line exists only while it is not empty.
// While its queue is kWanting, a line is listed in its set's wanting sets
// (those of the queue's eligible classes) under its head key.
struct Line {
  ReqSet* reqset = nullptr;
  std::map<WaitKey, InstanceId> waiting;
  bool listed = false;
  WaitKey listed_key;
};

struct Queue {
  QueueId id = 0;
  QueueConfig config;
  // The line of the instances without requirements lives here for good (it
  // may be empty), so the common case needs no lookup and no allocation; the
  // lines with requirements come and go, non-empty ones only.
  Line plain;
  std::map<ReqSetId, Line> tagged;
  std::int64_t waiting = 0;  // over all lines
  // This queue's slots on each member; a lane exists only while some of its
  // slots are in use, so idle (queue, member) pairs cost nothing.
  std::unordered_map<MemberId, SlotPool> lanes;
  std::set<HoldId> holds;
  std::int64_t in_flight = 0;
  Counters counters;
  QueueState state = QueueState::kIdle;
  // The classes under which every line of the queue is listed (0: none).
  ClassMask listed_in = 0;
};

struct Member {
  MemberId id = 0;
  std::string name;
  MemberClass member_class = kWorkerClass;
  std::vector<std::string> tags;  // sorted, no duplicates
  // The requirement sets other than the empty one that exist now and whose
  // every tag this member has: the sets whose free sets list it.
  std::vector<ReqSet*> fits;
  SlotPool slots{0};
  std::unordered_set<InstanceId> running;
  std::set<HoldId> holds;
};

// Position of a member with a free slot: least loaded first (in flight /
// slots, compared without division), then by name. The key is a snapshot, so
// a member is taken out before its load changes and put back after.
struct FreeKey {
  std::int64_t in_flight = 0;
  std::int64_t slots = 1;
  std::string_view name;  // points into Member::name, which outlives the key
  MemberId id = 0;

  bool operator<(const FreeKey& other) const {
    const std::int64_t mine = in_flight * other.slots;
    const std::int64_t theirs = other.in_flight * slots;
    if (mine != theirs) return mine < theirs;
    return name < other.name;
  }
};

// A line in a wanting set: its head key, then its queue.
struct WantEntry {
  WaitKey key;
  QueueId queue = 0;

  friend bool operator<(const WantEntry& a, const WantEntry& b) {
    if (a.key.tier != b.key.tier) return a.key.tier < b.key.tier;
    if (a.key.neg_priority != b.key.neg_priority) return a.key.neg_priority < b.key.neg_priority;
    if (a.key.seq != b.key.seq) return a.key.seq < b.key.seq;
    return a.queue < b.queue;
  }
};

// One distinct set of required tags, interned: it exists while some waiting
// instance requires exactly it (the empty set always exists). Members are
// indexed per set, so finding a member with every tag of a line costs what
// finding any member did before tags: a walk of one free set.
struct ReqSet {
  ReqSetId id = kNoRequirements;
  std::vector<std::string> tags;  // sorted, no duplicates
  std::int64_t waiting = 0;       // waiting instances requiring exactly this set (not kept for "none")
  // Per class: members with every tag of the set and a free slot, least loaded first.
  std::array<std::set<FreeKey>, kClassCount> free;
  // Per class: the lines of kWanting queues that require this set, by head key.
  std::array<std::set<WantEntry>, kClassCount> wanting;
};

// Whether sorted `have` contains every tag of sorted `required`.
bool has_all(const std::vector<std::string>& have, const std::vector<std::string>& required) {
  return std::includes(have.begin(), have.end(), required.begin(), required.end());
}

// Sorts and deduplicates tags; an empty tag is an error.
Result<std::vector<std::string>> normalize_tags(std::vector<std::string> tags, const std::string& what) {
  for (const std::string& tag : tags) {
    if (tag.empty()) return Error{what + ": a tag must not be empty"};
  }
  std::sort(tags.begin(), tags.end());
  tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
  return tags;
}

}  // namespace

// The scheduler's state and rules behind the public interface (see the header
// for the contract). Owns every table below; single-threaded like its owner.
class QueueScheduler::Impl {
 public:
  Impl() {
    ReqSet& none = reqsets_[kNoRequirements];
    none.id = kNoRequirements;
    no_requirements_ = &none;
  }

  Status add_or_update_queue(QueueConfig config) {
    if (Status valid = validate(config); !valid) return valid;
    auto found = queue_ids_.find(config.name);
    if (found == queue_ids_.end()) {
      const QueueId id = next_queue_id_++;
      queue_ids_.emplace(config.name, id);
      Queue& queue = queues_[id];
      queue.id = id;
      queue.plain.reqset = no_requirements_;
      queue.config = std::move(config);
      refresh(queue);
      return {};
    }
    Queue& queue = queues_.at(found->second);
    const bool delay_changed = queue.config.min_delay != config.min_delay;
    queue.config = std::move(config);
    for (auto& [member, lane] : queue.lanes) lane.set_capacity(queue.config.max_parallel);
    if (delay_changed) {
      for (HoldId hold_id : queue.holds) {
        Hold& hold = holds_.at(hold_id);
        timers_.erase({hold.until, hold_id});
        hold.until = hold.ended_at + queue.config.min_delay;
        timers_.insert({hold.until, hold_id});
      }
    }
    refresh(queue);
    return {};
  }

  Status remove_queue(std::string_view name) {
    Queue* queue = find_queue(name);
    if (queue == nullptr) return Error{"queue " + std::string(name) + ": no such queue"};
    if (queue->waiting > 0 || queue->in_flight > 0) {
      return Error{"queue " + std::string(name) + ": cannot be removed while it has " +
                   std::to_string(queue->waiting) + " waiting and " +
                   std::to_string(queue->in_flight) + " running instances"};
    }
    while (!queue->holds.empty()) drop_hold(*queue->holds.begin());
    assert(queue->plain.waiting.empty() && queue->tagged.empty() && queue->listed_in == 0);
    queue_ids_.erase(queue_ids_.find(name));
    queues_.erase(queue->id);
    return {};
  }

  Status member_joined(std::string_view name, bool is_master, int slots, std::vector<std::string> tags) {
    if (slots < 0) {
      return Error{"member " + std::string(name) + ": slots must not be negative, got " + std::to_string(slots)};
    }
    auto normalized = normalize_tags(std::move(tags), "member " + std::string(name));
    if (!normalized) return normalized.error();
    const MemberClass member_class = is_master ? kMasterClass : kWorkerClass;
    if (Member* member = find_member(name)) {
      if (member->member_class != member_class) {
        return Error{"member " + std::string(name) + ": already registered as " +
                     (is_master ? "a worker" : "the master") + "; it must go before it can change"};
      }
      // Queue states depend neither on member slots nor on tags, so no queue
      // needs a refresh. Instances running here keep their credits even if
      // the member lost a tag they required.
      unlist_free(*member);
      member->slots.set_capacity(slots);
      if (member->tags != *normalized) {
        member->tags = std::move(*normalized);
        member->fits = sets_fitting(member->tags);
      }
      list_free(*member);
      return {};
    }
    const MemberId id = next_member_id_++;
    member_ids_.emplace(std::string(name), id);
    Member& member = members_[id];
    member.id = id;
    member.name = std::string(name);
    member.member_class = member_class;
    member.tags = std::move(*normalized);
    member.fits = sets_fitting(member.tags);
    member.slots.set_capacity(slots);
    ++alive_[member_class];
    list_free(member);
    refresh_all();  // windows and fallbacks depend on who is alive
    return {};
  }

  Result<std::vector<InstanceId>> member_gone(std::string_view name) {
    Member* found = find_member(name);
    if (found == nullptr) return Error{"member " + std::string(name) + ": no such member"};
    Member& member = *found;
    unlist_free(member);

    std::vector<std::pair<WaitKey, InstanceId>> ended;
    for (InstanceId id : member.running) ended.emplace_back(instances_.at(id).key, id);
    std::sort(ended.begin(), ended.end());
    std::vector<InstanceId> result;
    for (const auto& [key, id] : ended) {
      Instance& instance = instances_.at(id);
      assert(next_state(instance.state, InstanceEvent::kEnd));
      Queue& queue = queues_.at(instance.queue);
      --queue.in_flight;
      ++queue.counters.lost;
      instances_.erase(id);
      result.push_back(id);
    }
    while (!member.holds.empty()) drop_hold(*member.holds.begin());
    // Every lane of this member is now idle; they go with the member.
    for (auto& [id, queue] : queues_) queue.lanes.erase(member.id);

    --alive_[member.member_class];
    const MemberId id = member.id;
    member_ids_.erase(member_ids_.find(name));
    members_.erase(id);
    refresh_all();
    return result;
  }

  Status submit(InstanceId id, std::string_view queue_name, int priority, bool front,
                std::vector<std::string> required_tags) {
    Queue* queue = find_queue(queue_name);
    if (queue == nullptr) {
      return Error{"instance " + std::to_string(id) + ": no such queue " + std::string(queue_name)};
    }
    if (auto known = instances_.find(id); known != instances_.end()) {
      return Error{"instance " + std::to_string(id) + " is already " +
                   std::string(state_name(known->second.state))};
    }
    Line* line = &queue->plain;
    if (!required_tags.empty()) {
      auto normalized = normalize_tags(std::move(required_tags), "instance " + std::to_string(id));
      if (!normalized) return normalized.error();
      ReqSet& reqset = acquire_reqset(std::move(*normalized));
      ++reqset.waiting;
      line = &queue->tagged.try_emplace(reqset.id).first->second;
      line->reqset = &reqset;
    }
    const ReqSetId reqset_id = line->reqset->id;
    const WaitKey key{front ? 0 : 1, -static_cast<std::int64_t>(priority), next_seq_++};
    line->waiting.emplace(key, id);
    ++queue->waiting;
    instances_.emplace(id, Instance{InstanceState::kWaiting, queue->id, key, reqset_id, 0, -1, -1});
    ++queue->counters.submitted;
    refresh(*queue, line);
    return {};
  }

  Status cancel_waiting(InstanceId id) {
    auto found = instances_.find(id);
    if (found == instances_.end()) return Error{"instance " + std::to_string(id) + " is not waiting"};
    Instance& instance = found->second;
    if (!next_state(instance.state, InstanceEvent::kCancelWaiting)) {
      return Error{"instance " + std::to_string(id) + " is " + std::string(state_name(instance.state)) +
                   ", not waiting"};
    }
    Queue& queue = queues_.at(instance.queue);
    Line& from = line_of(queue, instance.reqset);
    Line* line = take_waiting(queue, from, from.waiting.find(instance.key));
    ++queue.counters.cancelled_waiting;
    instances_.erase(found);
    refresh(queue, line);
    return {};
  }

  Status finished(InstanceId id, TimePoint now, EndReason reason) {
    auto found = instances_.find(id);
    if (found == instances_.end()) {
      return Error{"instance " + std::to_string(id) + " is not in flight (unknown, or its end was already counted)"};
    }
    if (!next_state(found->second.state, InstanceEvent::kEnd)) {
      return Error{"instance " + std::to_string(id) + " is " + std::string(state_name(found->second.state)) +
                   ", not in flight"};
    }
    const Instance instance = found->second;
    instances_.erase(found);

    Member& member = members_.at(instance.member);
    unlist_free(member);
    member.slots.give_back(instance.slot);
    member.running.erase(id);
    list_free(member);

    Queue& queue = queues_.at(instance.queue);
    --queue.in_flight;
    switch (reason) {
      case EndReason::kFinished: ++queue.counters.finished; break;
      case EndReason::kCancelled: ++queue.counters.cancelled; break;
      case EndReason::kTimedOut: ++queue.counters.timed_out; break;
    }
    if (queue.config.min_delay.count() > 0) {
      add_hold(queue, member, instance.queue_slot, now);
    } else {
      give_back_queue_slot(queue, member.id, instance.queue_slot);
    }
    refresh(queue);
    return {};
  }

  Result<Dispatch> adopt(InstanceId id, std::string_view queue_name, std::string_view member_name) {
    Queue* queue = find_queue(queue_name);
    if (queue == nullptr) {
      return Error{"instance " + std::to_string(id) + ": no such queue " + std::string(queue_name)};
    }
    Member* member = find_member(member_name);
    if (member == nullptr) {
      return Error{"instance " + std::to_string(id) + ": no such member " + std::string(member_name)};
    }
    if (auto known = instances_.find(id); known != instances_.end()) {
      return Error{"instance " + std::to_string(id) + " is already " +
                   std::string(state_name(known->second.state))};
    }
    // It has no place in the waiting order any more; its key only orders the
    // list member_gone() returns.
    const WaitKey key{0, 0, next_seq_++};
    instances_.emplace(id, Instance{InstanceState::kInFlight, queue->id, key, kNoRequirements, 0, -1, -1});
    ++queue->counters.adopted;
    return take_credit(id, *queue, *member, nullptr);
  }

  std::vector<Dispatch> dispatch(TimePoint now, std::size_t max_count) {
    while (!timers_.empty() && timers_.begin()->first <= now) {
      const QueueId queue = holds_.at(timers_.begin()->second).queue;
      drop_hold(timers_.begin()->second);
      refresh(queues_.at(queue));
    }
    std::vector<Dispatch> started;
    while (started.size() < max_count) {
      const auto choice = choose();
      if (!choice) break;
      Queue& queue = queues_.at(choice->queue);
      Line& from = line_of(queue, choice->reqset);
      const InstanceId id = from.waiting.begin()->second;
      Instance& instance = instances_.at(id);
      Line* line = take_waiting(queue, from, from.waiting.begin());
      instance.state = *next_state(instance.state, InstanceEvent::kDispatch);
      ++queue.counters.dispatched;
      started.push_back(take_credit(id, queue, members_.at(choice->member), line));
    }
    return started;
  }

  std::optional<TimePoint> next_deadline() const {
    if (timers_.empty()) return std::nullopt;
    return timers_.begin()->first;
  }

  std::optional<QueueStats> queue_stats(std::string_view name) const {
    auto found = queue_ids_.find(name);
    if (found == queue_ids_.end()) return std::nullopt;
    return stats_of(queues_.at(found->second));
  }

  std::vector<QueueStats> all_queue_stats() const {
    std::vector<QueueStats> all;
    for (const auto& [name, id] : queue_ids_) all.push_back(stats_of(queues_.at(id)));
    return all;
  }

  std::vector<MemberStats> all_member_stats() const {
    std::vector<MemberStats> all;
    for (const auto& [name, id] : member_ids_) {
      const Member& member = members_.at(id);
      all.push_back(MemberStats{member.name, member.member_class == kMasterClass, member.slots.capacity(),
                                static_cast<int>(member.running.size()), member.tags});
    }
    return all;
  }

  std::optional<Dispatch> in_flight(InstanceId id) const {
    auto found = instances_.find(id);
    if (found == instances_.end() || found->second.state != InstanceState::kInFlight) return std::nullopt;
    const Instance& instance = found->second;
    return Dispatch{id, queues_.at(instance.queue).config.name, members_.at(instance.member).name,
                    instance.slot, instance.queue_slot};
  }

  bool is_waiting(InstanceId id) const {
    auto found = instances_.find(id);
    return found != instances_.end() && found->second.state == InstanceState::kWaiting;
  }

 private:
  Queue* find_queue(std::string_view name) {
    auto found = queue_ids_.find(name);
    return found == queue_ids_.end() ? nullptr : &queues_.at(found->second);
  }

  Member* find_member(std::string_view name) {
    auto found = member_ids_.find(name);
    return found == member_ids_.end() ? nullptr : &members_.at(found->second);
  }

  // The classes the queue may use now: run_on's, or the fallback's while no
  // member of run_on's classes is alive.
  ClassMask eligible_classes(const QueueConfig& config) const {
    const ClassMask primary = classes_of(config.run_on);
    if (config.fallback && alive_in(primary) == 0) return classes_of(*config.fallback);
    return primary;
  }

  std::int64_t alive_in(ClassMask classes) const {
    std::int64_t count = 0;
    for (int c = 0; c < kClassCount; ++c) {
      if (classes & class_bit(c)) count += alive_[c];
    }
    return count;
  }

  std::int64_t window(const Queue& queue) const {
    const std::int64_t per_member = queue.config.max_parallel;
    std::int64_t credits = per_member * alive_in(eligible_classes(queue.config));
    if (queue.config.max_total) credits = std::min<std::int64_t>(credits, *queue.config.max_total);
    return credits;
  }

  static std::int64_t credits_in_use(const Queue& queue) {
    return queue.in_flight + static_cast<std::int64_t>(queue.holds.size());
  }

  // Recomputes the queue's state from its facts and makes the wanting sets
  // agree. Called after every change that touches the queue; after a change
  // of who is alive, for every queue.
  // `touched`: the one line whose head may have changed (or that is new),
  // if any; a line that was emptied is already gone. When the classes the
  // queue is listed under change, every line is listed again.
  void refresh(Queue& queue, Line* touched = nullptr) {
    QueueState next = QueueState::kWanting;
    if (queue.waiting == 0) {
      next = QueueState::kIdle;
    } else if (credits_in_use(queue) >= window(queue)) {
      next = QueueState::kNoCredit;
    }
    const ClassMask list_in = next == QueueState::kWanting ? eligible_classes(queue.config) : 0;
    queue.state = next;
    if (list_in != queue.listed_in) {
      unlist_line(queue, queue.plain);
      for (auto& [id, line] : queue.tagged) unlist_line(queue, line);
      queue.listed_in = list_in;
      if (!queue.plain.waiting.empty()) list_line(queue, queue.plain);
      for (auto& [id, line] : queue.tagged) list_line(queue, line);
      return;
    }
    if (touched != nullptr && list_in != 0 &&
        (!touched->listed || touched->listed_key != touched->waiting.begin()->first)) {
      unlist_line(queue, *touched);
      list_line(queue, *touched);
    }
  }

  void refresh_all() {
    for (auto& [id, queue] : queues_) refresh(queue);
  }

  // Lists a line under the queue's listed_in classes and its head key.
  void list_line(const Queue& queue, Line& line) {
    if (queue.listed_in == 0) return;
    const WaitKey key = line.waiting.begin()->first;
    for (int c = 0; c < kClassCount; ++c) {
      if (queue.listed_in & class_bit(c)) line.reqset->wanting[c].insert({key, queue.id});
    }
    line.listed = true;
    line.listed_key = key;
  }

  void unlist_line(const Queue& queue, Line& line) {
    if (!line.listed) return;
    for (int c = 0; c < kClassCount; ++c) {
      if (queue.listed_in & class_bit(c)) line.reqset->wanting[c].erase({line.listed_key, queue.id});
    }
    line.listed = false;
  }

  // Takes the waiting instance at `at` out of `line`. Returns the line, or
  // null if the line is now empty: then it is gone (the plain line stays,
  // empty), and so is its requirement set if no other instance waits with
  // it. The caller refreshes the queue.
  Line* take_waiting(Queue& queue, Line& line, std::map<WaitKey, InstanceId>::iterator at) {
    line.waiting.erase(at);
    --queue.waiting;
    ReqSet& reqset = *line.reqset;
    const bool tagged = reqset.id != kNoRequirements;
    if (tagged) --reqset.waiting;
    if (!line.waiting.empty()) return &line;
    unlist_line(queue, line);
    if (!tagged) return nullptr;
    queue.tagged.erase(reqset.id);
    if (reqset.waiting == 0) drop_reqset(reqset);
    return nullptr;
  }

  static Line& line_of(Queue& queue, ReqSetId reqset) {
    if (reqset == kNoRequirements) return queue.plain;
    const auto found = queue.tagged.find(reqset);
    assert(found != queue.tagged.end());
    return found->second;
  }

  // The existing sets other than the empty one whose every tag is in `tags`.
  std::vector<ReqSet*> sets_fitting(const std::vector<std::string>& tags) {
    std::vector<ReqSet*> fits;
    if (tags.empty()) return fits;
    for (auto& [id, reqset] : reqsets_) {
      if (id != kNoRequirements && has_all(tags, reqset.tags)) fits.push_back(&reqset);
    }
    return fits;
  }

  // The interned set of these (sorted, unique, non-empty) tags; made and
  // filled with the members that have them on first use.
  ReqSet& acquire_reqset(std::vector<std::string> tags) {
    if (auto found = reqset_ids_.find(tags); found != reqset_ids_.end()) return reqsets_.at(found->second);
    const ReqSetId id = next_reqset_id_++;
    ReqSet& reqset = reqsets_[id];
    reqset.id = id;
    reqset.tags = tags;
    reqset_ids_.emplace(std::move(tags), id);
    for (auto& [member_id, member] : members_) {
      if (!has_all(member.tags, reqset.tags)) continue;
      member.fits.push_back(&reqset);
      if (member.slots.has_room()) reqset.free[member.member_class].insert(free_key(member));
    }
    return reqset;
  }

  void drop_reqset(ReqSet& reqset) {
    for (int c = 0; c < kClassCount; ++c) assert(reqset.wanting[c].empty());
    for (auto& [member_id, member] : members_) std::erase(member.fits, &reqset);
    reqset_ids_.erase(reqset.tags);
    reqsets_.erase(reqset.id);
  }

  static FreeKey free_key(const Member& member) {
    return FreeKey{static_cast<std::int64_t>(member.running.size()), member.slots.capacity(), member.name,
                   member.id};
  }

  // A member with a free slot is listed in the free sets of the empty set
  // and of every set in its fits.
  void unlist_free(const Member& member) {
    if (!member.slots.has_room()) return;
    const FreeKey key = free_key(member);
    no_requirements_->free[member.member_class].erase(key);
    for (ReqSet* reqset : member.fits) reqset->free[member.member_class].erase(key);
  }

  void list_free(const Member& member) {
    if (!member.slots.has_room()) return;
    const FreeKey key = free_key(member);
    no_requirements_->free[member.member_class].insert(key);
    for (ReqSet* reqset : member.fits) reqset->free[member.member_class].insert(key);
  }

  // The least loaded member of class `c` with every tag of `reqset` and a
  // free slot on which `queue` has fewer than max_parallel slots in use.
  static const FreeKey* usable_member(const Queue& queue, const ReqSet& reqset, int c) {
    for (const FreeKey& candidate : reqset.free[c]) {
      auto lane = queue.lanes.find(candidate.id);
      if (lane == queue.lanes.end() || lane->second.has_room()) return &candidate;
    }
    return nullptr;
  }

  struct Choice {
    QueueId queue = 0;
    ReqSetId reqset = kNoRequirements;
    MemberId member = 0;
  };

  // The line whose head goes first among the lines that can start now, and
  // its member. For each requirement set and class, the set's wanting set is
  // walked in head order until a line with a usable member (with the set's
  // tags) of that class turns up; every later walk stops as soon as it
  // cannot beat the best find so far. A line whose tags no free member has
  // is never found, so it delays nothing behind it.
  std::optional<Choice> choose() const {
    const WantEntry* best = nullptr;
    const ReqSet* best_set = nullptr;
    for (const auto& [reqset_id, reqset] : reqsets_) {
      for (int c = 0; c < kClassCount; ++c) {
        if (reqset.free[c].empty()) continue;
        for (const WantEntry& entry : reqset.wanting[c]) {
          if (best != nullptr && !(entry < *best)) break;
          if (usable_member(queues_.at(entry.queue), reqset, c) != nullptr) {
            best = &entry;
            best_set = &reqset;
            break;
          }
        }
      }
    }
    if (best == nullptr) return std::nullopt;
    const Queue& queue = queues_.at(best->queue);
    const FreeKey* member = nullptr;
    for (int c = 0; c < kClassCount; ++c) {
      if (!(queue.listed_in & class_bit(c))) continue;
      const FreeKey* candidate = usable_member(queue, *best_set, c);
      if (candidate != nullptr && (member == nullptr || *candidate < *member)) member = candidate;
    }
    assert(member != nullptr);
    return Choice{queue.id, best_set->id, member->id};
  }

  // Records the credit of an instance already marked in flight. `touched`:
  // the line it left, if it was waiting and the line is not empty now.
  Dispatch take_credit(InstanceId id, Queue& queue, Member& member, Line* touched) {
    unlist_free(member);
    const int slot = member.slots.take();
    member.running.insert(id);
    list_free(member);
    SlotPool& lane = queue.lanes.try_emplace(member.id, queue.config.max_parallel).first->second;
    const int queue_slot = lane.take();
    ++queue.in_flight;

    Instance& instance = instances_.at(id);
    instance.member = member.id;
    instance.slot = slot;
    instance.queue_slot = queue_slot;
    refresh(queue, touched);
    return Dispatch{id, queue.config.name, member.name, slot, queue_slot};
  }

  void give_back_queue_slot(Queue& queue, MemberId member, int queue_slot) {
    auto lane = queue.lanes.find(member);
    assert(lane != queue.lanes.end());
    lane->second.give_back(queue_slot);
    if (lane->second.in_use() == 0) queue.lanes.erase(lane);
  }

  void add_hold(Queue& queue, Member& member, int queue_slot, TimePoint now) {
    const HoldId id = next_hold_id_++;
    const Hold hold{queue.id, member.id, queue_slot, now, now + queue.config.min_delay};
    holds_.emplace(id, hold);
    timers_.insert({hold.until, id});
    queue.holds.insert(id);
    member.holds.insert(id);
  }

  // Frees the held queue slot. The caller refreshes the queue if it stays.
  void drop_hold(HoldId id) {
    auto found = holds_.find(id);
    assert(found != holds_.end());
    const Hold hold = found->second;
    holds_.erase(found);
    timers_.erase({hold.until, id});
    Queue& queue = queues_.at(hold.queue);
    queue.holds.erase(id);
    members_.at(hold.member).holds.erase(id);
    give_back_queue_slot(queue, hold.member, hold.queue_slot);
  }

  QueueStats stats_of(const Queue& queue) const {
    const Counters& n = queue.counters;
    return QueueStats{queue.config.name,
                      state_name(queue.state),
                      window(queue),
                      queue.in_flight,
                      static_cast<std::int64_t>(queue.holds.size()),
                      queue.waiting,
                      alive_in(eligible_classes(queue.config)),
                      n.submitted,
                      n.dispatched,
                      n.adopted,
                      n.finished,
                      n.cancelled,
                      n.timed_out,
                      n.lost,
                      n.cancelled_waiting};
  }

  std::map<std::string, QueueId, std::less<>> queue_ids_;
  std::unordered_map<QueueId, Queue> queues_;
  std::map<std::string, MemberId, std::less<>> member_ids_;
  std::unordered_map<MemberId, Member> members_;  // node-based: FreeKey::name stays valid
  std::unordered_map<InstanceId, Instance> instances_;
  std::unordered_map<HoldId, Hold> holds_;
  std::set<std::pair<TimePoint, HoldId>> timers_;

  std::array<std::int64_t, kClassCount> alive_{};
  // The requirement sets that exist: the empty one, and each one some waiting
  // instance requires. Node-based, so ReqSet pointers stay valid. Each holds
  // the per-class free members and wanting lines for its tags.
  std::unordered_map<ReqSetId, ReqSet> reqsets_;
  std::map<std::vector<std::string>, ReqSetId> reqset_ids_;  // non-empty sets only
  ReqSet* no_requirements_ = nullptr;
  ReqSetId next_reqset_id_ = kNoRequirements + 1;

  QueueId next_queue_id_ = 1;
  MemberId next_member_id_ = 1;
  HoldId next_hold_id_ = 1;
  std::uint64_t next_seq_ = 1;
};

QueueScheduler::QueueScheduler() : impl_(std::make_unique<Impl>()) {}
QueueScheduler::~QueueScheduler() = default;
QueueScheduler::QueueScheduler(QueueScheduler&&) noexcept = default;
QueueScheduler& QueueScheduler::operator=(QueueScheduler&&) noexcept = default;

Status QueueScheduler::add_or_update_queue(QueueConfig config) {
  return impl_->add_or_update_queue(std::move(config));
}
Status QueueScheduler::remove_queue(std::string_view name) { return impl_->remove_queue(name); }
Status QueueScheduler::member_joined(std::string_view name, bool is_master, int slots,
                                     std::vector<std::string> tags) {
  return impl_->member_joined(name, is_master, slots, std::move(tags));
}
Result<std::vector<QueueScheduler::InstanceId>> QueueScheduler::member_gone(std::string_view name) {
  return impl_->member_gone(name);
}
Status QueueScheduler::submit(InstanceId id, std::string_view queue, int priority, bool front,
                              std::vector<std::string> required_tags) {
  return impl_->submit(id, queue, priority, front, std::move(required_tags));
}
Status QueueScheduler::cancel_waiting(InstanceId id) { return impl_->cancel_waiting(id); }
Status QueueScheduler::finished(InstanceId id, TimePoint now, EndReason reason) {
  return impl_->finished(id, now, reason);
}
Result<QueueScheduler::Dispatch> QueueScheduler::adopt(InstanceId id, std::string_view queue,
                                                       std::string_view member) {
  return impl_->adopt(id, queue, member);
}
std::vector<QueueScheduler::Dispatch> QueueScheduler::dispatch(TimePoint now, std::size_t max_count) {
  return impl_->dispatch(now, max_count);
}
std::optional<QueueScheduler::TimePoint> QueueScheduler::next_deadline() const { return impl_->next_deadline(); }
std::optional<QueueScheduler::QueueStats> QueueScheduler::queue_stats(std::string_view name) const {
  return impl_->queue_stats(name);
}
std::vector<QueueScheduler::QueueStats> QueueScheduler::all_queue_stats() const {
  return impl_->all_queue_stats();
}
std::vector<QueueScheduler::MemberStats> QueueScheduler::all_member_stats() const {
  return impl_->all_member_stats();
}
std::optional<QueueScheduler::Dispatch> QueueScheduler::in_flight(InstanceId id) const {
  return impl_->in_flight(id);
}
bool QueueScheduler::is_waiting(InstanceId id) const { return impl_->is_waiting(id); }

}  // namespace zf
