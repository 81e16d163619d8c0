// End-to-end latency of one instance on an idle cluster: submits one
// instance of JOB through the api (DEALER, op "run"), waits for its
// instance.succeeded on the tap (SUB), and repeats, one at a time. Prints
// percentiles of submission -> instance.succeeded (and of submission -> api
// reply, for reference) in milliseconds. Used by scripts/bench.sh.
//
//   zforce-bench-latency --api EP --events EP --job NAME [--count 2000] [--warmup 20]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <zmq.hpp>

#include "bench/bench_client.h"

namespace {

namespace proto = zf::proto;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using zf::bench::percentile;

[[noreturn]] void die(const std::string& why) { zf::bench::die("latency", why); }

struct Args {
  std::string api, events, job;
  int count = 2000;
  int warmup = 20;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) die("missing value after " + k);
    std::string v = argv[++i];
    if (k == "--api") a.api = v;
    else if (k == "--events") a.events = v;
    else if (k == "--job") a.job = v;
    else if (k == "--count") a.count = std::atoi(v.c_str());
    else if (k == "--warmup") a.warmup = std::atoi(v.c_str());
    else die("unknown option " + k);
  }
  if (a.api.empty() || a.events.empty() || a.job.empty() || a.count < 1 || a.warmup < 0)
    die("usage: --api EP --events EP --job NAME [--count N] [--warmup N]");
  return a;
}

// The shared api/tap client, plus one instance from submission to its end.
class Bench : public zf::bench::BenchClient {
 public:
  explicit Bench(const Args& a)
      : BenchClient("latency", a.api, a.events,
                    {"instance.succeeded", "instance.failed", "instance.timed_out", "instance.cancelled",
                     "instance.lost"}) {}

  // Submits one instance and waits for its end; returns {to reply, to end} in ms.
  std::pair<double, double> one(const std::string& job) {
    auto t0 = Clock::now();
    auto r = call("run", {{"job", job}, {"params", nlohmann::json::object()}, {"count", 1}}, 10s);
    auto t_reply = Clock::now();
    uint64_t id = r["instances"].at(0).get<uint64_t>();
    auto deadline = t0 + 10s;
    while (true) {
      auto e = next_event(deadline);
      if (!e) die("instance " + std::to_string(id) + " did not end within 10 s");
      if (e->instance != id) continue;
      if (e->type != "instance.succeeded") die("instance " + std::to_string(id) + ": " + e->type);
      auto t_end = Clock::now();
      auto ms = [&](Clock::time_point t) { return std::chrono::duration<double, std::milli>(t - t0).count(); };
      return {ms(t_reply), ms(t_end)};
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  Bench b(a);
  b.sync_tap();
  for (int i = 0; i < a.warmup; ++i) b.one(a.job);
  std::vector<double> reply, end;
  auto t0 = Clock::now();
  for (int i = 0; i < a.count; ++i) {
    auto [r, e] = b.one(a.job);
    reply.push_back(r);
    end.push_back(e);
  }
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("latency: %d instances one at a time in %.2f s (after %d warm-up)\n", a.count, s, a.warmup);
  std::printf("latency_p50_ms: %.3f\nlatency_p99_ms: %.3f\nlatency_max_ms: %.3f\n", percentile(end, 50),
              percentile(end, 99), percentile(end, 100));
  std::printf("reply_p50_ms: %.3f\nreply_p99_ms: %.3f\n", percentile(reply, 50), percentile(reply, 99));
  return 0;
}
