// zforce-master's core: one event loop thread that owns the worker and api
// ROUTER sockets, the member registry, the job table, the instances and the
// waiting line, and publishes every change on the tap. Nothing here is
// touched by another thread; the local worker runs on its own thread and
// talks to this loop only over inproc://.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "common/duration.h"
#include "common/job.h"
#include "common/log.h"
#include "common/protocol.h"
#include "master/event_publisher.h"
#include "master/instance_state.h"
#include "master/member_state.h"
#include "master/file_watcher.h"
#include "master/queue_scheduler.h"
#include "master/security.h"
#include "master/store_writer.h"
#include "master/trigger_scheduler.h"

namespace zf {

using Clock = std::chrono::steady_clock;

struct MasterOptions {
  std::string workers = "tcp://127.0.0.1:7100";
  std::string api = "tcp://127.0.0.1:7101";
  std::string events = "tcp://127.0.0.1:7102";
  std::string data_dir;
  uint32_t local_slots = 1;
  Millis heartbeat{250};
  uint32_t liveness = 4;
  // Attempts an instance gets when its member is lost (1 = never retried).
  uint32_t max_attempts = 3;
  // On SIGTERM: how long to wait for instances in flight to report.
  Millis shutdown_grace{10000};
  bool insecure = false;
  // --keys DIR, loaded (common/curve_keys.h): CURVE on the workers, api and
  // events endpoints and the ZAP handler decides who gets in. nullopt: no
  // keys, NULL mechanism (docs/security.md).
  std::optional<KeyDir> keys;
  int stop_fd = -1;  // readable when the master must stop
  bool store = true;  // false: everything in memory (benchmarks)
  // full: every commit is fsynced (survives power loss); normal: a commit
  // survives the process being killed, the last ones may be lost on power loss.
  bool sync_full = true;
  // After a restart, how long workers have to report the instances they still
  // run before those become lost.
  Millis reconcile_grace{3000};
  Millis keep_history{30LL * 24 * 3600 * 1000};
  // How many ended instances stay in memory besides the store (the oldest
  // are forgotten first and read back from the store when asked for).
  uint64_t keep_ended = 200'000;
};

// A cluster member (a remote worker or the master's local slots).
struct Member {
  std::string id;  // ZeroMQ routing id; equals the name
  std::string name;
  bool local = false;
  zmq::socket_t* socket = nullptr;  // the ROUTER it is reached through
  MemberState state = MemberState::Active;
  uint32_t slots = 0;
  std::vector<std::string> tags;
  std::string version;
  bool reads_batches = false;  // its READY was protocol 1.1 or later: BATCH frames go to it
  std::set<uint64_t> in_flight;
  Clock::time_point last_seen{};
  // When a frame last went to it; for a member without assign_ahead, when a
  // message to it was last queued (it leaves with its turn's commit).
  Clock::time_point last_sent{};
  int64_t joined_us = 0;
  uint64_t finished = 0;
  uint64_t last_assigned = 0;  // dispatch counter at its latest assignment
  // Its ASSIGNs go out in the turn that makes them, ahead of that turn's
  // commit: set once a commit has stored its name among the members a
  // restart waits for (docs/durability.md, "Assignments ahead of the commit").
  bool assign_ahead = false;
};

struct Transition {
  InstanceState state;
  int64_t ts_us;
  uint32_t attempt;
  std::string member;
  std::optional<int32_t> exit_code;
};

// What all instances of one submission share (one `run --count N`, one
// trigger firing): the job as resolved at submission, held once rather than
// once per instance (a million queued instances of one run share one).
struct InstanceSpec {
  std::string job;
  std::string queue;
  int priority = 0;
  std::map<std::string, std::string> params;
  std::vector<proto::StepSpec> steps;
  std::string steps_json;  // the steps, encoded once for the store (empty without one)
  uint64_t timeout_ms = 0;
  RetryPolicy retry;
  std::string retry_json;  // the same, encoded once for the store (empty without one)
  std::vector<std::string> required_tags;  // the job's `requires`: only members with every tag
};

struct Instance {
  uint64_t id = 0;
  std::shared_ptr<const InstanceSpec> spec;
  uint32_t attempt = 1;
  InstanceState state = InstanceState::Queued;
  bool cancel_requested = false;
  bool dirty = false;  // in Master::dirty_ (changed this turn)
  // The store has it only inside its submission's row (Master::rowless_),
  // not in a row of its own: its next write inserts the row, its whole
  // history included. (A flag, not the submission's id: it fits in padding,
  // and a million queued instances would pay 8 bytes each.)
  bool rowless = false;
  int slot = -1;
  int32_t exit_code = 0;
  int32_t failed_step = -1;
  uint64_t duration_ms = 0;
  std::string member;
  std::string error;
  std::string output;
  std::optional<Clock::time_point> retry_at;  // queued, waiting out its backoff
  std::vector<Transition> history;
  size_t persisted_transitions = 0;  // history entries already in the store
  // While its progress write is deferred (Master::end_turn): since when, and
  // the number of its oldest event the store does not back yet (the tap
  // holds that event and every later one until the write is submitted).
  Clock::time_point deferred_since{};
  uint64_t unstored_event = 0;
};

// A client waiting (api op `wait`) for instances to end.
struct Waiter {
  std::string client;
  uint64_t req = 0;
  std::vector<uint64_t> ids;
  size_t remaining = 0;
  bool summary = false;  // answer with counts by state, not one summary per instance
  Clock::time_point deadline;
};

struct Counters {
  uint64_t malformed_workers = 0;
  uint64_t malformed_api = 0;
  uint64_t refused_version = 0;
  uint64_t unexpected_messages = 0;
  uint64_t late_results = 0;
  uint64_t api_requests = 0;
  uint64_t dispatched = 0;
  uint64_t trigger_fired = 0;
  uint64_t trigger_failed = 0;
  uint64_t permission_denied = 0;  // api calls refused for the caller's role
  uint64_t security_dropped = 0;   // worker messages from keys not (or no longer) admitted
  uint64_t refused_queue_full = 0;  // submissions and firings refused by max_queued
};

class Master {
 public:
  explicit Master(MasterOptions options);
  ~Master();

  // Binds, starts the local worker, and runs the loop until stopped. 0 = clean stop.
  int run();

 private:
  // --- loop
  Status bind_all();
  Status write_endpoints_file();
  void start_local_worker();
  void stop_local_worker();
  void drain_worker_socket(zmq::socket_t& s, bool local);
  int worker_messages_ = 0;  // handled by the current drain_worker_socket call
  // Up to when each workers socket (remote, local) has been read: to the
  // end, or a full round of its peers (drain_worker_socket). A member is
  // silent only if nothing came from it before that moment. A turn reads a
  // bounded share of what waits, and under load (a burst under a sanitizer)
  // frames a member sent in time waited unread longer than its liveness
  // window and it was declared lost while it was talking.
  Clock::time_point workers_read_up_to_{}, local_read_up_to_{};
  Clock::time_point& read_up_to(bool local) { return local ? local_read_up_to_ : workers_read_up_to_; }
  // One frame from a member (or one message of its BATCH): decoded, counted
  // if bad, handled if good.
  void handle_worker_frame(zmq::socket_t& s, bool local, const std::string& id, const void* data, size_t size,
                           bool in_batch, Clock::time_point now);
  void drain_api_socket();
  void on_timer(Clock::time_point now);
  Clock::time_point next_wakeup(Clock::time_point now) const;
  void shut_down();

  // --- members
  void on_worker_message(zmq::socket_t& s, bool local, const std::string& id, uint32_t minor, proto::Message& m,
                         Clock::time_point now);
  void on_ready(zmq::socket_t& s, bool local, const std::string& id, uint32_t minor, proto::Ready& r,
                Clock::time_point now);
  void member_event(Member& m, MemberEvent e);
  void release_member_instances(Member& m);
  template <class T>
  bool send_to(Member& m, const T& msg) {
    return send_bytes_to(m, proto::encode(msg));
  }
  bool send_bytes_to(Member& m, std::string bytes);

  void refuse(zmq::socket_t& s, const std::string& id, const std::string& reason);
  // --- security (docs/security.md; the end of master.cc and master/security.*)
  void on_security_events();
  // Keyed mode: false if a frame on the workers endpoint must be dropped
  // because its sender's key is not (or no longer) admitted under that name.
  bool admit_worker_frame(zmq::socket_t& s, const std::string& id, const zmq::message_t& body,
                          Clock::time_point now);
  // Drops a member whose key was revoked: REFUSED, and its instances are lost.
  void drop_removed_member(Member& m, const std::string& reason);

  // --- instances
  // The spec of a new submission of `job` with these resolved params and steps.
  std::shared_ptr<const InstanceSpec> make_spec(const Job& job, std::map<std::string, std::string> params,
                                                std::vector<proto::StepSpec> steps) const;
  // With `in_submission`, the instance is stored as part of the row of the
  // submission being created (create_instances), created at created_us: it
  // is not written on its own now.
  uint64_t create_instance(const std::shared_ptr<const InstanceSpec>& spec, bool in_submission = false,
                           int64_t created_us = 0);
  // Creates `count` instances of `spec`, stored as one submission row when
  // there are several and a store; returns the first id.
  uint64_t create_instances(const std::shared_ptr<const InstanceSpec>& spec, uint64_t count);
  // Publishes the instance's new state as instance.<state> on the tap.
  void publish_transition(const Instance& inst, std::optional<int32_t> exit_code);
  void transition(Instance& inst, InstanceEvent e, std::optional<int32_t> exit_code = std::nullopt);
  void on_started(Member& m, const proto::Started& s);
  void on_finished(Member& m, const proto::Finished& f);
  void end_in_flight(Instance& inst, QueueScheduler::EndReason why);
  void lose(Instance& inst);
  // After an attempt ended as `outcome`: a new attempt if the policy allows
  // (true), otherwise the end is final and waiters are told (false).
  bool retry_or_finish(Instance& inst, InstanceState outcome);
  void release_due_retries(Clock::time_point now);
  void begin_shutdown(Clock::time_point now);
  // --- durability (see docs/durability.md)
  Status restore();
  void mark_dirty(Instance& inst) {
    if (inst.dirty) return;
    inst.dirty = true;
    dirty_.push_back(inst.id);
  }
  // Commits what this loop turn changed, then lets its replies, messages and
  // events go out. A master that cannot commit stops (exit 1): it must not
  // answer what it could not store.
  void end_turn();
  // Whether the batch (with the turn's ops_) writes anything besides the event number.
  bool writes(const StoreWriter::Batch& batch) const;
  // Whether an assigned or running instance's progress may wait for its next
  // change (end_turn): the store's older state must be one a restart
  // reconciles with its member.
  bool may_defer_progress(const Instance& inst) const;
  // Why `adding` more instances may not wait in `queue` (max_queued), or none.
  std::optional<std::string> queue_full(const std::string& queue, uint64_t adding) const;
  // Sends what committed turns held back (writer fd readable); a failed
  // commit stops the master.
  void take_commits();
  // Shutdown: waits for every submitted turn and sends what it held.
  void finish_commits();
  // Queues a write for this turn (all of a turn's writes commit together).
  void write(StoreWriter::Op op) {
    if (writer_) ops_.push_back(std::move(op));
  }
  void expire_unconfirmed(Clock::time_point now);
  // --- assignments sent ahead of their commit (docs/durability.md)
  // Sends this turn's ASSIGNs and heartbeats to members with assign_ahead now.
  void send_ahead();
  // Writes ahead_members_ to the store (meta "assign_ahead_members").
  void store_ahead_members();
  // Their READY turn is committed: members still present get assign_ahead.
  void allow_assign_ahead(const std::vector<std::string>& names);
  // After a crash, a member that was sent ASSIGNs ahead reports `inst`
  // running at the attempt the store has queued: it is that member's again.
  bool adopt_assigned_ahead(Instance& inst, Member& m);
  void prune(Clock::time_point now);
  // --- triggers
  void fire_due_triggers();
  void take_file_events();
  void fire(const std::string& job, size_t trigger, const std::map<std::string, std::string>& params,
            const std::string& what);
  void apply_job_triggers(const Job& job);
  void forget_job_triggers(const std::string& job);
  size_t in_flight_total() const;
  // The ids of every assigned and running instance, and maybe of a few that
  // have ended since, in ascending order: each is in its member's in_flight or, after a restart
  // until its member reports, in unconfirmed_. Listing them walks these,
  // not the million queued instances_ may hold.
  std::vector<uint64_t> in_flight_ids() const;
  void dispatch();
  void notify_waiters(const Instance& inst);

  // --- api (master/api.cc)
  nlohmann::json handle_api(const std::string& client, const proto::ApiRequest& req, bool& deferred);
  nlohmann::json api_job_put(const nlohmann::json& args);
  nlohmann::json api_job_list(const nlohmann::json& args);
  nlohmann::json api_job_show(const nlohmann::json& args);
  nlohmann::json api_job_rm(const nlohmann::json& args);
  nlohmann::json api_run(const std::string& client, uint64_t req, const nlohmann::json& args, bool& deferred);
  // Creates up to kRunsPerTurn instances of the pending runs, answering each
  // run whose last instance was created (after the turn commits).
  void continue_runs();
  uint64_t pending_in_queue(const std::string& queue) const;
  nlohmann::json api_instances(const nlohmann::json& args);
  nlohmann::json api_instance_show(const nlohmann::json& args);
  nlohmann::json api_cancel(const nlohmann::json& args);
  nlohmann::json api_workers(const nlohmann::json& args);
  nlohmann::json api_worker_drain(const nlohmann::json& args);
  nlohmann::json api_job_enable(const nlohmann::json& args, bool enable);
  nlohmann::json api_stats(const nlohmann::json& args);
  nlohmann::json api_workers_pending(const nlohmann::json& args);
  nlohmann::json api_worker_approve(const nlohmann::json& args);
  nlohmann::json api_worker_remove(const nlohmann::json& args);
  // Keyed mode: the error for a caller whose role may not call `op`.
  std::optional<std::string> api_denied(const zmq::message_t& body, const std::string& op);
  nlohmann::json api_ping(const nlohmann::json& args);
  nlohmann::json api_queue_put(const nlohmann::json& args);
  nlohmann::json api_queue_list(const nlohmann::json& args);
  nlohmann::json api_queue_show(const nlohmann::json& args);
  nlohmann::json api_queue_rm(const nlohmann::json& args);
  nlohmann::json queue_json(const QueueConfig& q) const;
  void publish_queue_updated(const std::string& name, const std::string& what);
  bool api_wait(const std::string& client, uint64_t req, const nlohmann::json& args, nlohmann::json& out);
  void reply(const std::string& client, uint64_t req, bool ok, const std::string& error, nlohmann::json result);
  nlohmann::json instance_summary(const Instance& inst) const;
  // The answer to a `wait` whose instances have all ended.
  nlohmann::json wait_result(const Waiter& w) const;

  MasterOptions opt_;
  zmq::context_t ctx_;
  std::unique_ptr<zmq::socket_t> workers_;
  std::unique_ptr<zmq::socket_t> local_;
  std::unique_ptr<zmq::socket_t> api_;
  std::unique_ptr<EventPublisher> events_;
  std::thread local_thread_;
  int local_stop_fd_ = -1;
  int lock_fd_ = -1;

  std::map<std::string, Member> members_;
  std::map<std::string, Job> jobs_;
  // By id. A hash map, not an ordered one: every message and dispatch looks
  // instances up, and with 1,000,000 queued a tree walk of ~20 cache misses
  // per lookup slowed dispatch by a third.
  std::unordered_map<uint64_t, Instance> instances_;
  // How many of instances_ are in each state, kept at every change
  // (count_in, count_out, transition): `stats` answers from it, where a
  // walk of 1,000,000 waiting held the loop for 50-70 ms.
  std::array<uint64_t, kInstanceStates> state_counts_{};
  void count_in(InstanceState s) { ++state_counts_[static_cast<size_t>(s)]; }
  void count_out(InstanceState s) { --state_counts_[static_cast<size_t>(s)]; }
  // ZFORCE_TEST_CHECK_COUNTS (tests only): `stats` also walks instances_
  // and fails if the kept counts differ.
  bool check_counts_ = false;
  // Ended instances stay in memory only for a while: the store has them
  // (instance show, listings and wait read them from it), and a master
  // that kept every one made each later instance slower (a bigger hash map)
  // and grew by ~500 bytes per instance run (300,000-instance bench runs:
  // 18 -> 25 us of master CPU per instance, 190 -> 500 MB). ended_kept_
  // holds the ids of ended instances whose end is committed, oldest first;
  // beyond opt_.keep_ended the oldest are forgotten (forget_ended), except those
  // a `wait` still refers to (pinned_). Without a store nothing is forgotten.
  std::vector<uint64_t> ended_turn_;  // ended in this turn, not submitted yet
  std::deque<uint64_t> ended_kept_;
  std::unordered_map<uint64_t, uint32_t> pinned_;  // id -> waiters that name it
  void forget_ended();
  // An instance from its stored record; its requirements come from its job
  // as it is now (they are not stored per instance).
  Result<Instance> instance_from_record(const InstanceRecord& rec,
                                        const std::shared_ptr<const InstanceSpec>& previous) const;
  // An ended instance no longer in memory, read back from the store (and
  // kept again for a while); null if the store does not have it.
  Instance* page_in(uint64_t id);
  // Removes a waiter (answered or timed out) and what refers to it.
  void drop_waiter(std::list<Waiter>::iterator w);
  // Every queue the scheduler knows: shared ones (queue put, and "default")
  // and jobs' own ("job:NAME").
  std::map<std::string, QueueConfig> queues_;
  QueueScheduler sched_;
  uint64_t next_instance_id_ = 1;
  std::multimap<Clock::time_point, uint64_t> retries_;  // backoff timers
  // The loop's own connection, for restore and reads (api listings); every
  // write goes through writer_, which owns a second connection and a thread.
  std::unique_ptr<class Store> store_;
  std::unique_ptr<StoreWriter> writer_;
  std::vector<StoreWriter::Op> ops_;  // this turn's writes, submitted by end_turn
  std::vector<uint64_t> dirty_;  // instances changed in this loop turn (each once: Instance::dirty)
  // Instances whose assigned/running progress is not written yet, with the
  // time each is written at the latest (kProgressDeferral after it was
  // deferred), oldest first; entries of instances written since are dropped
  // when they reach the front. And the oldest unstored event of each (the
  // tap's barrier), ordered.
  std::deque<std::pair<Clock::time_point, uint64_t>> deferred_;
  std::set<std::pair<uint64_t, uint64_t>> unstored_events_;  // (event number, instance)
  static bool is_deferred(const Instance& inst) { return inst.deferred_since != Clock::time_point{}; }
  // The instance of a deferred_ entry, if that entry is its current one
  // (not written since, nor deferred again with a later deadline).
  Instance* still_deferred(const std::pair<Clock::time_point, uint64_t>& entry);
  // Per stored submission (first id): how many of its instances have no row
  // of their own yet. The row is removed with the write of the last. Ordered:
  // an instance's submission is the last one starting at or below its id.
  std::map<uint64_t, uint64_t> rowless_;
  std::optional<Clock::time_point> deferred_until_;
  static constexpr auto kProgressDeferral = std::chrono::milliseconds(20);
  bool finishing_ = false;  // finish_commits: write everything now
  // Messages to members and clients, sent after the turn is committed.
  struct Outgoing {
    zmq::socket_t* socket;
    std::string peer;
    std::string bytes;
    std::string member;  // non-empty: a member, lost if the send fails
    // An ASSIGN: the attempt it starts. It is not sent if, by the time it
    // leaves (its turn committed, or at once for a member with
    // assign_ahead), that attempt has ended meanwhile (a worker that
    // re-registered): a stale ASSIGN would start a copy.
    uint64_t assign_instance = 0;
    uint32_t assign_attempt = 0;
    bool batchable = false;  // a member that reads BATCH: goes out with its other messages in one frame
    bool ack = false;        // a FINISHED_ACK: may wait for the member's next frame (held_acks_)
    bool ahead = false;      // an ASSIGN or a HEARTBEAT: may leave before its turn's commit (send_ahead)
  };
  std::vector<Outgoing> outbox_;
  // Committed FINISHED_ACKs to members that read BATCH, held until something
  // else goes to the member (they ride in its frame) or kAckHold has passed:
  // a frame per acknowledgement was a third of the frames the master sends
  // to 1,000 one-slot workers, and a late acknowledgement costs nothing (the
  // worker keeps the result a little longer). Not held for a draining member,
  // whose drain waits for them. held_order_: by deadline, oldest first (stale
  // names are skipped).
  struct HeldAcks {
    Clock::time_point deadline;
    std::vector<std::string> bytes;
  };
  std::unordered_map<std::string, HeldAcks> held_acks_;
  std::deque<std::pair<Clock::time_point, std::string>> held_order_;
  static constexpr auto kAckHold = std::chrono::milliseconds(100);
  // Sends the held acknowledgements whose time has come (all of them: `all`).
  void flush_held_acks(Clock::time_point now, bool all = false);
  // Results acknowledged in this turn, by member name: end_turn sends them
  // as one FINISHED_ACK per member (a member gone meanwhile gets none; it
  // sends its results again when it comes back).
  std::map<std::string, proto::FinishedAck> acks_;
  void queue_ack(const Member& m, uint64_t instance, uint32_t attempt);
  void send_acks();
  // Sends; members found unreachable are dropped (writes of the current turn).
  void send_outgoing(std::vector<Outgoing>& out);
  // A frame went to the member (its last_sent).
  void sent_to(const std::string& member, Clock::time_point now);
  // Whether an ASSIGN held since its turn still starts the current attempt.
  bool assign_still_current(const Outgoing& o) const;
  // Turns submitted to the writer and not yet reported committed, oldest
  // first, with what each holds back: its messages and its number of events.
  struct InCommit {
    uint64_t batch;
    std::vector<Outgoing> outbox;
    size_t events;
    std::vector<uint64_t> ended;  // instances whose end this turn writes
    std::vector<std::string> ahead;  // members that may get ASSIGNs ahead once this is committed
  };
  std::deque<InCommit> in_commit_;
  size_t events_in_commit_ = 0;  // sum of in_commit_[*].events
  std::shared_ptr<std::atomic<uint64_t>> last_prune_removed_ = std::make_shared<std::atomic<uint64_t>>(0);
  // After a restart: instances the store says were assigned or running, by
  // id -> member, until their member reports them or the grace ends.
  std::map<uint64_t, std::string> unconfirmed_;
  std::optional<Clock::time_point> reconcile_deadline_;
  // Members that may have been sent ASSIGNs the store does not know yet, as
  // the store lists them (ahead_members_), the members whose READY this turn
  // makes eligible once committed (ahead_turn_), and, after a restart, the
  // listed members not back yet: nothing is dispatched until they all
  // reported what they run, or the reconcile grace ends (awaited_ahead_).
  std::set<std::string> ahead_members_;
  std::vector<std::string> ahead_turn_;
  std::set<std::string> awaited_ahead_;
  Clock::time_point next_prune_{};
  Clock::time_point member_deadline_{};  // on_timer sweeps the members from then
  uint64_t stored_next_id_ = 0, stored_event_seq_ = 0;  // last values written to the store
  std::map<std::string, std::pair<std::string, std::string>> queue_sources_;  // name -> (source, text)
  TriggerScheduler triggers_;
  std::unique_ptr<FileWatcher> watcher_;
  std::set<std::string> disabled_jobs_;
  // A `run` of more instances than one loop turn creates: a slice per turn,
  // so heartbeats, results and other requests keep flowing during a
  // 100,000-instance submission (one turn for all of it took over a second
  // under load, and workers declared the master silent). Runs are taken in
  // the order they came: while one is pending, later runs wait behind it.
  struct PendingRun {
    std::string client;
    uint64_t req = 0;
    std::shared_ptr<const InstanceSpec> spec;
    uint64_t remaining = 0;
    nlohmann::json ids = nlohmann::json::array();
  };
  static constexpr uint64_t kRunsPerTurn = 5000;
  std::deque<PendingRun> pending_runs_;
  std::list<Waiter> waiters_;
  std::unordered_multimap<uint64_t, std::list<Waiter>::iterator> waiters_by_instance_;
  Counters counters_;
  log::RateLimit bad_traffic_log_{10, std::chrono::seconds(10)};
  bool dispatch_needed_ = false;
  bool fatal_ = false;  // the store failed: stop without answering
  std::optional<Clock::time_point> shutdown_deadline_;  // set on the first SIGTERM
  std::unique_ptr<MasterSecurity> security_;  // created in bind_all, before any bind
};

}  // namespace zf
