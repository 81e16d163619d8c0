// 10,000 jobs with timers: the idle master's CPU, and firing latency
// (scheduled time to instance.queued on the tap). A benchmark: it prints
// figures and asserts nothing about time.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <thread>

#include "tests/cluster.h"

using namespace zf::test;

namespace {
double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
std::string rfc3339(double t) {
  auto secs = static_cast<time_t>(t);
  int ms = static_cast<int>((t - static_cast<double>(secs)) * 1000 + 0.5);
  if (ms == 1000) ++secs, ms = 0;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}
double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}
// Puts jobs in batches (one `job put` per 1,000 files).
void put_jobs(Cluster& c, const std::vector<std::string>& files) {
  for (size_t i = 0; i < files.size(); i += 1000) {
    std::vector<std::string> args = {"job", "put"};
    for (size_t j = i; j < std::min(files.size(), i + 1000); ++j) args.push_back(files[j]);
    auto r = c.zforce(args, 120s);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  }
}
}  // namespace

TEST_CASE("10,000 timer jobs") {
  const int jobs = std::getenv("ZF_TRIGGER_JOBS") ? std::atoi(std::getenv("ZF_TRIGGER_JOBS")) : 10000;
  const long hz = sysconf(_SC_CLK_TCK);
  Cluster c;
  c.start_master();  // no local slots: instances stay queued, only the triggers work
  c.connect_tap();

  // 1. Idle: timers that do not fire during the measurement.
  std::vector<std::string> files;
  for (int i = 0; i < jobs; ++i)
    files.push_back(c.write_file("idle/j" + std::to_string(i) + ".toml",
                                 "name = \"idle" + std::to_string(i) + "\"\n[[triggers]]\n" +
                                     (i % 2 ? "every = \"1h\"\n" : "cron = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\n") +
                                     "[[steps]]\nbuiltin = \"noop\"\n"));
  put_jobs(c, files);
  std::this_thread::sleep_for(1s);
  long t0 = c.cpu_ticks(c.master_pid());
  std::this_thread::sleep_for(10s);
  long t1 = c.cpu_ticks(c.master_pid());
  double idle_pct = 100.0 * static_cast<double>(t1 - t0) / static_cast<double>(hz) / 10.0;

  // 2. Latency: every job fires every 10 s, their starts spread 1 ms apart,
  //    so the master makes about 1,000 firings a second.
  double start0 = wall_now() + 5.0;
  files.clear();
  for (int i = 0; i < jobs; ++i)
    files.push_back(c.write_file("busy/j" + std::to_string(i) + ".toml",
                                 "name = \"busy" + std::to_string(i) + "\"\n[[triggers]]\nevery = \"10s\"\nstart = \"" +
                                     rfc3339(start0 + i * 0.001) + "\"\n[[steps]]\nbuiltin = \"noop\"\n"));
  put_jobs(c, files);
  double until = start0 + 10.0 + 1.0;
  long b0 = c.cpu_ticks(c.master_pid());
  c.wait_for([&] { return wall_now() > until; }, std::chrono::milliseconds(static_cast<int>((until - wall_now()) * 1000) + 1000));
  long b1 = c.cpu_ticks(c.master_pid());
  c.wait_for([] { return false; }, 500ms);

  std::map<uint64_t, double> queued_at;
  for (const auto& e : c.events())
    if (e["type"] == "instance.queued") queued_at[e["instance"]] = e["ts"];
  std::vector<double> latency_ms;
  for (const auto& e : c.events()) {
    if (e["type"] != "trigger.fired") continue;
    std::string job = e["job"];
    if (job.rfind("busy", 0) != 0) continue;
    int i = std::stoi(job.substr(4));
    double first = start0 + i * 0.001;
    double q = queued_at[e["instance"]];
    double k = std::max(0.0, std::floor((q - first) / 10.0 + 1e-9));
    latency_ms.push_back((q - (first + 10.0 * k)) * 1000.0);
  }
  REQUIRE(!latency_ms.empty());
  std::printf("trigger_jobs: %d\n", jobs);
  std::printf("idle_master_cpu_pct: %.2f\n", idle_pct);
  std::printf("busy_master_cpu_pct: %.1f (about %zu firings over %.0f s)\n",
              100.0 * static_cast<double>(b1 - b0) / static_cast<double>(hz) / (until - start0 + 5.0),
              latency_ms.size(), until - start0);
  std::printf("fire_latency_p50_ms: %.2f\n", percentile(latency_ms, 0.50));
  std::printf("fire_latency_p99_ms: %.2f\n", percentile(latency_ms, 0.99));
  std::printf("fire_latency_max_ms: %.2f\n", percentile(latency_ms, 1.0));
}
