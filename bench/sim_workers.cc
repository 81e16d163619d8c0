// Many simulated workers in one process, for scripts/bench.sh
// (workers_1000_dispatch_per_s). Each simulated worker is one DEALER
// connection that speaks the worker protocol as worker/worker.cc does:
//
//  * READY (name = routing id, slots, running = its unacknowledged results)
//    on every (re)connection; WELCOME sets the heartbeat and liveness.
//  * ASSIGN: STARTED, then at once FINISHED, in one BATCH frame when the
//    master reads batches (its WELCOME is protocol 1.1 or later), as the
//    worker sends what one turn of its loop produced. Steps that are all
//    `builtin = "noop"` succeed (exit 0); anything else fails with exit code 2
//    ("this simulated worker runs only builtin noop"), as a worker without the
//    builtin would. An ASSIGN repeating an unacknowledged result is answered
//    with that result again.
//  * FINISHED is kept until FINISHED_ACK and sent again after each WELCOME.
//  * HEARTBEAT when nothing else was sent for one interval; no word from the
//    master for liveness intervals: close, reconnect after a backoff doubling
//    from 100 ms to 2 s. DISCONNECT from the master: reconnect after 100 ms.
//  * CANCEL: nothing runs (noop ends at once), so there is nothing to stop.
//  * DRAIN from the master: answer DRAIN, then (every result acknowledged)
//    DISCONNECT("drained"), and that simulated worker is gone.
//  * REFUSED: that simulated worker stops; the process exits 2 when all did.
//  * SIGINT/SIGTERM: every simulated worker sends DISCONNECT("worker
//    stopping") and the process exits 0 (like a worker's second SIGTERM: the
//    master re-queues what was not acknowledged).
//
//   zforce-bench-sim-workers --master EP [--count 1000] [--slots 1]
//       [--prefix sim-] [--threads 1] [--io-threads 1] [--connect-rate 1000] [--verbose]
//
// --threads T: T loops, each owning count/T of the sockets (one epoll set
// over its share; one loop was not the bottleneck on 2 cores: 2 loops or 2
// I/O threads gave the same rate). --connect-rate: new connections per
// second (see timers(); on the 2-core VM, 1,000 at 5,000/s joined in 2.5 s
// with ~300 re-registrations, at 1,000/s in 2.6 s with none). The last line
// on stderr counts what was done.

#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include "bench/bench_util.h"
#include "common/protocol.h"
#include "common/signals.h"
#include "common/zmq_util.h"

namespace {

namespace proto = zf::proto;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const char* kVersion = "zforce-bench-sim-workers 0.1.0";

[[noreturn]] void die(const std::string& why) { zf::bench::die("sim-workers", why); }

struct Args {
  std::string master;
  int count = 1000;
  uint32_t slots = 1;
  std::string prefix = "sim-";
  int threads = 1;
  int io_threads = 1;
  int connect_rate = 1000;  // new connections per second, all loops together
  bool verbose = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--verbose" || k == "-v") {
      a.verbose = true;
      continue;
    }
    if (i + 1 >= argc) die("missing value after " + k);
    std::string v = argv[++i];
    if (k == "--master") a.master = v;
    else if (k == "--count") a.count = std::atoi(v.c_str());
    else if (k == "--slots") a.slots = static_cast<uint32_t>(std::atoi(v.c_str()));
    else if (k == "--prefix") a.prefix = v;
    else if (k == "--threads") a.threads = std::atoi(v.c_str());
    else if (k == "--io-threads") a.io_threads = std::atoi(v.c_str());
    else if (k == "--connect-rate") a.connect_rate = std::atoi(v.c_str());
    else die("unknown option " + k);
  }
  if (a.master.empty() || a.count < 1 || a.slots < 1 || a.slots > 100000 || a.threads < 1 || a.io_threads < 1 ||
      a.connect_rate < 1)
    die("usage: --master EP [--count N] [--slots N] [--prefix P] [--threads T] [--io-threads N] "
        "[--connect-rate PER_S] [--verbose]");
  a.threads = std::min(a.threads, a.count);
  return a;
}

// What every loop adds up; read by the main thread at the end.
struct Totals {
  std::atomic<uint64_t> assigned{0}, succeeded{0}, failed{0}, repeated{0}, acked{0}, heartbeats{0};
  std::atomic<uint64_t> welcomes{0}, reconnects{0}, disconnected_by_master{0}, cancels{0}, drained{0};
  std::atomic<uint64_t> refused{0}, malformed{0};
  std::atomic<int> connected{0};
};

enum class Link { Disconnected, Registering, Connected, Backoff, Gone, Refused };

struct SimWorker {
  std::string name;
  std::unique_ptr<zmq::socket_t> socket;
  Link link = Link::Disconnected;
  std::chrono::milliseconds heartbeat{250};
  uint32_t liveness = 4;
  std::chrono::milliseconds backoff{100};
  Clock::time_point backoff_until{};
  Clock::time_point last_recv{};
  Clock::time_point last_sent{};
  std::map<uint64_t, proto::Finished> unacked;  // results until FINISHED_ACK
  bool master_reads_batches = false;  // from its WELCOME
  bool draining = false;
  int fd = -1;        // the socket's ZMQ_FD, in the loop's epoll set
  uint64_t turn = 0;  // the loop turn that last read it
};

class Loop {
 public:
  Loop(zmq::context_t& ctx, const Args& a, int first, int n, Totals& totals, const std::atomic<bool>& stop)
      : ctx_(ctx), a_(a), totals_(totals), stop_(stop) {
    workers_.resize(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%04d", first + i);
      workers_[static_cast<size_t>(i)].name = a.prefix + buf;
    }
  }

  ~Loop() {
    if (epoll_ >= 0) ::close(epoll_);
  }

  // Runs until stop is set or every simulated worker is gone or refused.
  //
  // zmq_poll over 1,000 sockets asks each for ZMQ_EVENTS on every call (a
  // getpid system call each, in libzmq's fork check) and polls 1,000 fds:
  // it kept one core busy with idle sockets. Instead, epoll watches every
  // socket's ZMQ_FD and only signalled sockets are read. ZMQ_FD only says
  // "look at this socket": a send may consume the wake-up of a message that
  // then waits unseen, so a socket we sent to outside service() (READY,
  // HEARTBEAT) is looked at on the next turn, and once a second all are
  // (a safety net; each look costs libzmq a poll and a getpid system call).
  void run() {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_ < 0) die(std::string("epoll_create1: ") + std::strerror(errno));
    std::vector<epoll_event> events(1024);
    std::vector<size_t> todo;
    auto last_timers = Clock::time_point{}, last_sweep = Clock::time_point{};
    uint64_t turn = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), pending_.empty() ? 10 : 0);
      auto now = Clock::now();
      ++turn;
      todo.clear();
      todo.swap(pending_);
      for (int i = 0; i < n; ++i) todo.push_back(static_cast<size_t>(events[static_cast<size_t>(i)].data.u64));
      if (now - last_sweep >= 1s) {
        last_sweep = now;
        for (size_t i = 0; i < workers_.size(); ++i)
          if (workers_[i].socket) todo.push_back(i);
      }
      for (size_t i : todo) {
        SimWorker& w = workers_[i];
        if (w.turn == turn || !w.socket) continue;
        w.turn = turn;
        service(w, i, now);
      }
      // Timers (connect, backoff, heartbeats, liveness) every 10 ms at most:
      // a scan of every simulated worker is too dear for every turn. After
      // reading, as the worker does: a loop that was not scheduled for a
      // while must not call the master silent while its words wait unread.
      now = Clock::now();
      if (now - last_timers >= 10ms) {
        last_timers = now;
        if (!timers(now)) break;
      }
    }
    if (stop_.load()) {
      for (auto& w : workers_)
        if (w.socket && (w.link == Link::Connected || w.link == Link::Registering)) {
          w.socket->set(zmq::sockopt::linger, 500);
          send(w, proto::Disconnect{"worker stopping"});
        }
    }
    for (auto& w : workers_) w.socket.reset();
  }

 private:
  // Reads what waits on one socket (a bounded batch: the others must not
  // starve); if more is left, or it may be, it is looked at again next turn.
  void service(SimWorker& w, size_t index, Clock::time_point now) {
    int i = 0;
    for (; i < 256 && w.socket && zf::recv_multipart(*w.socket, parts_); ++i) {
      if (parts_.size() != 1) {
        ++totals_.malformed;
        continue;
      }
      handle_frame(w, parts_[0].data(), parts_[0].size(), false, now);
    }
    if (i == 256 && w.socket) pending_.push_back(index);
  }

  // One frame, or one message of a BATCH (from a 1.1 master), as the worker does.
  void handle_frame(SimWorker& w, const void* data, size_t size, bool in_batch, Clock::time_point now) {
    uint32_t minor = 0;
    auto d = proto::decode(data, size, &minor);
    auto* m = std::get_if<proto::Message>(&d);
    if (!m || (in_batch && std::holds_alternative<proto::Batch>(*m))) {
      ++totals_.malformed;
      return;
    }
    if (auto* b = std::get_if<proto::Batch>(m)) {
      for (const auto& part : b->messages)
        if (w.socket) handle_frame(w, part.data(), part.size(), true, now);
      return;
    }
    if (std::holds_alternative<proto::Welcome>(*m)) w.master_reads_batches = minor >= proto::kBatchMinor;
    handle(w, *m, now);
  }

  void send(SimWorker& w, const proto::Message& m) { send_frame(w, proto::encode(m)); }

  void send_frame(SimWorker& w, const std::string& bytes) {
    if (!w.socket) return;
    (void)zf::send_multipart(*w.socket, {bytes});  // as the worker: a full HWM is covered by resend-after-reconnect
    w.last_sent = Clock::now();
  }

  void connect(SimWorker& w, Clock::time_point now) {
    try {
      w.socket = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
    } catch (const zmq::error_t& e) {
      // Closed sockets are freed by libzmq's reaper a little later; until
      // then they count against ZMQ_MAX_SOCKETS (and their fds, the limit).
      if (a_.verbose) std::fprintf(stderr, "sim-workers: %s: no socket (%s); retrying\n", w.name.c_str(), e.what());
      w.link = Link::Backoff;
      w.backoff_until = now + 100ms;
      return;
    }
    w.socket->set(zmq::sockopt::routing_id, w.name);
    w.socket->set(zmq::sockopt::linger, 0);
    w.socket->set(zmq::sockopt::maxmsgsize, proto::kMaxMessageBytes);
    w.socket->set(zmq::sockopt::reconnect_ivl, 100);
    w.socket->connect(a_.master);
    proto::Ready r;
    r.name = w.name;
    r.slots = a_.slots;
    r.version = kVersion;
    for (const auto& [id, f] : w.unacked) r.running.push_back({id, f.attempt});
    w.last_recv = now;  // the registration deadline counts from here
    w.fd = w.socket->get(zmq::sockopt::fd);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = static_cast<uint64_t>(&w - workers_.data());
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, w.fd, &ev) != 0) die(std::string("epoll_ctl: ") + std::strerror(errno));
    send(w, r);
    pending_.push_back(static_cast<size_t>(ev.data.u64));
    w.link = Link::Registering;
  }

  void drop(SimWorker& w) {
    if (w.link == Link::Connected) --totals_.connected;
    // Before the close: libzmq closes the fd later, on its reaper thread.
    if (w.socket) ::epoll_ctl(epoll_, EPOLL_CTL_DEL, w.fd, nullptr);
    w.socket.reset();
  }

  // False once no simulated worker of this loop is left.
  bool timers(Clock::time_point now) {
    bool any = false;
    // Connections are paced: in a burst the master's WELCOMEs (and, beyond
    // its listen backlog of 100, the TCP handshakes) fall behind, and a
    // worker without WELCOME within heartbeat x liveness reconnects, which
    // only adds READYs to the burst.
    auto elapsed = std::chrono::duration<double>(now - last_budget_).count();
    last_budget_ = now;
    double rate = static_cast<double>(a_.connect_rate) / a_.threads;
    budget_ = std::min(budget_ + elapsed * rate, std::max(1.0, rate / 100));
    for (auto& w : workers_) {
      switch (w.link) {
        case Link::Gone:
        case Link::Refused: continue;
        case Link::Backoff:
          if (now >= w.backoff_until && budget_ >= 1) {
            budget_ -= 1;
            ++totals_.reconnects;
            connect(w, now);
          }
          break;
        case Link::Disconnected:
          if (budget_ >= 1) {
            budget_ -= 1;
            connect(w, now);
          }
          break;
        case Link::Registering:
        case Link::Connected:
          if (now - w.last_recv > w.heartbeat * w.liveness) {
            if (a_.verbose)
              std::fprintf(stderr, "sim-workers: %s: no word from the master; reconnecting in %lld ms\n",
                           w.name.c_str(), static_cast<long long>(w.backoff.count()));
            drop(w);
            w.link = Link::Backoff;
            w.backoff_until = now + w.backoff;
            w.backoff = std::min(w.backoff * 2, std::chrono::milliseconds(2000));
          } else if (w.link == Link::Connected && now - w.last_sent >= w.heartbeat) {
            ++totals_.heartbeats;
            send(w, proto::Heartbeat{});
            pending_.push_back(static_cast<size_t>(&w - workers_.data()));
          }
          break;
      }
      any = true;
    }
    return any;
  }

  void on_assign(SimWorker& w, const proto::Assign& a) {
    ++totals_.assigned;
    if (auto it = w.unacked.find(a.instance); it != w.unacked.end() && it->second.attempt == a.attempt) {
      ++totals_.repeated;
      send(w, it->second);  // the master missed our result: repeat it
      return;
    }
    proto::Finished f;
    f.instance = a.instance;
    f.attempt = a.attempt;
    f.failed_step = -1;
    f.status = "succeeded";
    for (size_t i = 0; i < a.steps.size(); ++i)
      if (a.steps[i].kind != "builtin" || a.steps[i].builtin != "noop") {
        f.status = "failed";
        f.exit_code = 2;
        f.failed_step = static_cast<int32_t>(i);
        f.error = "step '" + a.steps[i].name + "': this simulated worker runs only builtin noop";
        break;
      }
    ++(f.status == "succeeded" ? totals_.succeeded : totals_.failed);
    if (w.master_reads_batches) {
      const std::string both[] = {proto::encode(proto::Message{proto::Started{a.instance, a.attempt}}),
                                  proto::encode(proto::Message{f})};
      send_frame(w, proto::encode_batch(both));
    } else {
      send(w, proto::Started{a.instance, a.attempt});
      send(w, f);
    }
    w.unacked.insert_or_assign(a.instance, std::move(f));  // a newer attempt replaces an older one
  }

  void handle(SimWorker& w, proto::Message& m, Clock::time_point now) {
    w.last_recv = now;
    if (const auto* wel = std::get_if<proto::Welcome>(&m)) {
      if (wel->heartbeat_ms > 0) w.heartbeat = std::chrono::milliseconds(wel->heartbeat_ms);
      if (wel->liveness > 0) w.liveness = wel->liveness;
      ++totals_.welcomes;
      w.backoff = 100ms;
      if (w.link != Link::Connected) {
        w.link = Link::Connected;
        ++totals_.connected;
        if (w.draining) send(w, proto::Drain{"worker is draining"});
        for (const auto& [id, f] : w.unacked) send(w, f);
      }
    } else if (std::holds_alternative<proto::Heartbeat>(m)) {
      // last_recv already refreshed
    } else if (const auto* a = std::get_if<proto::Assign>(&m)) {
      if (w.link == Link::Connected) on_assign(w, *a);
    } else if (std::holds_alternative<proto::Cancel>(m)) {
      ++totals_.cancels;  // nothing runs here: noop instances end at once
    } else if (const auto* ack = std::get_if<proto::FinishedAck>(&m)) {
      auto forget = [&](uint64_t instance, uint32_t attempt) {
        auto it = w.unacked.find(instance);
        if (it != w.unacked.end() && it->second.attempt == attempt) {
          w.unacked.erase(it);
          ++totals_.acked;
        }
      };
      forget(ack->instance, ack->attempt);
      for (const auto& more : ack->more) forget(more.instance, more.attempt);
    } else if (std::holds_alternative<proto::Drain>(m)) {
      if (!w.draining) {
        w.draining = true;
        if (w.link == Link::Connected) send(w, proto::Drain{"the master asked"});
      }
    } else if (const auto* d = std::get_if<proto::Disconnect>(&m)) {
      ++totals_.disconnected_by_master;
      if (a_.verbose) std::fprintf(stderr, "sim-workers: %s: master says disconnect: %s\n", w.name.c_str(), d->reason.c_str());
      drop(w);
      w.link = Link::Backoff;
      w.backoff_until = now + 100ms;
      return;
    } else if (const auto* r = std::get_if<proto::Refused>(&m)) {
      ++totals_.refused;
      std::fprintf(stderr, "sim-workers: %s: the master refused: %s\n", w.name.c_str(), r->reason.c_str());
      drop(w);
      w.link = Link::Refused;
      return;
    } else {
      ++totals_.malformed;
      return;
    }
    if (w.draining && w.link == Link::Connected && w.unacked.empty()) {
      w.socket->set(zmq::sockopt::linger, 1000);  // let DISCONNECT go out
      send(w, proto::Disconnect{"drained"});
      ++totals_.drained;
      drop(w);
      w.link = Link::Gone;
    }
  }

  zmq::context_t& ctx_;
  const Args& a_;
  Totals& totals_;
  const std::atomic<bool>& stop_;
  std::vector<SimWorker> workers_;
  int epoll_ = -1;
  std::vector<size_t> pending_;  // sockets to look at next turn whatever epoll says
  std::vector<zmq::message_t> parts_;
  double budget_ = 1;  // connections this loop may open now
  Clock::time_point last_budget_ = Clock::now();
};

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  // Each simulated worker holds a TCP socket and a mailbox eventfd, and the
  // closed ones not yet reaped count too.
  zf::bench::raise_fd_limit("sim-workers", static_cast<rlim_t>(a.count) * 4 + 256,
                            std::to_string(a.count) + " simulated workers");
  auto sigfd = zf::block_stop_signals_into_fd();  // before any thread starts
  if (!sigfd.ok()) die(sigfd.error().message);

  zmq::context_t ctx(a.io_threads);
  ctx.set(zmq::ctxopt::max_sockets, 2 * a.count + 64);  // room for closed ones not yet reaped
  Totals totals;
  std::atomic<bool> stop{false};
  std::vector<std::unique_ptr<Loop>> loops;
  int per = a.count / a.threads, extra = a.count % a.threads, first = 0;
  for (int t = 0; t < a.threads; ++t) {
    int n = per + (t < extra ? 1 : 0);
    loops.push_back(std::make_unique<Loop>(ctx, a, first, n, totals, stop));
    first += n;
  }
  std::vector<std::thread> threads;
  for (auto& l : loops) threads.emplace_back([&l]() { l->run(); });
  std::fprintf(stderr, "sim-workers: %d simulated workers x %u slots, %d loop thread(s), master %s\n", a.count,
               a.slots, a.threads, a.master.c_str());

  // The main thread waits for a stop signal, or for every loop to end.
  std::atomic<int> running{a.threads};
  std::thread watcher([&]() {
    for (auto& t : threads) t.join();
    running = 0;
  });
  auto next_report = Clock::now() + 1s;
  while (running.load() > 0) {
    zmq::pollitem_t item{nullptr, *sigfd, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, 100ms);
    if (a.verbose && Clock::now() >= next_report) {
      next_report += 1s;
      std::fprintf(stderr, "sim-workers: %d connected, %llu assigned\n", totals.connected.load(),
                   static_cast<unsigned long long>(totals.assigned.load()));
    }
    if (item.revents & ZMQ_POLLIN) {
      zf::consume_signal(*sigfd);
      stop = true;
      break;
    }
  }
  watcher.join();
  std::fprintf(stderr,
               "sim-workers: assigned %llu (succeeded %llu, failed %llu, repeated %llu), acked %llu, "
               "welcomes %llu, reconnects %llu, disconnects from the master %llu, heartbeats %llu, cancels %llu, "
               "drained %llu, refused %llu, malformed %llu\n",
               static_cast<unsigned long long>(totals.assigned.load()),
               static_cast<unsigned long long>(totals.succeeded.load()),
               static_cast<unsigned long long>(totals.failed.load()),
               static_cast<unsigned long long>(totals.repeated.load()),
               static_cast<unsigned long long>(totals.acked.load()),
               static_cast<unsigned long long>(totals.welcomes.load()),
               static_cast<unsigned long long>(totals.reconnects.load()),
               static_cast<unsigned long long>(totals.disconnected_by_master.load()),
               static_cast<unsigned long long>(totals.heartbeats.load()),
               static_cast<unsigned long long>(totals.cancels.load()),
               static_cast<unsigned long long>(totals.drained.load()),
               static_cast<unsigned long long>(totals.refused.load()),
               static_cast<unsigned long long>(totals.malformed.load()));
  return totals.refused.load() > 0 && !stop.load() ? 2 : 0;
}
