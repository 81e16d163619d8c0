// Dispatch rate seen on the tap, for scripts/bench.sh
// (dispatch_per_s_1m_queued, dispatch_per_s_1k_queued,
// workers_1000_dispatch_per_s). Subscribes to the instance end events, then
// times COUNT of them: the rate is (COUNT - 1) / (ts of the COUNT-th end -
// ts of the first), with the master's own event timestamps, so neither the
// submission before the first end nor this process's lag is counted.
//
//   zforce-bench-dispatch --api EP --events EP --job NAME --count K
//       [--submit N]            submit N instances once the tap is live, in calls of
//       [--batch B]             B (default 100,000, the api's limit); the window starts at
//                               the first end, so it includes the later calls
//       [--backlog Q --refill B]
//                               Q are already waiting; after every B ends, submit B more,
//                               so that between Q - B and Q stay waiting during the window
//       [--ready-file PATH]     created once the tap is live (start the workers after it)
//       [--timeout S]           give up after S seconds (default 600)
//
// Prints `dispatch_per_s: X` and a `# dispatch:` line with the details.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "bench/bench_client.h"

namespace {

namespace proto = zf::proto;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

[[noreturn]] void die(const std::string& why) { zf::bench::die("dispatch", why); }

struct Args {
  std::string api, events, job, ready_file;
  uint64_t count = 0, submit = 0, batch = 100000, backlog = 0, refill = 0;
  int timeout_s = 600;
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
    else if (k == "--count") a.count = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--submit") a.submit = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--batch") a.batch = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--backlog") a.backlog = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--refill") a.refill = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--ready-file") a.ready_file = v;
    else if (k == "--timeout") a.timeout_s = std::atoi(v.c_str());
    else die("unknown option " + k);
  }
  if (a.api.empty() || a.events.empty() || a.job.empty() || a.count < 2 || a.timeout_s < 1 ||
      a.refill > 100000 || (a.refill > 0 && a.refill >= a.backlog) || a.batch < 1 || a.batch > 100000)
    die("usage: --api EP --events EP --job NAME --count K (>= 2) [--submit N [--batch B (<= 100000)]] "
        "[--backlog Q --refill B (B < Q, B <= 100000)] [--ready-file PATH] [--timeout S]");
  return a;
}

// The shared api/tap client, plus submission in calls of at most `batch`.
class Probe : public zf::bench::BenchClient {
 public:
  explicit Probe(const Args& a)
      : BenchClient("dispatch", a.api, a.events,
                    {"instance.succeeded", "instance.failed", "instance.timed_out", "instance.cancelled"}) {}

  void run(const std::string& job, uint64_t n, uint64_t batch = 100000) {
    while (n > 0) {
      uint64_t c = std::min<uint64_t>(n, batch);
      call("run", {{"job", job}, {"params", nlohmann::json::object()}, {"count", c}}, 120s);
      n -= c;
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  Probe p(a);
  p.sync_tap();
  if (!a.ready_file.empty()) std::ofstream(a.ready_file) << "ready\n";
  auto t_submit = Clock::now();
  if (a.submit > 0) p.run(a.job, a.submit, a.batch);
  double submit_s = std::chrono::duration<double>(Clock::now() - t_submit).count();

  auto deadline = Clock::now() + std::chrono::seconds(a.timeout_s);
  uint64_t ended = 0, failed = 0, since_refill = 0, refills = 0;
  // Estimated waiting: what was queued plus our submissions, minus the ends
  // seen (an over-estimate by the instances in flight and the tap's lag).
  int64_t waiting = static_cast<int64_t>(a.backlog + a.submit), waiting_min = waiting, waiting_max = waiting;
  int64_t ts_first = 0, ts_last = 0;
  Clock::time_point t_first{}, t_last{};
  while (ended < a.count) {
    auto e = p.next_event(deadline);
    if (!e) die("only " + std::to_string(ended) + " of " + std::to_string(a.count) + " instances ended within " +
                std::to_string(a.timeout_s) + " s");
    if (e->type == "tap.ping" || e->job != a.job) continue;
    if (ended == 0) {
      ts_first = e->ts_us;
      t_first = Clock::now();
    }
    ++ended;
    ts_last = e->ts_us;
    t_last = Clock::now();
    if (e->type != "instance.succeeded") ++failed;
    --waiting;
    waiting_min = std::min(waiting_min, waiting);
    if (a.refill > 0 && ++since_refill >= a.refill && ended < a.count) {
      p.run(a.job, a.refill);
      since_refill = 0;
      ++refills;
      waiting += static_cast<int64_t>(a.refill);
      waiting_max = std::max(waiting_max, waiting);
    }
  }
  double span = static_cast<double>(ts_last - ts_first) / 1e6;
  double wall = std::chrono::duration<double>(t_last - t_first).count();
  if (span <= 0) die("the window has no length");
  std::printf("dispatch_per_s: %.1f\n", static_cast<double>(a.count - 1) / span);
  std::printf("# dispatch: %llu ends of %s in %.3f s on the master's clock (%.3f s as received here, %.1f/s), "
              "%llu not succeeded; submitted %llu first (%.2f s), %llu refills of %llu; waiting (estimated, "
              "in flight counted as waiting) %lld..%lld\n",
              static_cast<unsigned long long>(a.count), a.job.c_str(), span, wall,
              static_cast<double>(a.count - 1) / wall, static_cast<unsigned long long>(failed),
              static_cast<unsigned long long>(a.submit), submit_s, static_cast<unsigned long long>(refills),
              static_cast<unsigned long long>(a.refill), static_cast<long long>(waiting_min),
              static_cast<long long>(waiting_max));
  return failed == 0 ? 0 : 1;
}
