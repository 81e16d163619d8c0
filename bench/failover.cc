// Failover time: from a worker's SIGKILL to every instance it held running on
// another member, read from the tap. 20 kills; prints the median and worst.
// A benchmark, not a test: it asserts nothing about time.
#include <doctest/doctest.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>

#include "tests/cluster.h"

using namespace zf::test;

namespace {
double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

TEST_CASE("failover: SIGKILL of a worker to its instances running elsewhere") {
  const int kills = std::getenv("ZF_FAILOVER_KILLS") ? std::atoi(std::getenv("ZF_FAILOVER_KILLS")) : 20;
  // kill: SIGKILL (the connection drops); freeze: SIGSTOP (silent, like a
  // partitioned or hung machine: only the heartbeats can tell).
  const bool freeze = std::getenv("ZF_FAILOVER_MODE") && std::string(std::getenv("ZF_FAILOVER_MODE")) == "freeze";
  Cluster c;
  c.start_master();  // default heartbeat 250 ms × liveness 4
  c.connect_tap();
  std::map<std::string, pid_t> workers = {{"w1", c.start_worker("w1", 2)}, {"w2", c.start_worker("w2", 2)}};
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 2; }, 10s));
  auto job = c.write_file("long.toml", "name = \"long\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"10m\"\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);

  std::vector<double> times;
  for (int round = 0; round < kills; ++round) {
    size_t seen = c.events().size();
    auto r = c.zforce({"--json", "run", "long", "--count", "2"});
    REQUIRE(r.exit_code == 0);
    std::set<uint64_t> ids;
    json reply = json::parse(r.out);
    for (const auto& id : reply["instances"]) ids.insert(id.get<uint64_t>());
    REQUIRE_MESSAGE(ids.size() == 2, r.out);
    // Wait until both run, and pick a member that holds one as the victim.
    std::map<uint64_t, std::string> where;
    REQUIRE(c.wait_for(
        [&] {
          for (size_t i = seen; i < c.events().size(); ++i) {
            const auto& e = c.events()[i];
            if (e["type"] == "instance.running" && ids.count(e["instance"].get<uint64_t>()))
              where[e["instance"]] = e["member"];
          }
          return where.size() == ids.size();
        },
        10s));
    std::string victim = where.begin()->second;
    std::set<uint64_t> held;
    for (const auto& [id, m] : where)
      if (m == victim) held.insert(id);
    size_t mark = c.events().size();
    double t0 = wall_now();
    c.signal(workers[victim], freeze ? SIGSTOP : SIGKILL);
    if (!freeze) c.wait_exit(workers[victim], 5s);
    double last = 0;
    std::set<uint64_t> moved;
    bool ok = c.wait_for(
        [&] {
          for (size_t i = mark; i < c.events().size(); ++i) {
            const auto& e = c.events()[i];
            if (e["type"] == "instance.running" && held.count(e["instance"].get<uint64_t>()) &&
                e["member"] != victim && !moved.count(e["instance"])) {
              moved.insert(e["instance"].get<uint64_t>());
              last = std::max(last, e["ts"].get<double>());
            }
          }
          mark = c.events().size();
          return moved.size() == held.size();
        },
        10s);
    REQUIRE(ok);
    times.push_back(last - t0);
    if (freeze) {
      c.signal(workers[victim], SIGKILL);
      c.wait_exit(workers[victim], 5s);
    }
    // Clean up: cancel this round's instances, bring the victim back.
    for (uint64_t id : ids) c.zforce({"cancel", std::to_string(id)});
    size_t joined = c.count("member.joined");
    workers[victim] = c.start_worker(victim, 2);
    REQUIRE(c.wait_for([&] { return c.count("member.joined") > joined; }, 10s));
    REQUIRE(c.wait_for([&] { return c.count("instance.cancelled") >= static_cast<size_t>(2 * (round + 1)); }, 10s));
  }
  std::sort(times.begin(), times.end());
  double median = times.size() % 2 ? times[times.size() / 2]
                                   : (times[times.size() / 2 - 1] + times[times.size() / 2]) / 2;
  const char* mode = freeze ? "freeze" : "kill";
  std::printf("failover_%s_count: %zu\n", mode, times.size());
  std::printf("failover_%s_median_s: %.3f\n", mode, median);
  std::printf("failover_%s_worst_s: %.3f\n", mode, times.back());
  std::printf("failover_%s_best_s: %.3f\n", mode, times.front());
  std::printf("settings: heartbeat 250ms x liveness 4 (defaults)\n");
}
