// Throughput of the master's store: N instances, each written as the master
// would over its life (queued, assigned, running, succeeded: one instance
// upsert plus one transition per state), with a commit every T writes (one
// loop turn). Once with synchronous=OFF (no fsync at all: the ceiling SQLite
// itself allows) and once with the settings the master uses (FULL: the WAL
// is fsynced at every commit), for turns of 100 and 1000 writes.
// Prints `name: value` lines; the ratio shows what durability costs.
//
// Build: g++ -std=c++20 -O2 -I. tests/store_bench.cc master/store.cc -lsqlite3 -o /tmp/store_bench
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "master/store.h"

namespace {

using zf::InstanceRecord;
using zf::InstanceState;
using zf::Store;
using zf::StoreOptions;
using zf::TransitionRecord;

// Upserts (each with its transition) per second; exits on a store error.
double run(StoreOptions::Sync sync, int instances, int turn_size) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "zf-store-bench-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) std::exit(2);
  StoreOptions opt;
  opt.sync = sync;
  auto opened = Store::open(tmpl, opt);
  if (!opened.ok()) {
    std::fprintf(stderr, "%s\n", opened.error().message.c_str());
    std::exit(1);
  }
  Store& store = *opened.value();
  auto check = [](const zf::Status& s) {
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.error().message.c_str());
      std::exit(1);
    }
  };
  const InstanceState life[] = {InstanceState::Queued, InstanceState::Assigned, InstanceState::Running,
                                InstanceState::Succeeded};
  InstanceRecord r;
  r.job = "bench";
  r.queue = "default";
  r.params = {{"branch", "main"}, {"commit", "0123456789abcdef"}};
  r.steps_json = R"([{"name":"build","run":["make","-j4"],"env":{},"cwd":"","timeout_ms":0}])";
  r.retry_json = R"({"attempts":3,"backoff_ms":1000})";
  long writes = 0;
  auto start = std::chrono::steady_clock::now();
  store.begin_turn();
  for (int i = 1; i <= instances; ++i) {
    r.id = static_cast<uint64_t>(i);
    r.created_us = 1'700'000'000'000'000 + i;
    for (uint32_t seq = 0; seq < 4; ++seq) {
      r.state = life[seq];
      r.member = seq ? "worker-1" : "";
      r.updated_us = r.created_us + seq;
      if (r.state == InstanceState::Succeeded) r.output = std::string(256, 'o');
      check(store.upsert_instance(r));
      TransitionRecord t;
      t.seq = seq;
      t.state = r.state;
      t.ts_us = r.updated_us;
      t.member = r.member;
      check(store.add_transition(r.id, t));
      if (++writes % turn_size == 0) {
        check(store.commit_turn());
        store.begin_turn();
      }
    }
    r.output.clear();
  }
  check(store.commit_turn());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  opened.value().reset();
  std::filesystem::remove_all(tmpl);
  return static_cast<double>(writes) / secs;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 20000;
  std::printf("instances: %d (4 upserts + 4 transitions each)\n", n);
  for (int turn : {100, 1000}) {
    double off = run(StoreOptions::Sync::Off, n, turn);
    double full = run(StoreOptions::Sync::Full, n, turn);
    double normal = run(StoreOptions::Sync::Normal, n, turn);
    std::printf("store_upserts_per_s (synchronous=off, turn=%d): %.0f\n", turn, off);
    std::printf("store_upserts_per_s (synchronous=full, turn=%d): %.0f\n", turn, full);
    std::printf("store_upserts_per_s (synchronous=normal, turn=%d): %.0f\n", turn, normal);
    std::printf("store_full_over_off_ratio (turn=%d): %.2f\n", turn, full / off);
  }
  return 0;
}
