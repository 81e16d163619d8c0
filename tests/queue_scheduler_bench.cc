// How the cost of QueueScheduler's per-instance calls grows with the number
// of waiting instances: the same cluster and the same 100 queues, once with
// 1,000 and once with 100,000 instances waiting. Prints `name: value` lines.
//
// Each figure is the best of several rounds, so that a busy machine inflates
// it less; the ratios are what to look at (1 = independent of the waiting
// count, log(100000)/log(1000) ≈ 1.67 = logarithmic, 100 = linear).
//
// At 100,000 instances the scheduler's tables no longer fit in the caches, so
// part of any growth is memory latency, not work. The `reference` figures
// measure that part: the same random erase + insert on a bare
// std::unordered_map (id -> record) and std::map (order -> id) of the same
// size, which any id-indexed ordered queue must pay at least.
//
// The `tagged_` figures repeat the submit, cancel and cycle measurements with
// worker tags and instance requirements: 5 of the 20 workers have "gpu", 10%
// of the instances require gpu and 2% require gpu and big, which no member
// has (they can never start and only wait). So three requirement sets are in
// use, one of them unplaceable. Without requirements nothing changes: the
// other figures measure the same work as before tags existed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "master/queue_scheduler.h"

namespace {

using zf::QueueConfig;
using zf::QueueScheduler;
using zf::RunOn;
using Id = QueueScheduler::InstanceId;
using Clock = std::chrono::steady_clock;

constexpr int kQueues = 100;
constexpr int kWorkers = 20;
constexpr int kSlotsPerMember = 8;
constexpr int kRounds = 5;
constexpr int kCycles = 100000;
constexpr int kCancels = 100000;

void must(const zf::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "bench setup failed: %s\n", status.error().message.c_str());
    std::exit(1);
  }
}

std::string queue_name(int i) { return "queue" + std::to_string(i); }

// A mix like a real cluster's: most queues run anywhere, some only on workers
// (falling back to the master), a few only on the master; a few pause
// between runs.
QueueConfig queue_config(int i) {
  QueueConfig config;
  config.name = queue_name(i);
  config.max_parallel = 1 + i % 4;
  if (i % 10 == 0) config.run_on = RunOn::kMaster;
  if (i % 10 == 1 || i % 10 == 2) {
    config.run_on = RunOn::kWorkers;
    config.fallback = RunOn::kMaster;
  }
  if (i % 7 == 0) config.max_total = 3;
  if (i % 13 == 0) config.min_delay = std::chrono::milliseconds(1);
  return config;
}

double ns_per(Clock::duration elapsed, std::int64_t operations) {
  return static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count()) /
         static_cast<double>(operations);
}

// Random erase + insert on a bare hash table and ordered map of `size` entries.
double reference_ns(int size, std::uint32_t seed) {
  struct Record {
    std::uint64_t words[6] = {};
  };
  std::mt19937 rng(seed);
  std::unordered_map<std::uint64_t, Record> by_id;
  std::map<std::pair<std::int64_t, std::uint64_t>, std::uint64_t> by_order;
  std::vector<std::uint64_t> ids;
  std::uint64_t next = 1;
  auto order = [](std::uint64_t id) { return std::pair{static_cast<std::int64_t>(id % 3), id}; };
  for (int i = 0; i < size; ++i) {
    by_id.emplace(next, Record{});
    by_order.emplace(order(next), next);
    ids.push_back(next++);
  }
  const auto start = Clock::now();
  for (int i = 0; i < kCancels; ++i) {
    const std::size_t at = std::uniform_int_distribution<std::size_t>(0, ids.size() - 1)(rng);
    const std::uint64_t old = ids[at];
    by_id.erase(old);
    by_order.erase(order(old));
    by_id.emplace(next, Record{});
    by_order.emplace(order(next), next);
    ids[at] = next++;
  }
  return ns_per(Clock::now() - start, kCancels);
}

struct Figures {
  double submit_ns = 0;         // filling the waiting lines from empty to n
  double cancel_submit_ns = 0;  // cancel a random waiting instance, submit another
  double cycle_ns = 0;          // finish a random running instance, dispatch, submit one more
  double started_per_cycle = 0;
  double reference_ns = 0;
};

// One round at `waiting` instances; a fresh scheduler each time. `tagged`:
// with tags and requirements (see the top of the file).
Figures round(int waiting, std::uint32_t seed, bool tagged) {
  std::mt19937 rng(seed);
  auto pick = [&](int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); };
  QueueScheduler s;
  for (int i = 0; i < kQueues; ++i) must(s.add_or_update_queue(queue_config(i)));
  must(s.member_joined("master", true, kSlotsPerMember));
  for (int i = 0; i < kWorkers; ++i) {
    std::vector<std::string> tags;
    if (tagged && i % 4 == 0) tags.emplace_back("gpu");
    must(s.member_joined("w" + std::to_string(i), false, kSlotsPerMember, tags));
  }
  // Draws the next submission's queue, priority and requirements. The
  // untagged bench draws from the same distributions as before tags existed.
  const std::vector<std::string> kNone, kGpu{"gpu"}, kGpuBig{"gpu", "big"};
  auto submit = [&](Id id) {
    const std::string queue = queue_name(pick(kQueues));
    const int priority = pick(3);
    const std::vector<std::string>* requires_tags = &kNone;
    if (tagged) {
      const int roll = pick(100);
      if (roll < 10) requires_tags = &kGpu;
      else if (roll < 12) requires_tags = &kGpuBig;
    }
    must(s.submit(id, queue, priority, false, *requires_tags));
  };

  auto now = Clock::time_point{};
  Id next_id = 1;
  std::vector<Id> waiting_ids;  // may hold ids that have started since; cancel skips those
  Figures f;

  const auto fill_start = Clock::now();
  for (int i = 0; i < waiting; ++i) {
    const Id id = next_id++;
    submit(id);
    waiting_ids.push_back(id);
  }
  f.submit_ns = ns_per(Clock::now() - fill_start, waiting);

  // Saturate the cluster, then top the waiting lines up to `waiting` again.
  std::vector<Id> running;
  for (const auto& d : s.dispatch(now)) running.push_back(d.instance);
  for (std::size_t i = 0; i < running.size(); ++i) submit(next_id++);

  const auto cancel_start = Clock::now();
  std::int64_t pairs = 0;
  for (int i = 0; i < kCancels; ++i) {
    const std::size_t at = static_cast<std::size_t>(pick(static_cast<int>(waiting_ids.size())));
    if (!s.cancel_waiting(waiting_ids[at]).ok()) continue;
    const Id id = next_id++;
    submit(id);
    waiting_ids[at] = id;
    ++pairs;
  }
  f.cancel_submit_ns = ns_per(Clock::now() - cancel_start, pairs);

  std::int64_t started = 0;
  const auto cycle_start = Clock::now();
  for (int i = 0; i < kCycles; ++i) {
    now += std::chrono::microseconds(50);
    if (!running.empty()) {
      const std::size_t at = static_cast<std::size_t>(pick(static_cast<int>(running.size())));
      must(s.finished(running[at], now));
      running[at] = running.back();
      running.pop_back();
    }
    submit(next_id++);
    for (const auto& d : s.dispatch(now)) {
      running.push_back(d.instance);
      ++started;
    }
  }
  f.cycle_ns = ns_per(Clock::now() - cycle_start, kCycles);
  f.started_per_cycle = static_cast<double>(started) / kCycles;
  if (!tagged) f.reference_ns = reference_ns(waiting, seed);
  return f;
}

Figures best_of(int waiting, bool tagged) {
  Figures best = round(waiting, 1, tagged);
  for (int r = 1; r < kRounds; ++r) {
    const Figures f = round(waiting, static_cast<std::uint32_t>(r + 1), tagged);
    best.submit_ns = std::min(best.submit_ns, f.submit_ns);
    best.cancel_submit_ns = std::min(best.cancel_submit_ns, f.cancel_submit_ns);
    best.cycle_ns = std::min(best.cycle_ns, f.cycle_ns);
    best.started_per_cycle = std::min(best.started_per_cycle, f.started_per_cycle);
    best.reference_ns = std::min(best.reference_ns, f.reference_ns);
  }
  return best;
}

void print_ratio(const char* name, double large, double small) { std::printf("%s: %.2f\n", name, large / small); }

}  // namespace

int main() {
  const int sizes[] = {1000, 10000, 100000};
  const char* const labels[] = {"1k", "10k", "100k"};
  Figures f[3];
  Figures t[3];
  for (int i = 0; i < 3; ++i) f[i] = best_of(sizes[i], false);
  for (int i = 0; i < 3; ++i) t[i] = best_of(sizes[i], true);

  std::printf("queues: %d\n", kQueues);
  std::printf("members: %d\n", kWorkers + 1);
  std::printf("member_slots_total: %d\n", (kWorkers + 1) * kSlotsPerMember);
  for (int i = 0; i < 3; ++i) std::printf("submit_ns_%s: %.0f\n", labels[i], f[i].submit_ns);
  for (int i = 0; i < 3; ++i) std::printf("cancel_submit_ns_%s: %.0f\n", labels[i], f[i].cancel_submit_ns);
  for (int i = 0; i < 3; ++i) std::printf("finish_dispatch_submit_cycle_ns_%s: %.0f\n", labels[i], f[i].cycle_ns);
  for (int i = 0; i < 3; ++i) std::printf("started_per_cycle_%s: %.3f\n", labels[i], f[i].started_per_cycle);
  for (int i = 0; i < 3; ++i) std::printf("reference_erase_insert_ns_%s: %.0f\n", labels[i], f[i].reference_ns);
  print_ratio("submit_ratio_100k_over_1k", f[2].submit_ns, f[0].submit_ns);
  print_ratio("cancel_submit_ratio_100k_over_1k", f[2].cancel_submit_ns, f[0].cancel_submit_ns);
  print_ratio("cycle_ratio_10k_over_1k", f[1].cycle_ns, f[0].cycle_ns);
  print_ratio("cycle_ratio_100k_over_10k", f[2].cycle_ns, f[1].cycle_ns);
  print_ratio("cycle_ratio_100k_over_1k", f[2].cycle_ns, f[0].cycle_ns);
  print_ratio("reference_ratio_100k_over_1k", f[2].reference_ns, f[0].reference_ns);
  std::printf("log_ratio_reference: %.2f\n", std::log(100000.0) / std::log(1000.0));
  std::printf("linear_ratio_reference: %.0f\n", 100000.0 / 1000.0);
  for (int i = 0; i < 3; ++i) std::printf("tagged_submit_ns_%s: %.0f\n", labels[i], t[i].submit_ns);
  for (int i = 0; i < 3; ++i) std::printf("tagged_cancel_submit_ns_%s: %.0f\n", labels[i], t[i].cancel_submit_ns);
  for (int i = 0; i < 3; ++i) std::printf("tagged_finish_dispatch_submit_cycle_ns_%s: %.0f\n", labels[i], t[i].cycle_ns);
  for (int i = 0; i < 3; ++i) std::printf("tagged_started_per_cycle_%s: %.3f\n", labels[i], t[i].started_per_cycle);
  print_ratio("tagged_cycle_ratio_100k_over_1k", t[2].cycle_ns, t[0].cycle_ns);
  return 0;
}
