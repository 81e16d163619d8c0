// Many simulated workers in one process, for scripts/bench.sh
// (workers_1000_dispatch_per_s). Each simulated worker is one DEALER
// connection that speaks the worker protocol as worker/worker.cc does:
//
//  * READY (name = routing id, slots, running = its unacknowledged results)
//    on every (re)connection; WELCOME sets the heartbeat and liveness.
//  * ASSIGN: STARTED, then at once FINISHED. Steps that are all
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
//       [--prefix sim-] [--threads 1] [--io-threads 1] [--connect-rate 5000] [--verbose]
//
// --threads T: T loops, each owning count/T of the sockets (one zmq_poll
// over its share). --connect-rate: new connections per second (the master's
// listen backlog is 100; a burst of 1,000 loses SYNs, see timers()). The
// last line on stderr counts what was done.

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

#include "common/protocol.h"
#include "common/signals.h"
#include "common/zmq_util.h"

namespace {

namespace proto = zf::proto;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

const char* kVersion = "zforce-bench-sim-workers 0.1.0";

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "sim-workers: %s\n", why.c_str());
  std::exit(1);
}

struct Args {
  std::string master;
  int count = 1000;
  uint32_t slots = 1;
  std::string prefix = "sim-";
  int threads = 1;
  int io_threads = 1;
  int connect_rate = 5000;  // new connections per second, all loops together
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
  bool draining = false;
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

  // Runs until stop is set or every simulated worker is gone or refused.
  void run() {
    std::vector<zmq::message_t> parts;
    auto last_timers = Clock::time_point{};
    while (!stop_.load(std::memory_order_relaxed)) {
      auto now = Clock::now();
      // Timers (connect, backoff, heartbeats, liveness) every 10 ms at most:
      // a scan of every simulated worker is too dear for every turn.
      if (now - last_timers >= 10ms) {
        last_timers = now;
        if (!timers(now)) break;
      }
      if (items_dirty_) rebuild_items();
      int ready = zmq::poll(items_.data(), items_.size(), 10ms);
      if (ready <= 0) continue;
      now = Clock::now();
      for (size_t k = 0; k < items_.size(); ++k) {
        if (!(items_[k].revents & ZMQ_POLLIN)) continue;
        SimWorker& w = workers_[owner_[k]];
        for (int i = 0; i < 256 && w.socket && zf::recv_multipart(*w.socket, parts); ++i) {
          if (parts.size() != 1) {
            ++totals_.malformed;
            continue;
          }
          auto d = proto::decode(parts[0].data(), parts[0].size());
          auto* m = std::get_if<proto::Message>(&d);
          if (!m) {
            ++totals_.malformed;
            continue;
          }
          handle(w, *m, now);
        }
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
  void rebuild_items() {
    items_.clear();
    owner_.clear();
    for (size_t i = 0; i < workers_.size(); ++i)
      if (workers_[i].socket) {
        items_.push_back({workers_[i].socket->handle(), 0, ZMQ_POLLIN, 0});
        owner_.push_back(i);
      }
    items_dirty_ = false;
  }

  void send(SimWorker& w, const proto::Message& m) {
    if (!w.socket) return;
    std::string bytes = proto::encode(m);
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
    send(w, r);
    w.link = Link::Registering;
    items_dirty_ = true;
  }

  void drop(SimWorker& w) {
    if (w.link == Link::Connected) --totals_.connected;
    w.socket.reset();
    items_dirty_ = true;
  }

  // False once no simulated worker of this loop is left.
  bool timers(Clock::time_point now) {
    bool any = false;
    // Connections are paced: a burst beyond the master's listen backlog
    // (ZMQ_BACKLOG, 100) loses SYNs, whose retry after 1 s outlasts the
    // registration deadline (heartbeat x liveness), and the worker reconnects.
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
    send(w, proto::Started{a.instance, a.attempt});
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
    send(w, f);
    w.unacked.emplace(a.instance, std::move(f));
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
      auto it = w.unacked.find(ack->instance);
      if (it != w.unacked.end() && it->second.attempt == ack->attempt) {
        w.unacked.erase(it);
        ++totals_.acked;
      }
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
  std::vector<zmq::pollitem_t> items_;
  std::vector<size_t> owner_;  // items_[k] is the socket of workers_[owner_[k]]
  bool items_dirty_ = true;
  double budget_ = 1;  // connections this loop may open now
  Clock::time_point last_budget_ = Clock::now();
};

// Each simulated worker holds a TCP socket and a mailbox eventfd.
void raise_fd_limit(int workers) {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0) die(std::string("getrlimit: ") + std::strerror(errno));
  rlim_t want = static_cast<rlim_t>(workers) * 4 + 256;  // and the closed ones not yet reaped
  if (r.rlim_cur >= want) return;
  if (r.rlim_max != RLIM_INFINITY && r.rlim_max < want)
    die("need " + std::to_string(want) + " file descriptors for " + std::to_string(workers) +
        " simulated workers, the hard limit is " + std::to_string(r.rlim_max) + " (raise it: ulimit -Hn)");
  r.rlim_cur = want;
  if (::setrlimit(RLIMIT_NOFILE, &r) != 0) die(std::string("setrlimit: ") + std::strerror(errno));
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  raise_fd_limit(a.count);
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
