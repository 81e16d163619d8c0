#include "master/master.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_set>

#include "common/job_loader.h"
#include "common/zmq_util.h"
#include "master/persistence.h"
#include "master/store.h"
#include "worker/worker.h"

namespace zf {

namespace {
const char* kLocalEndpoint = "inproc://zforce-local-slots";
const char* kLocalName = "master";
// Messages from members one loop turn handles, at most (the frame that
// crosses the limit is finished). With BATCH frames one turn could take every
// result in flight; the loop, the store writer and the workers then worked on
// the whole crowd one after the other (a convoy) instead of on different
// parts at once. Smaller turns, and store groups of bounded size
// (StoreWriter), keep them overlapping: 2 x 256 noop slots, 36k -> 49k/s with
// the store, 70k -> 87k/s without (docs/performance.md).
constexpr int kWorkerMessagesPerTurn = 256;

std::string ms_string(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}
}  // namespace

Master::Master(MasterOptions options) : opt_(std::move(options)), ctx_(1) {
  // The queue of jobs that name none: only the members' slots limit it.
  QueueConfig def;
  def.name = std::string(kDefaultQueue);
  def.max_parallel = 100000;
  queues_[def.name] = def;
  auto s = sched_.add_or_update_queue(def);
  (void)s;  // a constant, valid configuration
  check_counts_ = std::getenv("ZFORCE_TEST_CHECK_COUNTS") != nullptr;
}

Master::~Master() {
  stop_local_worker();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Status Master::bind_all() {
  std::error_code ec;
  std::filesystem::create_directories(opt_.data_dir, ec);
  if (ec) return make_error("cannot create data folder '" + opt_.data_dir + "': " + ec.message());
  std::string lock_path = opt_.data_dir + "/master.lock";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) return make_error("cannot open " + lock_path + ": " + std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0)
    return make_error("another master is using the data folder '" + opt_.data_dir + "' (" + lock_path + " is locked)");

  // The ZAP handler must be bound before any CURVE socket of ctx_: CURVE
  // without a handler admits anyone who knows master.pub.
  auto security = MasterSecurity::create(ctx_, opt_.keys);
  if (!security) return security.error();
  security_ = std::move(*security);
  try {
    // `domain` empty: no CURVE (the inproc local slots have no handshake).
    auto router = [&](const std::string& ep, std::string_view domain) {
      auto s = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::router);
      // Without MANDATORY a message to a vanished peer disappears silently;
      // with it we learn at once and can treat the member as lost.
      s->set(zmq::sockopt::router_mandatory, 1);
      s->set(zmq::sockopt::maxmsgsize, proto::kMaxMessageBytes);
      s->set(zmq::sockopt::linger, 0);
      s->set(zmq::sockopt::sndhwm, 100'000);
      s->set(zmq::sockopt::rcvhwm, 100'000);
      if (!domain.empty()) security_->secure_server(*s, domain);
      s->bind(ep);
      return s;
    };
    workers_ = router(opt_.workers, kZapDomainWorkers);
    // A worker that reconnects under its name takes over its old routing id.
    workers_->set(zmq::sockopt::router_handover, 1);
    api_ = router(opt_.api, kZapDomainApi);
    events_ = std::make_unique<EventPublisher>(
        ctx_, opt_.events, [&](zmq::socket_t& s) { security_->secure_server(s, kZapDomainEvents); });
    if (opt_.local_slots > 0) {
      local_ = router(kLocalEndpoint, "");
      local_->set(zmq::sockopt::router_handover, 1);
    }
  } catch (const zmq::error_t& e) {
    return make_error(std::string("cannot bind: ") + e.what());
  }
  return write_endpoints_file();
}

Status Master::write_endpoints_file() {
  nlohmann::json j = {{"workers", last_endpoint(*workers_)},
                      {"api", last_endpoint(*api_)},
                      {"events", events_->endpoint()},
                      {"pid", ::getpid()}};
  std::string path = opt_.data_dir + "/endpoints.json";
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump() << "\n";
    if (!out) return make_error("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return make_error("cannot rename " + tmp + ": " + std::strerror(errno));
  log::info("listening: workers " + j["workers"].get<std::string>() + ", api " + j["api"].get<std::string>() +
            ", events " + j["events"].get<std::string>());
  return {};
}

void Master::start_local_worker() {
  if (opt_.local_slots == 0) return;
  local_stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  WorkerOptions w;
  w.master = kLocalEndpoint;
  w.name = kLocalName;
  w.slots = opt_.local_slots;
  w.stop_fd = local_stop_fd_;
  w.heartbeat = opt_.heartbeat;
  w.liveness = opt_.liveness;
  local_thread_ = std::thread([this, w]() {
    Worker worker(ctx_, w);
    worker.run();
  });
}

void Master::stop_local_worker() {
  if (!local_thread_.joinable()) return;
  uint64_t one = 1;
  ssize_t n = ::write(local_stop_fd_, &one, sizeof one);
  (void)n;
  local_thread_.join();
  ::close(local_stop_fd_);
  local_stop_fd_ = -1;
}

// ---- members -----------------------------------------------------------------

// Held in the outbox until the turn is committed (end_turn): a member must
// never drop a result, nor hear of a change, that the store does not know.
// ASSIGNs and heartbeats may leave earlier (send_ahead),
// and committed FINISHED_ACKs may leave later (held_acks_).
bool Master::send_bytes_to(Member& m, std::string bytes) {
  outbox_.push_back({m.socket, m.id, std::move(bytes), m.name, 0, 0, m.reads_batches});
  // A member with assign_ahead hears from us when the frame leaves
  // (send_outgoing), which may be long after a slow commit.
  if (!m.assign_ahead) m.last_sent = Clock::now();
  return true;
}

std::shared_ptr<const InstanceSpec> Master::make_spec(const Job& job, std::map<std::string, std::string> params,
                                                     std::vector<proto::StepSpec> steps) const {
  auto spec = std::make_shared<InstanceSpec>();
  spec->job = job.name;
  spec->queue = queue_of(job);
  spec->priority = job.priority;
  spec->params = std::move(params);
  spec->steps = std::move(steps);
  spec->timeout_ms = job.timeout ? static_cast<uint64_t>(job.timeout->count()) : 0;
  spec->retry = job.retry;
  if (store_) {
    spec->steps_json = steps_to_json(spec->steps);
    spec->retry_json = retry_to_json(spec->retry);
  }
  spec->required_tags = job.requires_tags;
  return spec;
}

void Master::queue_ack(const Member& m, uint64_t instance, uint32_t attempt) {
  auto [it, first] = acks_.try_emplace(m.name);
  if (first) {
    it->second.instance = instance;
    it->second.attempt = attempt;
  } else {
    it->second.more.push_back({instance, attempt});
  }
}

void Master::send_acks() {
  for (auto& [name, ack] : acks_) {
    auto it = members_.find(name);
    if (it == members_.end()) continue;
    Member& m = it->second;
    // Not send_to: a held acknowledgement must not count as a sign of life
    // to the member (last_sent), or its heartbeat could come late.
    outbox_.push_back({m.socket, m.id, proto::encode(ack), m.name, 0, 0, m.reads_batches, true});
  }
  acks_.clear();
}

void Master::flush_held_acks(Clock::time_point now, bool all) {
  std::vector<Outgoing> out;
  while (!held_order_.empty() && (all || held_order_.front().first <= now)) {
    auto [deadline, name] = std::move(held_order_.front());
    held_order_.pop_front();
    auto it = held_acks_.find(name);
    if (it == held_acks_.end() || it->second.deadline != deadline) continue;  // went with another frame
    auto m = members_.find(name);
    if (m != members_.end() && is_present(m->second.state)) {
      // To its connection of now (a member that registered again meanwhile).
      for (auto& b : it->second.bytes) out.push_back({m->second.socket, m->second.id, std::move(b), name, 0, 0, true});
    }
    held_acks_.erase(it);
  }
  if (!out.empty()) send_outgoing(out);
}

bool Master::may_defer_progress(const Instance& inst) const {
  if (inst.state == InstanceState::Running) return true;  // the store has it assigned: reconciled as such
  // The store has it queued: safe only where a restart waits for the member
  // (assign_ahead); otherwise its ASSIGN waits for this write.
  auto it = members_.find(inst.member);
  return inst.state == InstanceState::Assigned && it != members_.end() && it->second.assign_ahead;
}

Instance* Master::still_deferred(const std::pair<Clock::time_point, uint64_t>& entry) {
  auto it = instances_.find(entry.second);
  if (it == instances_.end() || !is_deferred(it->second)) return nullptr;
  return it->second.deferred_since + kProgressDeferral == entry.first ? &it->second : nullptr;
}

bool Master::writes(const StoreWriter::Batch& batch) const {
  return !ops_.empty() || !batch.instances.empty() || batch.next_instance_id;
}

void Master::end_turn() {
  send_acks();
  if (writer_) send_ahead();
  StoreWriter::Batch batch;
  const auto now = Clock::now();
  // Progress (assigned, running) is written with the instance's next change,
  // or kProgressDeferral after it was first deferred: a noop's result usually
  // comes first, and one row write then carries all three
  // (docs/durability.md). A deadline per instance: one for all wrote every
  // instance deferred at that moment, most of them a millisecond before
  // their end (0.19 progress writes per noop instance under a steady
  // stream, 0.015 now).
  // Deferred progress that came due (all of it when finishing) joins this
  // turn's changes. Only those: a deferred instance that changes again is
  // marked dirty like any other, so a turn never walks every deferred one.
  while (writer_ && !deferred_.empty() && (finishing_ || deferred_.front().first <= now)) {
    if (Instance* inst = still_deferred(deferred_.front())) mark_dirty(*inst);
    deferred_.pop_front();
  }
  if (writer_ && !dirty_.empty()) {
    batch.instances.reserve(dirty_.size());
    for (uint64_t id : dirty_) {
      auto it = instances_.find(id);
      if (it == instances_.end()) continue;
      Instance& inst = it->second;
      inst.dirty = false;
      // Assigned and running change only a few columns of a row already stored.
      bool progress_only = inst.persisted_transitions > 0 && !inst.cancel_requested &&
                           (inst.state == InstanceState::Assigned || inst.state == InstanceState::Running);
      if (progress_only && !finishing_ && may_defer_progress(inst)) {
        if (!is_deferred(inst)) {
          inst.deferred_since = now;
          deferred_.emplace_back(now + kProgressDeferral, id);
        }
        if (now < inst.deferred_since + kProgressDeferral) {
          // Once set, unstored_event stays until the write: the same key each time.
          if (inst.unstored_event) unstored_events_.insert({inst.unstored_event, id});
          continue;
        }
      }
      if (is_deferred(inst)) {
        unstored_events_.erase({inst.unstored_event, id});
        inst.deferred_since = {};
      }
      inst.unstored_event = 0;
      InstanceChange& c = batch.instances.emplace_back();
      if (inst.persisted_transitions == 0 || inst.rowless) {
        c.kind = InstanceChange::Kind::Insert;  // a new row needs everything
        c.rec = to_record(inst);
        if (inst.rowless) {
          inst.rowless = false;
          inst.persisted_transitions = 0;  // the row gets the whole history
          // Its submission: the last one starting at or below its id.
          if (auto after = rowless_.upper_bound(id); after != rowless_.begin()) {
            auto sub = std::prev(after);
            if (--sub->second == 0) {
              // In the same transaction as this row: no instance of it is
              // ever without a row and a submission.
              write([first = sub->first](Store& st) { return st.remove_submission(first); });
              rowless_.erase(sub);
            }
          }
        }
      } else if (progress_only) {
        c.kind = InstanceChange::Kind::Progress;
        c.rec.id = id;
        c.rec.state = inst.state;
        c.rec.attempt = inst.attempt;
        c.rec.member = inst.member;
        c.rec.slot = inst.slot;
        c.rec.updated_us = inst.history.back().ts_us;
      } else {
        c.kind = InstanceChange::Kind::Update;  // afterwards only what can change
        c.rec = to_update_record(inst);
      }
      c.added.reserve(inst.history.size() - inst.persisted_transitions);
      for (size_t k = inst.persisted_transitions; k < inst.history.size(); ++k) {
        const auto& t = inst.history[k];
        c.added.push_back({static_cast<uint32_t>(k), t.state, t.ts_us, t.attempt, t.member, t.exit_code});
      }
      inst.persisted_transitions = inst.history.size();
    }
  }
  dirty_.clear();
  // The next deadline: the oldest entry of an instance still deferred (the
  // entries of instances written since, or deferred again, are dropped).
  deferred_until_.reset();
  while (!deferred_.empty() && !still_deferred(deferred_.front())) deferred_.pop_front();
  if (!deferred_.empty()) deferred_until_ = deferred_.front().first;
  // The tap may let out only events the store backs: those numbered below
  // the oldest unstored event of an instance still deferred.
  const uint64_t event_barrier =
      unstored_events_.empty() ? std::numeric_limits<uint64_t>::max() : unstored_events_.begin()->first;
  if (writer_) {
    // Only what changed: an idle loop turn must not cost a disk write.
    if (next_instance_id_ != stored_next_id_) batch.next_instance_id = stored_next_id_ = next_instance_id_;
  }
  // The tap says only what is stored: an event about a change still
  // deferred, and every event after it, waits for the batch that writes that
  // change (attributed to no turn until then; they go out in order).
  const size_t ready = events_->held_before(event_barrier);
  size_t events = ready > events_in_commit_ ? ready - events_in_commit_ : 0;
  // The last event number must be stored before its event goes out. Events
  // held behind a deferred change wait for the batch that writes it, and so
  // can their number: a turn whose only news is such an event (a STARTED
  // whose running is deferred) costs no commit.
  if (writer_ && events_->last_seq() != stored_event_seq_ && (deferred_.empty() || writes(batch) || events > 0))
    batch.last_event_seq = stored_event_seq_ = events_->last_seq();
  if (writes(batch) || batch.last_event_seq) {
    batch.ops = std::exchange(ops_, {});
    uint64_t n = writer_->submit(std::move(batch));
    in_commit_.push_back(
        {n, std::exchange(outbox_, {}), events, std::exchange(ended_turn_, {}), std::exchange(ahead_turn_, {})});
    events_in_commit_ += events;
    return;
  }
  if (!in_commit_.empty()) {
    // Nothing written, but an earlier turn is still being committed: what this
    // turn sends goes after it, so no peer sees messages out of order.
    auto& last = in_commit_.back();
    for (auto& o : outbox_) last.outbox.push_back(std::move(o));
    outbox_.clear();
    last.ended.insert(last.ended.end(), ended_turn_.begin(), ended_turn_.end());
    ended_turn_.clear();
    last.ahead.insert(last.ahead.end(), ahead_turn_.begin(), ahead_turn_.end());
    ahead_turn_.clear();
    last.events += events;
    events_in_commit_ += events;
    return;
  }
  events_->flush(events);
  send_outgoing(outbox_);
  allow_assign_ahead(std::exchange(ahead_turn_, {}));
}

// An ASSIGN need not wait for its turn's commit: nothing is lost if the
// master dies before that commit, because the store still has the instance
// queued and the restart waits for the members listed in ahead_members_ to
// report what they run before it dispatches anything (adopt_assigned_ahead).
// Nor need a HEARTBEAT, which states nothing: behind a backlog of slow
// commits (a burst under a sanitizer) a member heard nothing for longer than
// its liveness window and took the master for dead.
// What does wait: the tap's events, answers, acknowledgements, CANCELs and
// everything to a member whose admission is not committed yet (its WELCOME
// goes first). Without this each slot waited for a commit per instance, and
// the store cost ~40% of the noop rate (docs/performance.md, session 6).
void Master::send_ahead() {
  std::vector<Outgoing> ahead;
  size_t kept = 0;
  for (auto& o : outbox_) {
    bool go = false;
    if (o.ahead) {
      auto it = members_.find(o.member);
      go = it != members_.end() && it->second.assign_ahead;
    }
    if (go) ahead.push_back(std::move(o));
    else if (&outbox_[kept++] != &o) outbox_[kept - 1] = std::move(o);
  }
  outbox_.resize(kept);
  if (!ahead.empty()) send_outgoing(ahead);
}

void Master::allow_assign_ahead(const std::vector<std::string>& names) {
  for (const auto& name : names) {
    auto it = members_.find(name);
    if (it != members_.end() && is_present(it->second.state) && ahead_members_.count(name))
      it->second.assign_ahead = true;
  }
}

void Master::store_ahead_members() {
  std::string list;
  for (const auto& name : ahead_members_) list += name + "\n";
  write([list](Store& st) { return st.set_meta(kMetaAssignAheadMembers, list); });
}

bool Master::adopt_assigned_ahead(Instance& inst, Member& m) {
  if (inst.retry_at) {
    auto [b, e] = retries_.equal_range(*inst.retry_at);
    for (auto it = b; it != e; ++it)
      if (it->second == inst.id) {
        retries_.erase(it);
        break;
      }
    inst.retry_at.reset();
  } else if (auto s = sched_.cancel_waiting(inst.id); !s.ok()) {
    log::error("instance " + std::to_string(inst.id) + " cannot be taken back from its queue: " + s.error().message);
    return false;
  }
  auto d = sched_.adopt(inst.id, inst.spec->queue, m.name);
  if (!d.ok()) {
    log::error("instance " + std::to_string(inst.id) + " cannot be taken back: " + d.error().message);
    if (auto s = sched_.submit(inst.id, inst.spec->queue, inst.spec->priority, true, inst.spec->required_tags); !s.ok())
      log::error("instance " + std::to_string(inst.id) + " cannot be re-queued: " + s.error().message);
    return false;
  }
  inst.member = m.name;
  inst.slot = d->slot;
  m.in_flight.insert(inst.id);
  transition(inst, InstanceEvent::Dispatch);
  log::info("instance " + std::to_string(inst.id) + " attempt " + std::to_string(inst.attempt) + " runs on '" +
            m.name + "', assigned ahead of a commit the crash prevented; taken back");
  return true;
}

void Master::send_outgoing(std::vector<Outgoing>& out) {
  std::set<std::string> unreachable;
  auto check = [&](const Outgoing& o, const Status& s) {
    if (!s.ok() && !o.member.empty() && !unreachable.count(o.member)) {
      log::warn("cannot reach member '" + o.member + "': " + s.error().message);
      unreachable.insert(o.member);
    }
  };
  // What goes to members that read BATCH, gathered per member in order: one
  // frame per member instead of one per message (schemas/PROTOCOL.md, BATCH).
  struct Gathered {
    const Outgoing* first;
    std::vector<std::string> bytes;
  };
  std::vector<Gathered> gathered;
  std::unordered_map<std::string_view, size_t> by_member;
  // Members that get more than acknowledgements here: theirs go along.
  std::unordered_set<std::string_view> other;
  for (const auto& o : out)
    if (o.batchable && !o.ack) other.insert(o.member);
  const auto now = Clock::now();
  for (auto& o : out) {
    if (o.assign_instance && !assign_still_current(o)) {
      log::info("ASSIGN of instance " + std::to_string(o.assign_instance) + " attempt " +
                std::to_string(o.assign_attempt) + " to '" + o.member + "' not sent: that attempt has ended meanwhile");
      continue;
    }
    if (o.batchable && o.ack && !other.count(o.member)) {
      auto m = members_.find(o.member);
      if (m != members_.end() && m->second.state == MemberState::Active) {
        auto [h, fresh] = held_acks_.try_emplace(o.member);
        if (fresh) {
          h->second.deadline = now + kAckHold;
          held_order_.emplace_back(h->second.deadline, o.member);
        }
        h->second.bytes.push_back(std::move(o.bytes));
        continue;
      }
    }
    if (o.batchable) {
      auto [it, fresh] = by_member.try_emplace(o.member, gathered.size());
      if (fresh) {
        gathered.push_back({&o, {}});
        if (auto h = held_acks_.find(o.member); h != held_acks_.end()) {
          gathered.back().bytes = std::move(h->second.bytes);
          held_acks_.erase(h);
        }
      }
      gathered[it->second].bytes.push_back(std::move(o.bytes));
      continue;
    }
    check(o, send_multipart(*o.socket, {o.peer, o.bytes}));
    sent_to(o.member, now);
  }
  for (auto& g : gathered) {
    proto::send_batched(g.bytes, proto::kBatchBytes, [&](const std::string& frame) {
      check(*g.first, send_multipart(*g.first->socket, {g.first->peer, frame}));
    });
    sent_to(g.first->member, now);
  }
  out.clear();
  // Their instances go back to the queue; the writes that takes belong to
  // the current turn.
  for (const auto& name : unreachable) {
    auto it = members_.find(name);
    if (it != members_.end()) member_event(it->second, MemberEvent::Unreachable);
  }
}

void Master::sent_to(const std::string& member, Clock::time_point now) {
  if (member.empty()) return;
  if (auto it = members_.find(member); it != members_.end()) it->second.last_sent = now;
}

bool Master::assign_still_current(const Outgoing& o) const {
  auto it = instances_.find(o.assign_instance);
  if (it == instances_.end()) return false;
  const Instance& inst = it->second;
  return inst.attempt == o.assign_attempt && inst.member == o.member &&
         (inst.state == InstanceState::Assigned || inst.state == InstanceState::Running);
}

void Master::take_commits() {
  if (!writer_) return;
  for (auto& d : writer_->done()) {
    if (in_commit_.empty() || in_commit_.front().batch != d.batch) {
      log::error("store writer reported batch " + std::to_string(d.batch) + " out of order; stopping");
      fatal_ = true;
      return;
    }
    if (!d.status.ok()) {
      log::error("cannot commit to the store " + store_->path() + ": " + d.status.error().message +
                 "; stopping without answering what was not stored");
      fatal_ = true;
      in_commit_.clear();
      return;
    }
    InCommit done = std::move(in_commit_.front());
    in_commit_.pop_front();
    events_->flush(done.events);
    events_in_commit_ -= done.events;
    send_outgoing(done.outbox);
    ended_kept_.insert(ended_kept_.end(), done.ended.begin(), done.ended.end());
    allow_assign_ahead(done.ahead);
  }
  forget_ended();
}

void Master::forget_ended() {
  // Each id is looked at once per call at most: pinned ones go to the back.
  for (size_t n = ended_kept_.size(); ended_kept_.size() > opt_.keep_ended && n > 0; --n) {
    uint64_t id = ended_kept_.front();
    ended_kept_.pop_front();
    auto it = instances_.find(id);
    if (it == instances_.end()) continue;  // already forgotten (listed twice)
    const Instance& inst = it->second;
    if (!is_terminal(inst.state)) continue;  // retried since: listed again when it ends
    if (inst.dirty || pinned_.count(id)) {
      ended_kept_.push_back(id);
      continue;
    }
    count_out(inst.state);
    instances_.erase(it);
  }
}

void Master::finish_commits() {
  if (!writer_) return;
  finishing_ = true;  // nothing is deferred any more
  // Sending may find members unreachable, which writes again: a few rounds.
  for (int round = 0; round < 5 && !fatal_; ++round) {
    if (!ops_.empty() || !outbox_.empty() || !deferred_.empty()) end_turn();
    if (in_commit_.empty()) break;
    writer_->wait_all();
    take_commits();
  }
}

void Master::refuse(zmq::socket_t& s, const std::string& id, const std::string& reason) {
  std::string bytes = proto::encode(proto::Refused{reason});
  (void)send_multipart(s, {id, bytes});
}

void Master::member_event(Member& m, MemberEvent e) {
  auto next = member_next(m.state, e);
  if (!next) {
    log::debug("member '" + m.name + "': event " + std::string(member_event_name(e)) + " ignored in state " +
               std::string(member_state_name(m.state)));
    return;
  }
  MemberState before = m.state;
  m.state = *next;
  if (before == m.state) return;
  log::info("member '" + m.name + "': " + std::string(member_state_name(before)) + " -> " +
            std::string(member_state_name(m.state)) + " on " + std::string(member_event_name(e)));
  proto::Event ev;
  ev.member = m.name;
  if (m.state == MemberState::Lost || m.state == MemberState::Left) {
    ev.type = m.state == MemberState::Lost ? "member.lost" : "member.left";
    events_->publish(ev);
    release_member_instances(m);
    m.assign_ahead = false;
    if (ahead_members_.erase(m.name)) store_ahead_members();
  } else if (m.state == MemberState::Active && !is_present(before)) {
    if (auto s = sched_.member_joined(m.name, m.local, static_cast<int>(m.slots), m.tags); !s.ok())
      log::error("member '" + m.name + "': " + s.error().message);
    ev.type = "member.joined";
    ev.detail = std::to_string(m.slots) + " slots";
    events_->publish(ev);
  } else if (m.state == MemberState::Draining) {
    ev.type = "member.draining";
    events_->publish(ev);
  }
  dispatch_needed_ = true;
}

// Everything a vanished member held becomes lost and, while attempts remain,
// goes back to the front of the line as a new attempt.
void Master::release_member_instances(Member& m) {
  // The scheduler takes back every credit the member held, in queue order.
  auto held = sched_.member_gone(m.name);
  if (!held.ok()) {
    log::error("member '" + m.name + "': " + held.error().message);
    return;
  }
  m.in_flight.clear();
  for (uint64_t id : *held) {
    auto it = instances_.find(id);
    if (it != instances_.end()) lose(it->second);
  }
}

// The instance's member is gone (its credit is already back): it is lost, and
// while attempts remain it goes to the front of its queue as a new attempt.
void Master::lose(Instance& inst) {
  transition(inst, InstanceEvent::Lose);
  retry_or_finish(inst, InstanceState::Lost);
}

bool Master::retry_or_finish(Instance& inst, InstanceState outcome) {
  const RetryPolicy& p = inst.spec->retry;
  uint32_t attempts = p.attempts ? p.attempts : opt_.max_attempts;
  bool wanted = (outcome == InstanceState::Lost && p.on_lost) || (outcome == InstanceState::Failed && p.on_failed) ||
                (outcome == InstanceState::TimedOut && p.on_timed_out);
  if (!wanted || inst.cancel_requested || inst.attempt >= attempts || shutdown_deadline_) {
    notify_waiters(inst);
    return false;
  }
  inst.attempt += 1;
  transition(inst, InstanceEvent::Requeue);
  // A lost instance was not at fault: it goes first, at once. A failed one
  // waits out its backoff (doubling per attempt, capped), then queues last.
  Millis delay{0};
  if (outcome != InstanceState::Lost && p.backoff.count() > 0) {
    delay = p.backoff;
    for (uint32_t a = 2; a < inst.attempt && delay < p.max_backoff; ++a) delay *= 2;
    delay = std::min(delay, p.max_backoff);
  }
  if (delay.count() > 0) {
    mark_dirty(inst);
    inst.retry_at = Clock::now() + delay;
    retries_.emplace(*inst.retry_at, inst.id);
    return true;
  }
  if (auto s = sched_.submit(inst.id, inst.spec->queue, inst.spec->priority, outcome == InstanceState::Lost, inst.spec->required_tags); !s.ok())
    log::error("instance " + std::to_string(inst.id) + " cannot be re-queued: " + s.error().message);
  dispatch_needed_ = true;
  return true;
}

void Master::release_due_retries(Clock::time_point now) {
  while (!retries_.empty() && retries_.begin()->first <= now) {
    uint64_t id = retries_.begin()->second;
    retries_.erase(retries_.begin());
    auto it = instances_.find(id);
    if (it == instances_.end() || it->second.state != InstanceState::Queued || !it->second.retry_at) continue;
    it->second.retry_at.reset();
    mark_dirty(it->second);
    if (auto s = sched_.submit(id, it->second.spec->queue, it->second.spec->priority, false, it->second.spec->required_tags); !s.ok())
      log::error("instance " + std::to_string(id) + " cannot be re-queued: " + s.error().message);
    dispatch_needed_ = true;
  }
}

void Master::on_ready(zmq::socket_t& s, bool local, const std::string& id, uint32_t minor, proto::Ready& r,
                      Clock::time_point now) {
  if (r.name != id) return refuse(s, id, "READY name '" + r.name + "' does not match the routing id");
  if (!local && r.name == kLocalName) return refuse(s, id, "the name 'master' is reserved for the master's own slots");
  if (r.slots == 0 || r.slots > 100000) return refuse(s, id, "slots must be between 1 and 100000");
  auto [it, fresh] = members_.try_emplace(id);
  Member& m = it->second;
  if (!fresh && m.local != local) return refuse(s, id, "name '" + id + "' is in use");
  if (fresh) {
    m.id = id;
    m.name = r.name;
    m.state = MemberState::Lost;  // so that Ready makes it join
  }
  m.local = local;
  m.socket = &s;
  m.tags = r.tags;
  m.version = r.version;
  m.reads_batches = minor >= proto::kBatchMinor;
  m.last_seen = now;
  // Its WELCOME (held until this turn is committed) must reach it before any
  // ASSIGN does, and the store must list it before it is sent ASSIGNs ahead.
  m.assign_ahead = false;
  // Its assigned instances may no longer wait for their progress write
  // (may_defer_progress): this turn writes them.
  for (uint64_t id : m.in_flight)
    if (auto it = instances_.find(id); it != instances_.end() && is_deferred(it->second)) mark_dirty(it->second);
  if (writer_) {
    if (ahead_members_.insert(m.name).second) store_ahead_members();
    ahead_turn_.push_back(m.name);
  }
  if (!is_present(m.state)) {
    m.slots = r.slots;
    m.joined_us = wall_clock_us();
  } else {
    // A re-registration while we still count it present: reconcile. What we
    // think it runs but it does not report is lost; the rest stays.
    std::set<uint64_t> reported;
    for (const auto& ri : r.running) reported.insert(ri.instance);
    std::vector<uint64_t> gone;
    for (uint64_t iid : m.in_flight)
      if (!reported.count(iid)) gone.push_back(iid);
    for (uint64_t iid : gone) {
      Instance& inst = instances_[iid];
      end_in_flight(inst, QueueScheduler::EndReason::kFinished);
      lose(inst);
    }
    if (m.slots != r.slots) {
      m.slots = r.slots;
      if (auto s = sched_.member_joined(m.name, m.local, static_cast<int>(m.slots), m.tags); !s.ok())
        log::error("member '" + m.name + "': " + s.error().message);
    }
  }
  member_event(m, MemberEvent::Ready);
  member_deadline_ = std::min(member_deadline_, now + opt_.heartbeat);
  if (m.state == MemberState::Draining)  // a draining member that re-registers stays drained
    if (auto s = sched_.member_joined(m.name, m.local, 0, m.tags); !s.ok()) log::error(s.error().message);
  send_to(m, proto::Welcome{static_cast<uint32_t>(opt_.heartbeat.count()), opt_.liveness});
  // Instances it still runs that are not (or no longer) its own are stopped
  // there. After a restart, the ones the store gave it are taken back.
  std::set<uint64_t> reported;
  for (const auto& ri : r.running) {
    reported.insert(ri.instance);
    auto iit = instances_.find(ri.instance);
    const bool same_attempt = iit != instances_.end() && iit->second.attempt == ri.attempt;
    bool ours = same_attempt && iit->second.member == m.name &&
                (iit->second.state == InstanceState::Assigned || iit->second.state == InstanceState::Running);
    if (!ours && same_attempt && iit->second.state == InstanceState::Queued && awaited_ahead_.count(m.name) &&
        adopt_assigned_ahead(iit->second, m))
      continue;
    if (!ours) {
      send_to(m, proto::Cancel{ri.instance, ri.attempt});
      continue;
    }
    if (unconfirmed_.erase(ri.instance)) {
      auto d = sched_.adopt(ri.instance, iit->second.spec->queue, m.name);
      if (!d.ok()) {
        log::error("instance " + std::to_string(ri.instance) + " cannot be taken back: " + d.error().message);
        continue;
      }
      iit->second.slot = d->slot;
      m.in_flight.insert(ri.instance);
      log::info("instance " + std::to_string(ri.instance) + " still runs on '" + m.name + "'; taken back");
    }
  }
  std::vector<uint64_t> missing;
  for (const auto& [id, member] : unconfirmed_)
    if (member == m.name && !reported.count(id)) missing.push_back(id);
  for (uint64_t id : missing) {
    unconfirmed_.erase(id);
    lose(instances_[id]);
  }
  if (awaited_ahead_.erase(m.name) && awaited_ahead_.empty())
    log::info("every member that could run instances assigned ahead of a commit is back: dispatching");
  dispatch_needed_ = true;
}

void Master::on_worker_message(zmq::socket_t& s, bool local, const std::string& id, uint32_t minor,
                               proto::Message& msg, Clock::time_point now) {
  if (auto* r = std::get_if<proto::Ready>(&msg)) return on_ready(s, local, id, minor, *r, now);
  auto it = members_.find(id);
  if (it == members_.end() || !is_present(it->second.state) || it->second.socket != &s) {
    // Before admission only READY is accepted. A well-formed message from a
    // peer we do not know (e.g. we restarted) tells it to register again.
    ++counters_.unexpected_messages;
    if (std::holds_alternative<proto::Finished>(msg) || std::holds_alternative<proto::Heartbeat>(msg) ||
        std::holds_alternative<proto::Started>(msg)) {
      std::string bytes = proto::encode(proto::Disconnect{"not registered: send READY"});
      (void)send_multipart(s, {id, bytes});
    }
    return;
  }
  Member& m = it->second;
  m.last_seen = now;
  if (std::holds_alternative<proto::Heartbeat>(msg)) return;
  if (const auto* st = std::get_if<proto::Started>(&msg)) return on_started(m, *st);
  if (const auto* f = std::get_if<proto::Finished>(&msg)) return on_finished(m, *f);
  if (std::holds_alternative<proto::Disconnect>(msg)) return member_event(m, MemberEvent::Disconnect);
  if (std::holds_alternative<proto::Drain>(msg)) {
    member_event(m, MemberEvent::Drain);
    if (auto s = sched_.member_joined(m.name, m.local, 0, m.tags); !s.ok()) log::error(s.error().message);
    return;
  }
  ++counters_.unexpected_messages;
  log::warn("member '" + m.name + "' sent unexpected " + std::string(proto::msg_type_name(proto::type_of(msg))));
}

void Master::drain_worker_socket(zmq::socket_t& s, bool local) {
  std::vector<zmq::message_t> parts;
  auto now = Clock::now();
  Clock::time_point& read = read_up_to(local);
  worker_messages_ = 0;
  // A ROUTER reads its peers' queues in turn, one message each. So once a
  // peer is read a second time in this turn, every peer that had something
  // queued when the turn began has been read: the socket counts as read up
  // to then, even if it never runs empty (a flood would otherwise hide a
  // worker that fell silent). Tracked from the kTrackPeersAfter-th message:
  // most turns run empty before.
  constexpr int kTrackPeersAfter = 64;
  std::unordered_set<std::string> peers_read;
  bool read_round = false;
  for (int n = 0;; ++n) {
    if (n >= 1024 || worker_messages_ >= kWorkerMessagesPerTurn) {  // the rest next turn
      if (read_round) read = std::max(read, now);
      return;
    }
    if (!recv_multipart(s, parts)) {
      read = Clock::now();
      return;
    }
    if (n >= kTrackPeersAfter && !read_round && !parts.empty())
      read_round = !peers_read.emplace(view(parts[0])).second;
    if (parts.size() != 2) {
      ++counters_.malformed_workers;
      uint64_t suppressed = 0;
      if (bad_traffic_log_.allow(now, suppressed))
        log::warn("dropped a " + std::to_string(parts.size() - 1) + "-frame message on the workers endpoint (" +
                  std::to_string(suppressed) + " more suppressed)");
      continue;
    }
    std::string id(view(parts[0]));
    if (!local && !admit_worker_frame(s, id, parts[1], now)) continue;
    handle_worker_frame(s, local, id, parts[1].data(), parts[1].size(), false, now);
  }
}

void Master::handle_worker_frame(zmq::socket_t& s, bool local, const std::string& id, const void* data, size_t size,
                                 bool in_batch, Clock::time_point now) {
  uint32_t minor = 0;
  auto d = proto::decode(data, size, &minor);
  if (auto* err = std::get_if<proto::DecodeError>(&d)) {
    uint64_t suppressed = 0;
    bool say = bad_traffic_log_.allow(now, suppressed);
    if (err->kind == proto::DecodeFailure::VersionMismatch) {
      ++counters_.refused_version;
      refuse(s, id, err->reason);
      if (say) log::warn("refused a peer on the workers endpoint: " + err->reason);
    } else {
      ++counters_.malformed_workers;
      if (say)
        log::warn("dropped a malformed message on the workers endpoint" + std::string(in_batch ? " (in a BATCH)" : "") +
                  ": " + err->reason + " [" + proto::sanitize_sample(data, size) + "] (" + std::to_string(suppressed) +
                  " more suppressed)");
    }
    return;
  }
  auto& msg = std::get<proto::Message>(d);
  if (auto* batch = std::get_if<proto::Batch>(&msg)) {
    if (in_batch) {
      ++counters_.malformed_workers;
      uint64_t suppressed = 0;
      if (bad_traffic_log_.allow(now, suppressed))
        log::warn("dropped a BATCH inside a BATCH from '" + id + "' (" + std::to_string(suppressed) + " more suppressed)");
      return;
    }
    for (const auto& part : batch->messages) handle_worker_frame(s, local, id, part.data(), part.size(), true, now);
    return;
  }
  ++worker_messages_;
  on_worker_message(s, local, id, minor, msg, now);
}

// ---- instances ---------------------------------------------------------------

uint64_t Master::create_instance(const std::shared_ptr<const InstanceSpec>& spec, bool in_submission,
                                 int64_t created_us) {
  uint64_t id = next_instance_id_++;
  Instance& inst = instances_[id];
  inst.id = id;
  inst.spec = spec;
  count_in(inst.state);
  inst.history.push_back({InstanceState::Queued, in_submission ? created_us : wall_clock_us(), 1, "", std::nullopt});
  if (in_submission) {
    inst.rowless = true;
    inst.persisted_transitions = 1;  // the submission's row has it queued
  } else {
    mark_dirty(inst);
  }
  publish_transition(inst, std::nullopt);
  if (auto s = sched_.submit(id, inst.spec->queue, inst.spec->priority, false, inst.spec->required_tags); !s.ok())
    log::error("instance " + std::to_string(id) + " cannot be queued: " + s.error().message);
  dispatch_needed_ = true;
  return id;
}

uint64_t Master::create_instances(const std::shared_ptr<const InstanceSpec>& spec, uint64_t count) {
  const uint64_t first = next_instance_id_;
  if (!writer_ || count < 2) {
    for (uint64_t k = 0; k < count; ++k) create_instance(spec);
    return first;
  }
  // One row for all: most of them then cost one insert, at their end,
  // instead of an insert now and an update then (docs/durability.md).
  const int64_t created_us = wall_clock_us();
  // Before the instances: one may be dispatched, and written, this turn.
  write([rec = to_submission_record(*spec, first, count, created_us)](Store& s) { return s.put_submission(rec); });
  rowless_[first] = count;
  for (uint64_t k = 0; k < count; ++k) create_instance(spec, true, created_us);
  return first;
}

void Master::transition(Instance& inst, InstanceEvent e, std::optional<int32_t> exit_code) {
  auto next = next_state(inst.state, e);
  if (!next) {
    log::error("instance " + std::to_string(inst.id) + ": event " + std::string(instance_event_name(e)) +
               " is not allowed in state " + std::string(state_name(inst.state)) + "; ignored");
    return;
  }
  count_out(inst.state);
  count_in(*next);
  inst.state = *next;
  inst.history.push_back({inst.state, wall_clock_us(), inst.attempt, inst.member, exit_code});
  mark_dirty(inst);
  if (writer_ && is_terminal(inst.state)) ended_turn_.push_back(inst.id);
  publish_transition(inst, exit_code);
  if (writer_ && inst.unstored_event == 0) inst.unstored_event = events_->last_seq();
  if (inst.state == InstanceState::Queued) {
    inst.member.clear();
    inst.slot = -1;
  }
}

void Master::publish_transition(const Instance& inst, std::optional<int32_t> exit_code) {
  proto::Event ev;
  ev.type = instance_event_type(inst.state);
  ev.instance = inst.id;
  ev.job = inst.spec->job;
  ev.queue = inst.spec->queue;
  ev.attempt = inst.attempt;
  // The time of the history entry it reports: the tap and the store agree
  // to the microsecond (a second clock read here could come a preemption
  // later).
  if (!inst.history.empty()) ev.ts_us = inst.history.back().ts_us;
  if (!inst.member.empty() && inst.state != InstanceState::Queued) ev.member = inst.member;
  if (inst.slot >= 0 && (inst.state == InstanceState::Assigned || inst.state == InstanceState::Running))
    ev.slot = inst.slot;
  if (exit_code) ev.exit_code = *exit_code;
  events_->publish(std::move(ev));
}

// Gives the instance's credit back to the scheduler (exactly once: the
// scheduler refuses a second end) and its slot back to the member.
void Master::end_in_flight(Instance& inst, QueueScheduler::EndReason why) {
  if (auto s = sched_.finished(inst.id, Clock::now(), why); !s.ok())
    log::error("instance " + std::to_string(inst.id) + ": " + s.error().message);
  auto it = members_.find(inst.member);
  if (it != members_.end()) it->second.in_flight.erase(inst.id);
  dispatch_needed_ = true;
}

void Master::on_started(Member& m, const proto::Started& s) {
  auto it = instances_.find(s.instance);
  if (it == instances_.end() || it->second.member != m.name || it->second.attempt != s.attempt ||
      it->second.state != InstanceState::Assigned) {
    ++counters_.late_results;
    log::debug("STARTED for instance " + std::to_string(s.instance) + " attempt " + std::to_string(s.attempt) +
               " from '" + m.name + "' does not match; ignored");
    return;
  }
  transition(it->second, InstanceEvent::Start);
}

void Master::on_finished(Member& m, const proto::Finished& f) {
  // Acknowledge every result, applied or not, so the worker stops resending it.
  queue_ack(m, f.instance, f.attempt);
  auto it = instances_.find(f.instance);
  if (it == instances_.end() || it->second.member != m.name || it->second.attempt != f.attempt ||
      (it->second.state != InstanceState::Assigned && it->second.state != InstanceState::Running)) {
    ++counters_.late_results;
    log::info("result of instance " + std::to_string(f.instance) + " attempt " + std::to_string(f.attempt) +
              " from '" + m.name + "' is stale (already applied or superseded); ignored");
    return;
  }
  Instance& inst = it->second;
  ++m.finished;
  inst.exit_code = f.exit_code;
  inst.failed_step = f.failed_step;
  inst.duration_ms = f.duration_ms;
  inst.error = f.error;
  inst.output = f.output;
  InstanceEvent e = InstanceEvent::Fail;
  auto why = QueueScheduler::EndReason::kFinished;
  if (f.status == "succeeded") e = InstanceEvent::Succeed;
  else if (f.status == "timed_out") e = InstanceEvent::TimeOut, why = QueueScheduler::EndReason::kTimedOut;
  else if (f.status == "cancelled") e = InstanceEvent::Cancel, why = QueueScheduler::EndReason::kCancelled;
  end_in_flight(inst, why);
  transition(inst, e, f.exit_code);
  retry_or_finish(inst, inst.state);
}

void Master::dispatch() {
  dispatch_needed_ = false;
  if (shutdown_deadline_) return;  // stopping: nothing new starts
  // A queued instance may be running on a member not back yet (it was sent
  // ahead of its commit): starting it elsewhere could run it twice at once.
  if (!awaited_ahead_.empty()) return;
  auto starts = sched_.dispatch(Clock::now());
  if (starts.empty()) return;
  // Every credit is recorded before anything is sent: a failed send loses
  // the member, which must then find all of its instances assigned to it.
  for (const auto& d : starts) {
    Instance& inst = instances_[d.instance];
    Member& m = members_[d.member];
    inst.member = d.member;
    inst.slot = d.slot;
    m.in_flight.insert(d.instance);
    m.last_assigned = ++counters_.dispatched;
    transition(inst, InstanceEvent::Dispatch);
  }
  for (const auto& d : starts) {
    Instance& inst = instances_[d.instance];
    Member& m = members_[d.member];
    if (!is_present(m.state) || inst.member != d.member || inst.state != InstanceState::Assigned) continue;
    send_bytes_to(m, proto::encode_assign({inst.id, inst.attempt, inst.spec->job, inst.spec->params, inst.spec->steps, inst.spec->timeout_ms}));
    outbox_.back().assign_instance = inst.id;
    outbox_.back().assign_attempt = inst.attempt;
    outbox_.back().ahead = true;
  }
}

void Master::notify_waiters(const Instance& inst) {
  auto [b, e] = waiters_by_instance_.equal_range(inst.id);
  std::vector<std::list<Waiter>::iterator> done;
  for (auto it = b; it != e; ++it) {
    auto w = it->second;
    if (--w->remaining == 0) done.push_back(w);
  }
  waiters_by_instance_.erase(b, e);
  for (auto w : done) {
    reply(w->client, w->req, true, "", wait_result(*w));
    drop_waiter(w);
  }
}

void Master::drop_waiter(std::list<Waiter>::iterator w) {
  for (uint64_t id : w->ids) {
    auto [b, e] = waiters_by_instance_.equal_range(id);
    for (auto it = b; it != e;) it = it->second == w ? waiters_by_instance_.erase(it) : std::next(it);
    if (auto p = pinned_.find(id); p != pinned_.end() && --p->second == 0) pinned_.erase(p);
  }
  waiters_.erase(w);
}

// ---- loop --------------------------------------------------------------------

void Master::on_timer(Clock::time_point now) {
  flush_held_acks(now);
  // Members are swept when the earliest of them may need a heartbeat or be
  // silent too long, not every turn: with 1,000 workers a sweep per turn cost
  // more than the instances it served. Between sweeps last_seen and last_sent
  // only move later, so the deadline found here stays a safe lower bound.
  if (now >= member_deadline_) {
    auto expiry = opt_.heartbeat * opt_.liveness;
    member_deadline_ = now + opt_.heartbeat / 4;
    for (auto& [id, m] : members_) {
      if (!is_present(m.state)) continue;
      const Clock::time_point read = read_up_to(m.local);
      if (read - m.last_seen > expiry) {
        log::warn("member '" + m.name + "' silent for " + ms_string(read - m.last_seen) +
                  " (up to when everything that came was read); declaring it lost");
        member_event(m, MemberEvent::Expire);
        continue;
      }
      if (now - m.last_sent >= opt_.heartbeat) {
        send_to(m, proto::Heartbeat{});
        outbox_.back().ahead = true;  // states nothing the store must know (send_ahead)
      }
      member_deadline_ = std::min({member_deadline_, m.last_sent + opt_.heartbeat,
                                   m.last_seen + expiry + std::chrono::milliseconds(1)});
    }
  }
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (now < it->deadline) {
      ++it;
      continue;
    }
    nlohmann::json out;
    out["done"] = false;
    reply(it->client, it->req, true, "", out);
    drop_waiter(it++);
  }
}

Clock::time_point Master::next_wakeup(Clock::time_point now) const {
  if (!pending_runs_.empty()) return now;  // the next slice of a big run
  Clock::time_point t = now + std::chrono::seconds(10);
  t = std::min(t, member_deadline_);
  for (const auto& w : waiters_) t = std::min(t, w.deadline);
  if (auto d = sched_.next_deadline()) t = std::min(t, *d);
  if (!retries_.empty()) t = std::min(t, retries_.begin()->first);
  if (shutdown_deadline_) t = std::min(t, *shutdown_deadline_);
  if (reconcile_deadline_) t = std::min(t, *reconcile_deadline_);
  if (deferred_until_) t = std::min(t, *deferred_until_);
  if (!held_order_.empty()) t = std::min(t, held_order_.front().first);
  if (store_) t = std::min(t, next_prune_);
  if (auto d = triggers_.next_deadline()) {
    // Trigger times are wall-clock; the loop sleeps on the steady clock.
    auto until = *d - std::chrono::system_clock::now();
    t = std::min(t, now + std::chrono::duration_cast<Clock::duration>(std::max(until, decltype(until)::zero())));
  }
  return t;
}

// ---- durability --------------------------------------------------------------

Status Master::restore() {
  if (!opt_.store) {
    log::info("no store (--no-store): everything stays in memory");
    return {};
  }
  StoreOptions so;
  so.sync = opt_.sync_full ? StoreOptions::Sync::Full : StoreOptions::Sync::Normal;
  auto opened = Store::open(opt_.data_dir, so);
  if (!opened.ok()) return opened.error();
  store_ = std::move(opened.value());
  // The writer's own connection: SQLite connections are not shared between threads.
  auto for_writer = Store::open(opt_.data_dir, so);
  if (!for_writer.ok()) return for_writer.error();
  writer_ = std::make_unique<StoreWriter>(std::move(for_writer.value()));
  auto loaded = store_->load();
  if (!loaded.ok()) return loaded.error();
  StoreContents& c = *loaded;
  auto now = std::chrono::system_clock::now();
  for (const auto& q : c.queues) {
    auto cfg = parse_queue(q.text, q.source_name);
    if (!cfg.ok()) return make_error("stored queue '" + q.name + "': " + cfg.error().message);
    if (auto s = sched_.add_or_update_queue(*cfg); !s.ok()) return s.error();
    queues_[cfg->name] = *cfg;
    queue_sources_[cfg->name] = {q.source_name, q.text};
  }
  for (const auto& j : c.jobs) {
    auto job = parse_job(j.text, j.source_name);
    if (!job.ok()) return make_error("stored job '" + j.name + "': " + job.error().message);
    if (job->local_queue) {
      if (auto s = sched_.add_or_update_queue(*job->local_queue); !s.ok()) return s.error();
      queues_[job->local_queue->name] = *job->local_queue;
    }
    if (!j.enabled) disabled_jobs_.insert(j.name);
    jobs_[j.name] = std::move(job.value());
    apply_job_triggers(jobs_[j.name]);
    if (!j.enabled) triggers_.disable(j.name);
    for (size_t i = 0; i < jobs_[j.name].triggers.size(); ++i) {
      auto it = c.meta.find("trigger:" + j.name + ":" + std::to_string(i));
      if (it == c.meta.end()) continue;
      std::chrono::system_clock::time_point last{std::chrono::microseconds(std::stoll(it->second))};
      triggers_.restore_last_fired(j.name, i, last, now);
    }
  }
  size_t queued = 0;
  std::shared_ptr<const InstanceSpec> previous;
  for (const auto& rec : c.instances) {
    auto inst = instance_from_record(rec, previous);
    if (!inst.ok()) return make_error("stored instance " + std::to_string(rec.id) + ": " + inst.error().message);
    uint64_t id = rec.id;
    auto [slot, fresh] = instances_.insert_or_assign(id, std::move(inst.value()));
    if (!fresh) return make_error("stored instance " + std::to_string(id) + " is listed twice");
    Instance& i = slot->second;
    count_in(i.state);
    previous = i.spec;
    if (rec.submission) {
      i.rowless = true;
      ++rowless_[rec.submission];
    }
    if (i.state == InstanceState::Queued) {
      ++queued;
      if (i.retry_at) retries_.emplace(*i.retry_at, id);
      else if (auto s = sched_.submit(id, i.spec->queue, i.spec->priority, false, i.spec->required_tags); !s.ok())
        log::error("stored instance " + std::to_string(id) + " cannot be queued: " + s.error().message);
    } else {
      unconfirmed_[id] = i.member;
    }
  }
  next_instance_id_ = std::max(next_instance_id_, c.next_instance_id);
  events_->continue_after(c.last_event_seq);
  stored_next_id_ = next_instance_id_;
  stored_event_seq_ = c.last_event_seq;
  if (auto it = c.meta.find(kMetaAssignAheadMembers); it != c.meta.end()) {
    std::istringstream names(it->second);
    for (std::string name; std::getline(names, name);)
      if (!name.empty()) ahead_members_.insert(name);
  }
  awaited_ahead_ = ahead_members_;
  if (!unconfirmed_.empty() || !awaited_ahead_.empty()) reconcile_deadline_ = Clock::now() + opt_.reconcile_grace;
  next_prune_ = Clock::now() + std::chrono::seconds(10);
  log::info("store " + store_->path() + ": " + std::to_string(jobs_.size()) + " jobs, " +
            std::to_string(queues_.size() - 1) + " queues, " + std::to_string(queued) + " queued and " +
            std::to_string(unconfirmed_.size()) + " assigned or running instances (waiting up to " +
            format_duration(opt_.reconcile_grace) + " for their workers)" +
            (awaited_ahead_.empty() ? std::string()
                                    : "; dispatching once " + std::to_string(awaited_ahead_.size()) +
                                          " members that may run instances assigned ahead of a commit are back"));
  dispatch_needed_ = true;
  return {};
}

// Instances no worker reported within the grace after a restart are lost.
void Master::expire_unconfirmed(Clock::time_point now) {
  if (!reconcile_deadline_ || now < *reconcile_deadline_) return;
  reconcile_deadline_.reset();
  if (!awaited_ahead_.empty()) {
    std::string names;
    for (const auto& name : awaited_ahead_) names += (names.empty() ? "'" : ", '") + name + "'";
    log::warn("not back within the reconcile grace: " + names + "; dispatching");
    for (const auto& name : awaited_ahead_) ahead_members_.erase(name);
    awaited_ahead_.clear();
    store_ahead_members();
    dispatch_needed_ = true;
  }
  auto left = std::move(unconfirmed_);
  unconfirmed_.clear();
  for (const auto& [id, member] : left) {
    log::warn("instance " + std::to_string(id) + " was on '" + member +
              "' before the restart and nobody reported it: lost");
    lose(instances_[id]);
  }
}

namespace {
constexpr uint64_t kPruneSlice = 10000;  // instances pruned per turn at most
}  // namespace

void Master::prune(Clock::time_point now) {
  if (!store_ || now < next_prune_) return;
  next_prune_ = now + std::chrono::minutes(10);
  int64_t cutoff = wall_clock_us() - std::chrono::duration_cast<std::chrono::microseconds>(opt_.keep_history).count();
  // The last slice was full: more may be left, go on soon.
  if (last_prune_removed_->load() >= kPruneSlice) next_prune_ = now + std::chrono::seconds(1);
  write([cutoff, keep = opt_.keep_history, removed = last_prune_removed_](Store& st) -> Status {
    auto n = st.prune_history(cutoff, kPruneSlice);
    if (!n.ok()) return n.error();
    removed->store(*n);
    if (*n > 0) log::info("pruned " + std::to_string(*n) + " instances older than " + format_duration(keep));
    return {};
  });
  std::erase_if(instances_, [&](const auto& kv) {
    return is_terminal(kv.second.state) && !kv.second.history.empty() && kv.second.history.back().ts_us < cutoff;
  });
}

// ---- triggers ----------------------------------------------------------------

void Master::apply_job_triggers(const Job& job) {
  triggers_.set_job(job.name, job.triggers, std::chrono::system_clock::now());
  watcher_->remove_job(job.name);
  if (disabled_jobs_.count(job.name)) return;
  for (size_t i = 0; i < job.triggers.size(); ++i)
    if (job.triggers[i].kind == TriggerSpec::Kind::Watch) watcher_->add(job.name, i, job.triggers[i]);
}

void Master::forget_job_triggers(const std::string& job) {
  triggers_.remove_job(job);
  watcher_->remove_job(job);
  disabled_jobs_.erase(job);
}

void Master::fire_due_triggers() {
  for (auto& f : triggers_.due(std::chrono::system_clock::now())) {
    fire(f.job, f.trigger, f.params, f.catch_up ? "catch-up for missed firings" : "timer");
    // Remembered so that a restart knows what it missed (on_missed).
    write([key = "trigger:" + f.job + ":" + std::to_string(f.trigger),
           value = std::to_string(
               std::chrono::duration_cast<std::chrono::microseconds>(f.scheduled.time_since_epoch()).count())](
              Store& st) { return st.set_meta(key, value); });
  }
}

void Master::take_file_events() {
  for (auto& e : watcher_->take()) {
    if (e.kind == FileEvent::Kind::Error) {
      uint64_t suppressed = 0;
      if (bad_traffic_log_.allow(Clock::now(), suppressed))
        log::warn("job '" + e.job + "' trigger " + std::to_string(e.trigger) + ": " + e.message);
      continue;
    }
    if (e.kind != FileEvent::Kind::File || disabled_jobs_.count(e.job) || shutdown_deadline_) continue;
    auto it = jobs_.find(e.job);
    if (it == jobs_.end() || e.trigger >= it->second.triggers.size()) continue;
    auto params = it->second.triggers[e.trigger].params;
    params[std::string(kFileParam)] = e.path;
    fire(e.job, e.trigger, params, e.path);
  }
}

// A trigger fired: one instance of the job, with the trigger's parameters.
void Master::fire(const std::string& job, size_t trigger, const std::map<std::string, std::string>& params,
                  const std::string& what) {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return;
  auto resolved = resolve_instance(it->second, params);
  if (!resolved.ok()) {
    ++counters_.trigger_failed;
    log::warn("job '" + job + "' trigger " + std::to_string(trigger) + " could not create an instance: " +
              resolved.error().message);
    return;
  }
  if (auto full = queue_full(queue_of(it->second), 1)) {
    ++counters_.refused_queue_full;
    uint64_t suppressed = 0;
    if (bad_traffic_log_.allow(Clock::now(), suppressed))
      log::warn("job '" + job + "' trigger " + std::to_string(trigger) + " skipped: " + *full);
    return;
  }
  uint64_t id = create_instance(make_spec(it->second, std::move(resolved->params), std::move(resolved->steps)));
  ++counters_.trigger_fired;
  proto::Event ev;
  ev.type = "trigger.fired";
  ev.job = job;
  ev.trigger = static_cast<uint32_t>(trigger);
  ev.instance = id;
  ev.detail = what;
  events_->publish(std::move(ev));
}

std::vector<uint64_t> Master::in_flight_ids() const {
  std::vector<uint64_t> ids;
  for (const auto& [name, m] : members_) ids.insert(ids.end(), m.in_flight.begin(), m.in_flight.end());
  for (const auto& [id, member] : unconfirmed_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

size_t Master::in_flight_total() const {
  size_t n = 0;
  for (const auto& [id, m] : members_) n += m.in_flight.size();
  return n;
}

// First SIGTERM: nothing new starts; instances in flight get up to
// --shutdown-grace to report; the local slots drain.
void Master::begin_shutdown(Clock::time_point now) {
  shutdown_deadline_ = now + opt_.shutdown_grace;
  log::info("stopping: waiting up to " + format_duration(opt_.shutdown_grace) + " for " +
            std::to_string(in_flight_total()) + " instance(s) in flight (SIGTERM again to stop now)");
  if (local_stop_fd_ >= 0) {
    uint64_t one = 1;
    ssize_t n = ::write(local_stop_fd_, &one, sizeof one);
    (void)n;
  }
}

void Master::shut_down() {
  log::info("stopping");
  flush_held_acks(Clock::now(), true);  // the workers forget those results before they hear we stop
  for (auto& [id, m] : members_)
    if (is_present(m.state) && !m.local) {
      std::string bytes = proto::encode(proto::Disconnect{"master stopping"});
      (void)send_multipart(*m.socket, {m.id, bytes});
    }
  stop_local_worker();
}

int Master::run() {
  if (auto s = bind_all(); !s.ok()) {
    log::error(s.error().message);
    return 1;
  }
  auto watcher = FileWatcher::create();
  if (!watcher.ok()) {
    log::error("cannot start the file watcher: " + watcher.error().message);
    return 1;
  }
  watcher_ = std::move(watcher.value());
  if (auto s = restore(); !s.ok()) {
    log::error(s.error().message);
    return 1;
  }
  start_local_worker();
  std::vector<zmq::pollitem_t> items;
  while (true) {
    auto now = Clock::now();
    items.clear();
    items.push_back({workers_->handle(), 0, ZMQ_POLLIN, 0});
    items.push_back({api_->handle(), 0, ZMQ_POLLIN, 0});
    items.push_back({local_ ? local_->handle() : nullptr, -1, static_cast<short>(local_ ? ZMQ_POLLIN : 0), 0});
    items.push_back({nullptr, opt_.stop_fd, static_cast<short>(opt_.stop_fd >= 0 ? ZMQ_POLLIN : 0), 0});
    items.push_back({nullptr, watcher_->fd(), ZMQ_POLLIN, 0});
    security_->add_poll_items(items);  // the ZAP handler and handshake monitors (keyed mode)
    const size_t writer_item = items.size();
    if (writer_) items.push_back({nullptr, writer_->fd(), ZMQ_POLLIN, 0});  // commits done
    auto wake = next_wakeup(now);
    auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now);
    if (timeout.count() < 0) timeout = std::chrono::milliseconds(0);
    poll_items(items.data(), items.size(), timeout + std::chrono::milliseconds(1));
    const auto polled = Clock::now();
    // Committed turns release what they held; everything this turn changes
    // is submitted to the writer as one batch by end_turn().
    // Only when it says so: reading its eventfd in every turn was a system
    // call per turn for nothing.
    if (writer_ && (items[writer_item].revents & ZMQ_POLLIN)) take_commits();
    if (fatal_) return 1;
    if (opt_.stop_fd >= 0 && (items[3].revents & ZMQ_POLLIN)) {
      char buf[128];
      ssize_t n = ::read(opt_.stop_fd, buf, sizeof buf);
      (void)n;
      if (shutdown_deadline_) break;
      begin_shutdown(Clock::now());
    }
    on_security_events();  // never blocks; a handshake waits for its ZAP reply
    // A socket poll found empty has been read up to the poll.
    if (items[0].revents & ZMQ_POLLIN) drain_worker_socket(*workers_, false);
    else read_up_to(false) = polled;
    if (local_ && (items[2].revents & ZMQ_POLLIN)) drain_worker_socket(*local_, true);
    else read_up_to(true) = polled;
    if (items[1].revents & ZMQ_POLLIN) drain_api_socket();
    continue_runs();
    if (items[4].revents & ZMQ_POLLIN) take_file_events();
    if (!shutdown_deadline_) fire_due_triggers();
    auto after = Clock::now();
    on_timer(after);
    release_due_retries(after);
    expire_unconfirmed(after);
    prune(after);

    if (auto d = sched_.next_deadline(); d && *d <= after) dispatch_needed_ = true;
    if (dispatch_needed_) dispatch();
    end_turn();
    if (fatal_) return 1;
    if (shutdown_deadline_ && pending_runs_.empty() && (in_flight_total() == 0 || after >= *shutdown_deadline_)) break;
  }
  // A clean stop commits every ASSIGN: a restart need not wait for anyone.
  if (writer_ && !fatal_) {
    ahead_members_.clear();
    store_ahead_members();
  }
  finish_commits();
  shut_down();
  return fatal_ ? 1 : 0;
}

// ---- security (docs/security.md) ---------------------------------------------

// Answers ZAP requests and publishes every refused handshake on the tap.
void Master::on_security_events() {
  for (auto& r : security_->service()) {
    proto::Event ev;
    ev.type = "security.refused";
    ev.detail = refusal_detail(r);
    events_->publish(std::move(ev));
  }
}

// ZAP runs only at the handshake, so a worker removed afterwards keeps its
// connection: every frame is checked against the current lists.
bool Master::admit_worker_frame(zmq::socket_t& s, const std::string& id, const zmq::message_t& body,
                                Clock::time_point now) {
  std::string user_id;
  auto check = security_->check_worker(body, id, user_id);
  if (check == MasterSecurity::WorkerCheck::Admitted) return true;
  ++counters_.security_dropped;
  uint64_t suppressed = 0;
  bool say = bad_traffic_log_.allow(now, suppressed);
  const std::string peer = proto::sanitize_sample(id.data(), id.size());
  if (check == MasterSecurity::WorkerCheck::WrongName) {
    // An admitted key under another name: it must not speak for (or take
    // over) another worker. Tell it, so its operator sees why.
    if (say)
      log::warn("workers endpoint: the key of worker '" + user_id + "' sent as '" + peer + "'; refused");
    refuse(s, id, "this worker's key is admitted as '" + user_id + "', not '" + peer + "': start it with --name " +
                      user_id);
    return false;
  }
  // Not admitted (revoked): it was told REFUSED when it was removed; whatever
  // else it sends is ignored. Should it still count as present, drop it now.
  auto it = members_.find(id);
  if (it != members_.end() && is_present(it->second.state) && !it->second.local && it->second.socket == &s)
    drop_removed_member(it->second, "its key is no longer admitted");
  if (say)
    log::warn("workers endpoint: ignored a message from '" + peer + "', whose key is not admitted (" +
              std::to_string(suppressed) + " more suppressed)");
  return false;
}

void Master::drop_removed_member(Member& m, const std::string& reason) {
  log::warn("worker '" + m.name + "': " + reason + "; dropping it now (its " + std::to_string(m.in_flight.size()) +
            " instance(s) are lost and re-queued)");
  // After the turn is committed, like every message; a failed send is no
  // concern: the member is gone either way.
  outbox_.push_back({m.socket, m.id, proto::encode(proto::Refused{reason}), ""});
  member_event(m, MemberEvent::Unreachable);
}

std::optional<std::string> Master::queue_full(const std::string& queue, uint64_t adding) const {
  auto q = queues_.find(queue);
  auto st = sched_.queue_stats(queue);
  if (q == queues_.end() || !st) return std::nullopt;
  uint64_t limit = static_cast<uint64_t>(q->second.max_queued);
  if (static_cast<uint64_t>(st->waiting) + adding <= limit) return std::nullopt;
  return "queue '" + queue + "' is full: " + std::to_string(st->waiting) + " instances waiting, " +
         std::to_string(adding) + " more would exceed max_queued = " + std::to_string(limit);
}

}  // namespace zf
