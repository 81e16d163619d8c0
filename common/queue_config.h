// The model of an execution queue as an operator configures it (a queue file,
// or a job's local queue). Loading it from TOML is the job loader's business;
// this header holds the values and their rules so that the loader, the api
// and the master's QueueScheduler agree on what a valid queue is.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace zf {

// Which members may run a queue's instances. Spelled "any", "master",
// "workers" in files and on the command line.
enum class RunOn { kAny, kMaster, kWorkers };

inline Result<RunOn> parse_run_on(std::string_view text) {
  if (text == "any") return RunOn::kAny;
  if (text == "master") return RunOn::kMaster;
  if (text == "workers") return RunOn::kWorkers;
  return Error{"run_on: expected \"any\", \"master\" or \"workers\", got \"" + std::string(text) + "\""};
}

inline std::string_view to_string(RunOn run_on) {
  switch (run_on) {
    case RunOn::kAny: return "any";
    case RunOn::kMaster: return "master";
    case RunOn::kWorkers: return "workers";
  }
  return "?";
}

struct QueueConfig {
  std::string name;
  // Execution slots on each eligible member. The queue's credit window is
  // max_parallel × (eligible members alive), capped by max_total.
  int max_parallel = 1;
  // Cluster-wide cap on the window; none = no cap beyond max_parallel.
  std::optional<int> max_total;
  // After an instance ends, the queue slot it ran in stays occupied this long
  // before it takes the next instance. Same unit as zf::Millis.
  std::chrono::milliseconds min_delay{0};
  RunOn run_on = RunOn::kAny;
  // Used instead of run_on while no member that run_on allows is alive
  // (e.g. run_on = workers, fallback = master).
  std::optional<RunOn> fallback;
  // Instances that may wait in the queue at once. A submission that would go
  // beyond it is refused whole, with an error naming the queue; a trigger
  // firing into a full queue is skipped and counted. Bounds the master's
  // memory against a runaway (or hostile) submitter.
  int64_t max_queued = kDefaultMaxQueued;
  static constexpr int64_t kDefaultMaxQueued = 1'000'000;
};

// Rejects values that cannot be what the operator meant; the message names
// the queue and the field.
inline Status validate(const QueueConfig& queue) {
  if (queue.name.empty()) return Error{"queue: the name must not be empty"};
  const std::string where = "queue " + queue.name + ": ";
  if (queue.max_parallel < 1) {
    return Error{where + "max_parallel must be at least 1, got " + std::to_string(queue.max_parallel)};
  }
  if (queue.max_total && *queue.max_total < 1) {
    return Error{where + "max_total must be at least 1, got " + std::to_string(*queue.max_total)};
  }
  if (queue.min_delay.count() < 0) return Error{where + "min_delay must not be negative"};
  if (queue.fallback) {
    // A fallback that can never apply is a configuration mistake worth saying out loud.
    if (queue.run_on == RunOn::kAny) return Error{where + "fallback has no effect with run_on = \"any\""};
    if (*queue.fallback == queue.run_on) {
      return Error{where + "fallback is the same as run_on (\"" + std::string(to_string(queue.run_on)) + "\")"};
    }
  }
  return {};
}

}  // namespace zf
