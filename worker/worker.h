// The worker library: one DEALER connection to the master and the instances
// it was assigned. zforce-worker runs it on its main thread; zforce-master
// runs one on a thread of its own, connected over inproc://, for its local
// slots. Everything here belongs to the thread that calls run().
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "common/curve_keys.h"
#include "common/handshake_monitor.h"
#include "common/protocol.h"
#include "worker/execution.h"
#include "worker/link_state.h"

namespace zf {

struct WorkerOptions {
  std::string master;  // endpoint of the master's worker ROUTER
  std::string name;
  uint32_t slots = 1;
  std::vector<std::string> tags;
  // Readable when the worker must stop (signalfd or eventfd); -1 = none.
  // The first stop request drains (nothing new is taken, what runs finishes
  // and is reported, then the worker leaves); a second one stops at once.
  int stop_fd = -1;
  ExecutionConfig exec;
  // Until the master says otherwise in WELCOME.
  std::chrono::milliseconds heartbeat{250};
  uint32_t liveness = 4;
  std::chrono::milliseconds backoff_min{100};
  std::chrono::milliseconds backoff_max{2000};
  // CURVE (docs/security.md): this worker's key pair and the master's public
  // key (master.pub). Empty master_key: no keys, the NULL mechanism.
  KeyPair key;
  std::string master_key;
};

class Worker {
 public:
  Worker(zmq::context_t& ctx, WorkerOptions options);
  ~Worker();

  // Runs until stopped (0) or refused by the master (2).
  int run();

 private:
  void apply(LinkEvent e);
  void connect();
  void drop_socket();
  // Drops the socket and connects a fresh one after the backoff (which
  // doubles up to backoff_max): a lost master, or a refused handshake, which
  // libzmq does not retry on the same socket.
  void reconnect_after_backoff(Clock::time_point now);
  void on_handshake_events(Clock::time_point now);
  // STARTED and FINISHED wait in pending_ until the loop is about to poll,
  // so that one iteration's go out as one BATCH; any other message goes at
  // once, after them.
  void send(const proto::Message& m);
  void flush_pending();
  void flush_outbox();
  // One frame from the master (or one message of its BATCH).
  void handle_frame(const void* data, size_t size, bool in_batch, Clock::time_point now);
  void handle_message(proto::Message& m, Clock::time_point now);
  void on_assign(proto::Assign a, Clock::time_point now);
  void start(proto::Assign a, Clock::time_point now);
  // Advances the executions that one of their poll items or their deadline
  // woke; items are this turn's poll items.
  void advance_executions(const std::vector<zmq::pollitem_t>& items, Clock::time_point now);
  void reap_finished();
  void check_liveness(Clock::time_point now);
  Clock::time_point next_wakeup(Clock::time_point now) const;
  void shut_down(Clock::time_point now);
  void begin_drain(const std::string& why);
  bool drained() const;

  zmq::context_t& ctx_;
  WorkerOptions opt_;
  std::unique_ptr<zmq::socket_t> socket_;
  // Handshake outcomes of socket_ (not on inproc://, which has no handshake).
  std::unique_ptr<HandshakeMonitor> monitor_;
  uint64_t handshake_refusals_ = 0;  // in a row, for the log
  bool handshake_failure_logged_ = false;  // on this socket
  LinkState state_ = LinkState::Disconnected;
  std::chrono::milliseconds heartbeat_;
  uint32_t liveness_;
  std::chrono::milliseconds backoff_;
  Clock::time_point backoff_until_{};
  Clock::time_point last_recv_{};
  Clock::time_point last_sent_{};
  std::map<uint64_t, std::unique_ptr<Execution>> running_;
  // Where each execution's items are in this turn's poll set, in id order
  // (running_'s order when the set was built).
  struct PolledExecution {
    uint64_t id;
    size_t begin;
    size_t end;
  };
  std::vector<PolledExecution> polled_;
  // A newer attempt of an instance whose older attempt still runs here (the
  // master declared the older one lost, e.g. when this worker re-registered
  // while its ASSIGN was on the way). The older one is stopped; the newer one
  // starts once it has ended, so two copies never run at once.
  std::map<uint64_t, proto::Assign> superseding_;
  // Results not yet acknowledged by the master, resent after a reconnect.
  std::map<uint64_t, proto::Finished> unacked_;
  // Encoded messages of this iteration not yet handed to the socket.
  std::vector<std::string> pending_;
  // Whether the master reads BATCH (its WELCOME was protocol 1.1 or later).
  bool master_reads_batches_ = false;
  // Encoded frames the socket would not take yet (its HWM was reached), oldest first.
  std::deque<std::string> outbox_;
  bool outbox_full_logged_ = false;
  uint64_t malformed_ = 0;
  bool draining_ = false;
};

}  // namespace zf
