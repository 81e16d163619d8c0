#include "worker/worker.h"

#include <unistd.h>

#include <cstring>

#include "common/log.h"
#include "common/zmq_util.h"

namespace zf {

namespace {
const char* kVersion = "zforce 0.1.0";
}

Worker::Worker(zmq::context_t& ctx, WorkerOptions options)
    : ctx_(ctx),
      opt_(std::move(options)),
      heartbeat_(opt_.heartbeat),
      liveness_(opt_.liveness),
      backoff_(opt_.backoff_min) {}

Worker::~Worker() = default;

void Worker::apply(LinkEvent e) {
  auto next = link_next(state_, e);
  if (!next) {
    log::debug("link: event " + std::string(link_event_name(e)) + " ignored in state " +
               std::string(link_state_name(state_)));
    return;
  }
  if (*next != state_)
    log::info("link: " + std::string(link_state_name(state_)) + " -> " + std::string(link_state_name(*next)) +
              " on " + std::string(link_event_name(e)));
  state_ = *next;
}

void Worker::connect() {
  socket_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
  socket_->set(zmq::sockopt::routing_id, opt_.name);
  socket_->set(zmq::sockopt::linger, 0);
  socket_->set(zmq::sockopt::maxmsgsize, proto::kMaxMessageBytes);
  socket_->set(zmq::sockopt::reconnect_ivl, 100);
  // Room for a burst (hundreds of slots ending at once send STARTED and
  // FINISHED for each); beyond it send() keeps messages in outbox_.
  socket_->set(zmq::sockopt::sndhwm, 100'000);
  socket_->set(zmq::sockopt::rcvhwm, 100'000);
  if (!opt_.master_key.empty()) make_curve_client(*socket_, opt_.key, opt_.master_key);
  handshake_failure_logged_ = false;
  if (opt_.master.rfind("inproc://", 0) != 0) {
    // A refused handshake is only visible here: nothing else arrives.
    auto m = HandshakeMonitor::attach(ctx_, *socket_);
    if (m) monitor_ = std::move(*m);
    else log::warn("cannot watch the handshake with the master: " + m.error().message);
  }
  socket_->connect(opt_.master);
  proto::Ready r;
  r.name = opt_.name;
  r.slots = opt_.slots;
  r.tags = opt_.tags;
  r.version = kVersion;
  for (const auto& [id, ex] : running_) {
    auto sup = superseding_.find(id);
    r.running.push_back({id, sup != superseding_.end() ? sup->second.attempt : ex->assign().attempt});
  }
  for (const auto& [id, f] : unacked_) r.running.push_back({id, f.attempt});
  auto now = Clock::now();
  last_recv_ = now;  // the registration deadline counts from here
  send(r);
  apply(LinkEvent::Connect);
}

void Worker::drop_socket() {
  monitor_.reset();
  socket_.reset();
  // What a new connection needs is sent again: READY lists what runs,
  // unacknowledged results follow WELCOME.
  pending_.clear();
  outbox_.clear();
  master_reads_batches_ = false;
}

void Worker::reconnect_after_backoff(Clock::time_point now) {
  drop_socket();
  apply(LinkEvent::MasterSilent);
  backoff_until_ = now + backoff_;
  backoff_ = std::min(backoff_ * 2, opt_.backoff_max);
}

void Worker::on_handshake_events(Clock::time_point now) {
  if (!monitor_) return;
  for (const auto& e : monitor_->take()) {
    switch (e.kind) {
      case HandshakeEvent::Kind::Succeeded:
        if (handshake_refusals_ > 0) log::info("handshake with the master succeeded: this worker's key is admitted");
        handshake_refusals_ = 0;
        continue;
      case HandshakeEvent::Kind::Refused: {
        ++handshake_refusals_;
        // Every attempt while it waits for approval would flood the log.
        if (handshake_refusals_ == 1 || handshake_refusals_ % 10 == 0) {
          std::string fp = opt_.master_key.empty() ? std::string("none") : fingerprint(opt_.key.public_key);
          log::error("the master refused this worker's key at the handshake (key " + fp + ", ZAP status " +
                     std::to_string(e.value) + ", attempt " + std::to_string(handshake_refusals_) +
                     "): it is not admitted as '" + opt_.name + "'. On the master, `zforce workers --pending` lists it "
                     "and `zforce worker approve " + opt_.name + " --key " + fp +
                     "` admits it; retrying with a fresh connection in " + std::to_string(backoff_.count()) + " ms");
        }
        reconnect_after_backoff(now);
        return;
      }
      case HandshakeEvent::Kind::ProtocolError:
        log::error("handshake with the master at " + opt_.master + " failed: " + describe_protocol_error(e.value) +
                   (opt_.master_key.empty() ? " (this worker has no keys: --key and --master-key)" : "") +
                   "; retrying in " + std::to_string(backoff_.count()) + " ms");
        reconnect_after_backoff(now);
        return;
      case HandshakeEvent::Kind::NoDetail:
        // libzmq reconnects on its own; the liveness check covers the rest.
        if (!handshake_failure_logged_)
          log::warn("the connection to the master ended during the handshake" +
                    std::string(opt_.master_key.empty() ? ""
                                                        : " (is --master-key the master's master.pub? a wrong one "
                                                          "looks like this)"));
        handshake_failure_logged_ = true;
        continue;
    }
  }
}

void Worker::send(const proto::Message& m) {
  if (!socket_) return;
  pending_.push_back(proto::encode(m));
  if (!std::holds_alternative<proto::Started>(m) && !std::holds_alternative<proto::Finished>(m)) flush_pending();
  last_sent_ = Clock::now();
}

void Worker::flush_pending() {
  if (pending_.empty()) return;
  if (master_reads_batches_) {
    proto::send_batched(pending_, proto::kBatchBytes, [&](const std::string& frame) { outbox_.push_back(frame); });
  } else {
    for (auto& m : pending_) outbox_.push_back(std::move(m));
  }
  pending_.clear();
  flush_outbox();
}

// DEALER queues while the TCP link is down; a send fails only at the HWM, and
// a dropped FINISHED would leave its instance running on the master until
// this worker reconnected. So what the socket does not take waits here, in
// order, and goes first when the socket has room again (POLLOUT).
void Worker::flush_outbox() {
  while (socket_ && !outbox_.empty()) {
    if (!send_multipart(*socket_, {outbox_.front()}).ok()) {
      if (!outbox_full_logged_)
        log::warn("the link to the master is full; " + std::to_string(outbox_.size()) + " message(s) wait to be sent");
      outbox_full_logged_ = true;
      return;
    }
    outbox_.pop_front();
  }
  outbox_full_logged_ = false;
}

void Worker::on_assign(proto::Assign a, Clock::time_point now) {
  uint64_t id = a.instance;
  if (auto it = running_.find(id); it != running_.end()) {
    uint32_t running = it->second->assign().attempt;
    auto sup = superseding_.find(id);
    uint32_t newest = sup != superseding_.end() ? sup->second.attempt : running;
    if (a.attempt <= newest) {
      log::warn("ASSIGN for instance " + std::to_string(id) + " attempt " + std::to_string(a.attempt) +
                " which already runs here as attempt " + std::to_string(newest) + "; ignored");
      return;
    }
    log::warn("ASSIGN for instance " + std::to_string(id) + " attempt " + std::to_string(a.attempt) +
              " while attempt " + std::to_string(running) +
              " still runs here (the master has given that one up); stopping it, the new attempt starts when it "
              "has ended");
    it->second->stop(now);
    superseding_[id] = std::move(a);
    return;
  }
  if (unacked_.count(id) && unacked_[id].attempt == a.attempt) {
    send(unacked_[id]);  // the master missed our result: repeat it
    return;
  }
  start(std::move(a), now);
}

void Worker::start(proto::Assign a, Clock::time_point now) {
  uint64_t id = a.instance;
  if (draining_)
    log::warn("ASSIGN for instance " + std::to_string(id) + " while draining (sent before the master knew); running it");
  if (running_.size() >= opt_.slots)
    log::warn("ASSIGN for instance " + std::to_string(id) + " beyond our " + std::to_string(opt_.slots) +
              " slots; running it anyway, the master's accounting is off");
  uint32_t attempt = a.attempt;
  auto ex = std::make_unique<Execution>(std::move(a), opt_.exec, now);
  ex->advance(now);
  running_[id] = std::move(ex);
  send(proto::Started{id, attempt});
}

void Worker::handle_frame(const void* data, size_t size, bool in_batch, Clock::time_point now) {
  uint32_t minor = 0;
  auto d = proto::decode(data, size, &minor);
  if (auto* err = std::get_if<proto::DecodeError>(&d)) {
    ++malformed_;
    log::warn("undecodable message from the master dropped: " + err->reason);
    if (err->kind == proto::DecodeFailure::VersionMismatch) {
      log::error("the master speaks another protocol version: " + err->reason);
      drop_socket();
      apply(LinkEvent::Refused);
    }
    return;
  }
  auto& m = std::get<proto::Message>(d);
  if (auto* batch = std::get_if<proto::Batch>(&m)) {
    if (in_batch) {
      ++malformed_;
      log::warn("a BATCH inside a BATCH from the master dropped");
      return;
    }
    for (const auto& part : batch->messages) {
      if (!socket_) return;  // a message of the batch dropped the link
      handle_frame(part.data(), part.size(), true, now);
    }
    return;
  }
  if (std::holds_alternative<proto::Welcome>(m)) master_reads_batches_ = minor >= proto::kBatchMinor;
  handle_message(m, now);
}

void Worker::handle_message(proto::Message& m, Clock::time_point now) {
  last_recv_ = now;
  if (const auto* w = std::get_if<proto::Welcome>(&m)) {
    if (w->heartbeat_ms > 0) heartbeat_ = std::chrono::milliseconds(w->heartbeat_ms);
    if (w->liveness > 0) liveness_ = w->liveness;
    bool first = state_ != LinkState::Connected;
    apply(LinkEvent::Welcome);
    backoff_ = opt_.backoff_min;
    if (first) {
      if (draining_) send(proto::Drain{"worker is draining"});
      for (const auto& [id, f] : unacked_) send(f);
    }
  } else if (std::holds_alternative<proto::Heartbeat>(m)) {
    // last_recv_ already refreshed
  } else if (auto* a = std::get_if<proto::Assign>(&m)) {
    if (state_ != LinkState::Connected) return;
    on_assign(std::move(*a), now);
  } else if (const auto* c = std::get_if<proto::Cancel>(&m)) {
    auto it = running_.find(c->instance);
    auto sup = superseding_.find(c->instance);
    if (sup != superseding_.end() && sup->second.attempt == c->attempt) {
      // Not started yet: it ends here, cancelled, without running.
      log::info("cancelling instance " + std::to_string(c->instance) + " attempt " + std::to_string(c->attempt) +
                " before it started");
      proto::Finished f;
      f.instance = c->instance;
      f.attempt = c->attempt;
      f.status = "cancelled";
      f.error = "cancelled before it started";
      superseding_.erase(sup);
      unacked_[f.instance] = f;
      send(f);
    } else if (it != running_.end() && it->second->assign().attempt == c->attempt) {
      log::info("cancelling instance " + std::to_string(c->instance) + " attempt " + std::to_string(c->attempt));
      it->second->stop(now);
    }
  } else if (const auto* ack = std::get_if<proto::FinishedAck>(&m)) {
    auto forget = [&](uint64_t instance, uint32_t attempt) {
      auto it = unacked_.find(instance);
      if (it != unacked_.end() && it->second.attempt == attempt) unacked_.erase(it);
    };
    forget(ack->instance, ack->attempt);
    for (const auto& a : ack->more) forget(a.instance, a.attempt);
  } else if (const auto* dr = std::get_if<proto::Drain>(&m)) {
    begin_drain("the master asked: " + dr->reason);
  } else if (const auto* d = std::get_if<proto::Disconnect>(&m)) {
    log::info("master says disconnect: " + d->reason);
    drop_socket();
    apply(LinkEvent::MasterDisconnect);
    backoff_until_ = now + opt_.backoff_min;
  } else if (const auto* r = std::get_if<proto::Refused>(&m)) {
    log::error("the master refused this worker: " + r->reason);
    drop_socket();
    apply(LinkEvent::Refused);
  } else {
    ++malformed_;
    log::warn("unexpected " + std::string(proto::msg_type_name(proto::type_of(m))) + " from the master; dropped");
  }
}

void Worker::reap_finished() {
  for (auto it = running_.begin(); it != running_.end();) {
    if (!it->second->done()) {
      ++it;
      continue;
    }
    proto::Finished f = it->second->result();
    it = running_.erase(it);
    if (auto sup = superseding_.find(f.instance); sup != superseding_.end()) {
      // The master gave this attempt up; its result would only be stale.
      log::info("instance " + std::to_string(f.instance) + " attempt " + std::to_string(f.attempt) + " ended (" +
                f.status + "); starting attempt " + std::to_string(sup->second.attempt));
      proto::Assign next = std::move(sup->second);
      superseding_.erase(sup);
      if (state_ != LinkState::Stopped) start(std::move(next), Clock::now());
      continue;
    }
    if (state_ != LinkState::Stopped) {
      unacked_[f.instance] = f;
      if (state_ == LinkState::Connected) send(f);
    }
  }
}

void Worker::advance_executions(const std::vector<zmq::pollitem_t>& items, Clock::time_point now) {
  // Those started during this turn are not in polled_: start() has advanced
  // them already, and their deadline brings them back if they need it.
  auto polled = polled_.begin();
  for (auto& [id, ex] : running_) {
    while (polled != polled_.end() && polled->id < id) ++polled;
    bool due = false;
    if (polled != polled_.end() && polled->id == id)
      for (size_t k = polled->begin; k < polled->end && !due; ++k) due = items[k].revents != 0;
    if (!due) {
      auto d = ex->deadline();
      due = d && *d <= now;
    }
    if (due) ex->advance(now);
  }
}

void Worker::check_liveness(Clock::time_point now) {
  if (state_ != LinkState::Registering && state_ != LinkState::Connected) return;
  if (now - last_recv_ > heartbeat_ * liveness_) {
    log::warn("no word from the master at " + opt_.master + " for " +
              std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - last_recv_).count()) +
              " ms; reconnecting in " + std::to_string(backoff_.count()) + " ms");
    reconnect_after_backoff(now);
    return;
  }
  if (state_ == LinkState::Connected && now - last_sent_ >= heartbeat_) send(proto::Heartbeat{});
}

Clock::time_point Worker::next_wakeup(Clock::time_point now) const {
  Clock::time_point t = now + std::chrono::seconds(60);
  auto take = [&](Clock::time_point c) { t = std::min(t, c); };
  switch (state_) {
    case LinkState::Registering: take(last_recv_ + heartbeat_ * liveness_ + std::chrono::milliseconds(1)); break;
    case LinkState::Connected:
      take(last_sent_ + heartbeat_);
      take(last_recv_ + heartbeat_ * liveness_ + std::chrono::milliseconds(1));
      break;
    case LinkState::Backoff: take(backoff_until_); break;
    case LinkState::Disconnected: take(now); break;
    default: break;
  }
  for (const auto& [id, ex] : running_)
    if (auto d = ex->deadline()) take(*d);
  return t;
}

void Worker::begin_drain(const std::string& why) {
  if (draining_) return;
  draining_ = true;
  log::info("draining (" + why + "): " + std::to_string(running_.size()) +
            " instance(s) still running; nothing new is taken");
  if (state_ == LinkState::Connected) send(proto::Drain{why});
}

// Drained: nothing runs and every result has been acknowledged.
bool Worker::drained() const { return draining_ && running_.empty() && unacked_.empty(); }

void Worker::shut_down(Clock::time_point now) {
  // Instances still running are stopped; the master sees us leave and runs
  // them elsewhere. Their results are not reported: they did not finish.
  for (auto& [id, ex] : running_) ex->stop(now);
  auto until = now + opt_.exec.kill_grace + std::chrono::milliseconds(500);
  while (!running_.empty() && Clock::now() < until) {
    std::vector<zmq::pollitem_t> items;
    for (auto& [id, ex] : running_) ex->add_poll_items(items);
    zmq::poll(items.data(), items.size(), std::chrono::milliseconds(50));
    auto t = Clock::now();
    for (auto& [id, ex] : running_) ex->advance(t);
    std::erase_if(running_, [](const auto& kv) { return kv.second->done(); });
  }
  running_.clear();  // destructors kill and reap whatever is left
  if (socket_) socket_->set(zmq::sockopt::linger, 1000);
  send(proto::Disconnect{"worker stopping"});
}

int Worker::run() {
  log::info("worker '" + opt_.name + "' with " + std::to_string(opt_.slots) + " slots, master " + opt_.master);
  std::vector<zmq::pollitem_t> items;
  std::vector<zmq::message_t> parts;
  while (true) {
    auto now = Clock::now();
    if (state_ == LinkState::Refused) return 2;
    if (state_ == LinkState::Backoff && now >= backoff_until_) apply(LinkEvent::BackoffOver);
    if (state_ == LinkState::Disconnected) connect();

    flush_pending();
    items.clear();
    if (socket_)
      items.push_back({socket_->handle(), 0, static_cast<short>(ZMQ_POLLIN | (outbox_.empty() ? 0 : ZMQ_POLLOUT)), 0});
    size_t monitor_item = items.size();
    if (monitor_) items.push_back({monitor_->socket().handle(), 0, ZMQ_POLLIN, 0});
    size_t first_fd = items.size();
    if (opt_.stop_fd >= 0) items.push_back({nullptr, opt_.stop_fd, ZMQ_POLLIN, 0});
    // Each execution's items are [its begin, the next one's begin); an
    // execution is advanced only when one of them fired or its deadline came
    // (advance() reads the pipe and tries to reap, a syscall each, and with
    // many slots most executions have nothing new on a given turn).
    polled_.clear();
    for (const auto& [id, ex] : running_) {
      const size_t begin = items.size();
      ex->add_poll_items(items);
      polled_.push_back({id, begin, items.size()});
    }

    auto wake = next_wakeup(now);
    auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now);
    if (timeout.count() < 0) timeout = std::chrono::milliseconds(0);
    // +1 ms: poll rounds down, and waking just before a deadline spins.
    poll_items(items.data(), items.size(), timeout + std::chrono::milliseconds(timeout.count() > 0 ? 1 : 0));
    now = Clock::now();

    if (opt_.stop_fd >= 0 && (items[first_fd].revents & ZMQ_POLLIN)) {
      // One read consumes one request, from a signalfd or an eventfd alike.
      char buf[128];
      ssize_t n = ::read(opt_.stop_fd, buf, sizeof buf);
      uint64_t requests = 1;
      if (n == 8) std::memcpy(&requests, buf, 8);  // an eventfd counts requests made meanwhile
      if (!draining_ && requests == 1) {
        begin_drain("stop requested");
      } else {
        log::info("second stop request: stopping now");
        apply(LinkEvent::Stop);
        shut_down(now);
        return 0;
      }
    }
    if (socket_ && (items[0].revents & ZMQ_POLLIN)) {
      // Bounded batch per turn so executions are never starved.
      for (int i = 0; i < 256 && socket_ && recv_multipart(*socket_, parts); ++i) {
        if (parts.size() != 1) {
          ++malformed_;
          continue;
        }
        handle_frame(parts[0].data(), parts[0].size(), false, now);
      }
    }
    if (socket_ && (items[0].revents & ZMQ_POLLOUT)) flush_outbox();
    if (monitor_ && monitor_item < first_fd && (items[monitor_item].revents & ZMQ_POLLIN)) on_handshake_events(now);
    advance_executions(items, now);
    reap_finished();
    if (drained()) {
      log::info("drained: leaving");
      if (socket_) socket_->set(zmq::sockopt::linger, 1000);  // let DISCONNECT go out
      send(proto::Disconnect{"drained"});
      apply(LinkEvent::Stop);
      return 0;
    }
    check_liveness(now);
  }
}

}  // namespace zf
