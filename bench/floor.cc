// The physical limits that scripts/bench.sh prints beside zforce's figures,
// measured on the same machine in the same run, with nothing of zforce in
// the way (no store, no protocol, no scheduling):
//
//   zforce-bench-floor hops [--count 2000] [--warmup 20]
//       The latency probe's path with bare libzmq: a client DEALER sends to a
//       relay process (ROUTER, as the master's api), which answers it and
//       passes the frame to an echo process (DEALER, as a worker) over a
//       second ROUTER; the echo sends it back and the relay publishes it on a
//       PUB that the client reads (SUB). Four one-way hops between three
//       processes, as submission -> instance.succeeded; one at a time.
//       Prints floor_hops_p50_ms and floor_hops_p99_ms.
//   zforce-bench-floor dealers [--peers 1000] [--count 50000]
//       A ROUTER and a process holding PEERS DEALER sockets (read through one
//       epoll set, as zforce-bench-sim-workers does) that echo every frame:
//       each peer has one frame outstanding, and each reply is answered with
//       the next frame, as 1,000 workers with 1 slot each. Prints
//       floor_dealers_per_s (round trips per second).
//   zforce-bench-floor fsync DIR [--count 2000]
//       Writes 8 KiB into a 4 MiB file in DIR (a WAL's size; written once
//       first, so later writes overwrite, as SQLite reuses its WAL) and
//       fdatasyncs it, COUNT times. Prints floor_fdatasync_p50_ms and _p99_ms.
//
// Child processes are started with fork before any ZeroMQ context exists,
// die with their parent (PR_SET_PDEATHSIG), and are stopped by pid.

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "bench/bench_util.h"
#include "common/zmq_util.h"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

[[noreturn]] void die(const std::string& why) { zf::bench::die("floor", why); }

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

using zf::bench::percentile;

// Each DEALER holds a TCP socket and a mailbox eventfd.
void raise_fd_limit(int peers) {
  zf::bench::raise_fd_limit("floor", static_cast<rlim_t>(peers) * 3 + 256, std::to_string(peers) + " DEALERs");
}

// A child process running body(); it ends with its parent.
template <typename F>
pid_t start_child(F body) {
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) die(std::string("fork: ") + std::strerror(errno));
  if (pid > 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != parent) ::_exit(0);  // the parent is already gone
  body();
  ::_exit(0);
}

void stop_child(pid_t pid) {
  ::kill(pid, SIGTERM);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

// One line over a pipe (endpoints between the processes).
void write_line(int fd, const std::string& s) {
  std::string line = s + "\n";
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) die("pipe write failed");
}

std::string read_line(int fd) {
  std::string s;
  char c;
  while (true) {
    ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("a child process ended before it said its endpoint");
    if (c == '\n') return s;
    s.push_back(c);
  }
}

// ---- hops ---------------------------------------------------------------------

void relay(int endpoints_fd) {
  zmq::context_t ctx(1);
  zmq::socket_t api(ctx, zmq::socket_type::router), workers(ctx, zmq::socket_type::router),
      tap(ctx, zmq::socket_type::pub);
  for (auto* s : {&api, &workers, &tap}) {
    s->set(zmq::sockopt::linger, 0);
    s->bind("tcp://127.0.0.1:*");
  }
  write_line(endpoints_fd, zf::last_endpoint(api) + " " + zf::last_endpoint(workers) + " " + zf::last_endpoint(tap));
  std::string worker;
  std::vector<zmq::message_t> parts;
  zmq::pollitem_t items[] = {{api.handle(), 0, ZMQ_POLLIN, 0}, {workers.handle(), 0, ZMQ_POLLIN, 0}};
  while (true) {
    zmq::poll(items, 2, -1ms);
    while (zf::recv_multipart(api, parts))
      if (parts.size() == 2) {
        (void)zf::send_multipart(api, {zf::view(parts[0]), "accepted"});
        if (!worker.empty()) (void)zf::send_multipart(workers, {worker, zf::view(parts[1])});
      }
    while (zf::recv_multipart(workers, parts))
      if (parts.size() == 2) {
        if (zf::view(parts[1]) == "hello") worker = std::string(zf::view(parts[0]));
        else (void)zf::send_multipart(tap, {zf::view(parts[1])});
      }
  }
}

void echo(int endpoint_fd) {
  std::string ep = read_line(endpoint_fd);
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.connect(ep);
  s.send(zmq::str_buffer("hello"), zmq::send_flags::none);
  zmq::message_t m;
  while (s.recv(m, zmq::recv_flags::none)) s.send(m, zmq::send_flags::none);
}

int hops(int count, int warmup) {
  int to_parent[2], to_echo[2];
  if (::pipe(to_parent) != 0 || ::pipe(to_echo) != 0) die(std::string("pipe: ") + std::strerror(errno));
  pid_t relay_pid = start_child([&] { relay(to_parent[1]); });
  pid_t echo_pid = start_child([&] { echo(to_echo[0]); });
  // Our copies of the children's ends: without them a child that dies is an end of file.
  ::close(to_parent[1]);
  ::close(to_echo[0]);
  std::string line = read_line(to_parent[0]);
  auto sp1 = line.find(' '), sp2 = line.rfind(' ');
  if (sp1 == std::string::npos || sp1 == sp2) die("bad endpoints from the relay: " + line);
  write_line(to_echo[1], line.substr(sp1 + 1, sp2 - sp1 - 1));

  std::vector<double> samples;
  {
    zmq::context_t ctx(1);
    zmq::socket_t api(ctx, zmq::socket_type::dealer), sub(ctx, zmq::socket_type::sub);
    api.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::subscribe, "");
    api.connect(line.substr(0, sp1));
    sub.connect(line.substr(sp2 + 1));
    // A frame the size of a small instance event.
    std::string body(160, 'x');
    uint64_t seq = 0;
    // One round: true when our frame came back on the tap within the wait.
    auto one = [&](Clock::duration wait, double* took) {
      ++seq;
      std::memcpy(body.data(), &seq, sizeof seq);
      auto t0 = Clock::now();
      api.send(zmq::buffer(body), zmq::send_flags::none);
      zmq::message_t m;
      zmq::pollitem_t reply{api.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&reply, 1, std::chrono::duration_cast<std::chrono::milliseconds>(wait)) == 0) return false;
      (void)api.recv(m, zmq::recv_flags::none);
      auto deadline = t0 + wait;
      while (Clock::now() < deadline) {
        zmq::pollitem_t ev{sub.handle(), 0, ZMQ_POLLIN, 0};
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()) + 1ms;
        if (zmq::poll(&ev, 1, left) == 0) return false;
        (void)sub.recv(m, zmq::recv_flags::none);
        uint64_t got = 0;
        if (m.size() >= sizeof got) std::memcpy(&got, m.data(), sizeof got);
        if (got == seq) {
          *took = ms(Clock::now() - t0);
          return true;
        }
      }
      return false;
    };
    // Until the echo has said hello and the SUB has joined, frames are lost.
    double took = 0;
    int ok = 0;
    for (int tries = 0; ok < warmup && tries < 200; ++tries) ok += one(100ms, &took) ? 1 : 0;
    if (ok < warmup) die("the relay and the echo process never answered");
    for (int i = 0; i < count; ++i) {
      if (!one(10s, &took)) die("a frame did not come back within 10 s");
      samples.push_back(took);
    }
  }
  stop_child(echo_pid);
  stop_child(relay_pid);
  std::printf("floor_hops_p50_ms: %.3f\nfloor_hops_p99_ms: %.3f\n", percentile(samples, 50), percentile(samples, 99));
  return 0;
}

// ---- dealers ------------------------------------------------------------------

// PEERS DEALERs echoing every frame; epoll over their ZMQ_FDs, reading each
// signalled socket until it has nothing more (ZMQ_FD is edge-triggered).
void dealers_child(int endpoint_fd, int peers) {
  std::string ep = read_line(endpoint_fd);
  raise_fd_limit(peers);
  zmq::context_t ctx(1);
  ctx.set(zmq::ctxopt::max_sockets, 2 * peers + 64);
  std::vector<std::unique_ptr<zmq::socket_t>> socks;
  int ep_fd = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep_fd < 0) die(std::string("epoll_create1: ") + std::strerror(errno));
  for (int i = 0; i < peers; ++i) {
    auto s = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::dealer);
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::routing_id, "peer-" + std::to_string(i));
    s->connect(ep);
    s->send(zmq::str_buffer("hello"), zmq::send_flags::none);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<uint32_t>(i);
    int fd = s->get(zmq::sockopt::fd);
    if (::epoll_ctl(ep_fd, EPOLL_CTL_ADD, fd, &ev) != 0) die(std::string("epoll_ctl: ") + std::strerror(errno));
    socks.push_back(std::move(s));
  }
  std::vector<epoll_event> events(1024);
  zmq::message_t m;
  auto service = [&](zmq::socket_t& s) {
    while (s.recv(m, zmq::recv_flags::dontwait)) s.send(m, zmq::send_flags::dontwait);
  };
  while (true) {
    int n = ::epoll_wait(ep_fd, events.data(), static_cast<int>(events.size()), 100);
    if (n == 0)  // a safety net, as in the simulator: look at every socket when idle
      for (auto& s : socks) service(*s);
    for (int i = 0; i < n; ++i) service(*socks[events[static_cast<size_t>(i)].data.u32]);
  }
}

int dealers(int peers, int count) {
  int to_child[2];
  if (::pipe(to_child) != 0) die(std::string("pipe: ") + std::strerror(errno));
  pid_t child = start_child([&] { dealers_child(to_child[0], peers); });
  ::close(to_child[0]);
  raise_fd_limit(peers);
  double rate = 0;
  {
    zmq::context_t ctx(1);
    ctx.set(zmq::ctxopt::max_sockets, 64);
    zmq::socket_t router(ctx, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:*");
    write_line(to_child[1], zf::last_endpoint(router));
    std::vector<std::string> ids;
    std::vector<zmq::message_t> parts;
    auto deadline = Clock::now() + 60s;
    zmq::pollitem_t item{router.handle(), 0, ZMQ_POLLIN, 0};
    while (static_cast<int>(ids.size()) < peers) {
      if (Clock::now() > deadline) die("only " + std::to_string(ids.size()) + " of " + std::to_string(peers) + " peers joined");
      zmq::poll(&item, 1, 100ms);
      while (zf::recv_multipart(router, parts))
        if (parts.size() == 2 && zf::view(parts[1]) == "hello") ids.emplace_back(zf::view(parts[0]));
    }
    // A frame the size of an ASSIGN of a noop step.
    std::string body(200, 'a');
    int sent = 0, done = 0;
    auto t0 = Clock::now();
    for (const auto& id : ids)
      if (sent < count) {
        (void)zf::send_multipart(router, {id, body});
        ++sent;
      }
    deadline = Clock::now() + 120s;
    while (done < count) {
      if (Clock::now() > deadline) die("round trips stalled at " + std::to_string(done));
      zmq::poll(&item, 1, 100ms);
      while (zf::recv_multipart(router, parts)) {
        if (parts.size() != 2) continue;
        ++done;
        if (sent < count) {
          (void)zf::send_multipart(router, {zf::view(parts[0]), body});
          ++sent;
        }
      }
    }
    rate = count / std::chrono::duration<double>(Clock::now() - t0).count();
  }
  stop_child(child);
  std::printf("floor_dealers_per_s: %.1f\n", rate);
  return 0;
}

// ---- fsync --------------------------------------------------------------------

int fsync_floor(const std::string& dir, int count) {
  const std::string path = dir + "/floor-fsync.tmp";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) die("cannot create " + path + ": " + std::strerror(errno));
  constexpr size_t kFile = 4 << 20, kWrite = 8 << 10;
  std::vector<char> buf(kWrite, 'w');
  for (size_t off = 0; off < kFile; off += kWrite)
    if (::pwrite(fd, buf.data(), kWrite, static_cast<off_t>(off)) != static_cast<ssize_t>(kWrite))
      die("cannot write " + path + ": " + std::strerror(errno));
  if (::fdatasync(fd) != 0) die("cannot sync " + path + ": " + std::strerror(errno));
  std::vector<double> samples;
  for (int i = 0; i < count; ++i) {
    off_t off = static_cast<off_t>((static_cast<size_t>(i) * kWrite) % kFile);
    buf[0] = static_cast<char>(i);
    auto t0 = Clock::now();
    if (::pwrite(fd, buf.data(), kWrite, off) != static_cast<ssize_t>(kWrite) || ::fdatasync(fd) != 0)
      die("cannot write and sync " + path + ": " + std::strerror(errno));
    samples.push_back(ms(Clock::now() - t0));
  }
  ::close(fd);
  ::unlink(path.c_str());
  std::printf("floor_fdatasync_p50_ms: %.3f\nfloor_fdatasync_p99_ms: %.3f\n", percentile(samples, 50),
              percentile(samples, 99));
  return 0;
}

[[noreturn]] void usage() {
  die("usage: hops [--count N] [--warmup N] | dealers [--peers N] [--count N] | fsync DIR [--count N]");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage();
  std::string mode = argv[1];
  std::string dir;
  int i = 2;
  if (mode == "fsync") {
    if (argc < 3) usage();
    dir = argv[i++];
  }
  int count = mode == "dealers" ? 50000 : 2000, warmup = 20, peers = 1000;
  for (; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) usage();
    int v = std::atoi(argv[++i]);
    if (k == "--count") count = v;
    else if (k == "--warmup" && mode == "hops") warmup = v;
    else if (k == "--peers" && mode == "dealers") peers = v;
    else usage();
  }
  if (count < 1 || warmup < 0 || peers < 1) usage();
  if (mode == "hops") return hops(count, warmup);
  if (mode == "dealers") return dealers(peers, count);
  if (mode == "fsync") return fsync_floor(dir, count);
  usage();
}
