// The store writer's CPU cost per instance, measured the way the master writes:
// write_instances() in groups, one transaction per group. N instances are
// first inserted queued, in groups of 5,000 (a big `run --count`); then each
// group carries three changes per instance of a pipeline: the assignment of
// some, the start of the ones assigned a group earlier, the end of the ones
// started a group before that (Progress, Progress, Update, each with its
// history entry). synchronous=NORMAL, as the writer runs with --sync full
// (its fsyncs are made by other threads): this measures CPU, not the disk.
//
// Prints `name: value` lines: microseconds of the calling thread's CPU per
// instance, for the insert phase, the life phase and in all.
//   store_bench [INSTANCES] [GROUP]   (defaults 50,000 and 200)
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "master/store.h"

namespace {

using zf::InstanceChange;
using zf::InstanceRecord;
using zf::InstanceState;
using zf::Store;
using zf::StoreOptions;
using zf::TransitionRecord;

double thread_cpu_us() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

void check(const zf::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "store_bench: %s\n", s.error().message.c_str());
    std::exit(1);
  }
}

constexpr int64_t kT0 = 1'700'000'000'000'000;

InstanceChange created(uint64_t id) {
  InstanceChange c;
  c.kind = InstanceChange::Kind::Insert;
  InstanceRecord& r = c.rec;
  r.id = id;
  r.job = "noop";
  r.queue = "default";
  r.params = {{"branch", "main"}};
  // What the master writes for a builtin noop job with the default retry
  // policy (schema 5: defaults left out).
  r.steps_json = R"([{"builtin":"noop","kind":"builtin","name":"step1"}])";
  r.retry_json = "";
  r.created_us = r.updated_us = kT0 + static_cast<int64_t>(id);
  c.added.push_back({0, InstanceState::Queued, r.created_us, 1, "", std::nullopt});
  return c;
}

InstanceChange advanced(uint64_t id, InstanceState state, uint32_t seq) {
  InstanceChange c;
  InstanceRecord& r = c.rec;
  r.id = id;
  r.state = state;
  r.member = "w1";
  r.slot = static_cast<int>(id % 256);
  r.updated_us = kT0 + static_cast<int64_t>(id) + seq;
  c.kind = state == InstanceState::Succeeded ? InstanceChange::Kind::Update : InstanceChange::Kind::Progress;
  std::optional<int32_t> exit;
  if (state == InstanceState::Succeeded) exit = 0;
  c.added.push_back({seq, state, r.updated_us, 1, "w1", exit});
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 50000;
  const uint64_t group = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 200;
  if (n == 0 || group == 0) {
    std::fprintf(stderr, "usage: store_bench [INSTANCES] [GROUP]\n");
    return 2;
  }
  std::string dir = (std::filesystem::temp_directory_path() / "zf-store-bench-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr) return 2;
  StoreOptions opt;
  opt.sync = StoreOptions::Sync::Normal;
  auto opened = Store::open(dir, opt);
  if (!opened.ok()) {
    std::fprintf(stderr, "store_bench: %s\n", opened.error().message.c_str());
    return 1;
  }
  Store& store = *opened.value();
  auto write_group = [&](const std::vector<InstanceChange>& changes) {
    store.begin_turn();
    check(store.write_instances(changes));
    check(store.commit_turn());
  };

  double t0 = thread_cpu_us();
  std::vector<InstanceChange> changes;
  for (uint64_t id = 1; id <= n; ++id) {
    changes.push_back(created(id));
    if (changes.size() == 5000 || id == n) {
      write_group(changes);
      changes.clear();
    }
  }
  double t1 = thread_cpu_us();
  // Group g assigns [g*G, (g+1)*G), starts the group before, ends the one before that.
  const uint64_t groups = (n + group - 1) / group;
  for (uint64_t g = 0; g < groups + 2; ++g) {
    auto stage = [&](uint64_t from_group, InstanceState state, uint32_t seq) {
      if (from_group >= groups) return;
      for (uint64_t id = from_group * group + 1; id <= std::min(n, (from_group + 1) * group); ++id)
        changes.push_back(advanced(id, state, seq));
    };
    if (g >= 2) stage(g - 2, InstanceState::Succeeded, 3);
    if (g >= 1) stage(g - 1, InstanceState::Running, 2);
    stage(g, InstanceState::Assigned, 1);
    if (!changes.empty()) write_group(changes);
    changes.clear();
  }
  double t2 = thread_cpu_us();
  opened.value().reset();
  std::filesystem::remove_all(dir);
  const double per = static_cast<double>(n);
  std::printf("store_insert_cpu_us_per_instance: %.2f\n", (t1 - t0) / per);
  std::printf("store_life_cpu_us_per_instance: %.2f\n", (t2 - t1) / per);
  std::printf("store_total_cpu_us_per_instance: %.2f\n", (t2 - t0) / per);
  return 0;
}
