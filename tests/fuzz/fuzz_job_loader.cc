// libFuzzer target: job files and queue files as the operator writes them
// (`zforce job put`, `zforce queue put`, the jobs folder), through parse_job
// and parse_queue: TOML syntax, the job model, steps and builtins, templates,
// [queue], [retry], and [[triggers]] with their durations, cron expressions,
// RFC 3339 times and time zones.
//
// For a job that loads, what the master does with it next runs too: every
// timer trigger is asked for its next firing and for its plan after a
// downtime (the scheduler's restart path), and an instance is resolved with
// the defaults (what `zforce run JOB` does).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "common/job_loader.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using namespace std::chrono_literals;

void exercise(const zf::Job& job) {
  FUZZ_CHECK(!job.name.empty() && !job.steps.empty(), "a loaded job without a name or steps");
  (void)zf::queue_of(job);
  (void)zf::resolve_instance(job, {});
  // Fixed instants keep runs reproducible: 2026-03-29 00:30 UTC (hours
  // before the EU spring-forward), the anchor a day earlier, and a
  // "downtime" back to 2025-10-26 (EU fall-back).
  const zf::TimePoint now{std::chrono::sys_days{std::chrono::year{2026} / 3 / 29} + 30min};
  const zf::TimePoint anchor = now - 24h;
  const zf::TimePoint last = zf::TimePoint{std::chrono::sys_days{std::chrono::year{2025} / 10 / 26}};
  for (const auto& t : job.triggers) {
    (void)zf::format_rfc3339(t.at);
    if (!t.is_timer()) continue;
    auto next = zf::next_fire(t, now, t.zone, anchor);
    if (next) FUZZ_CHECK(*next > now, "next_fire is not after 'now'");
    auto plan = zf::plan_missed(t, t.zone, anchor, last, now);
    if (plan.catch_up) FUZZ_CHECK(*plan.catch_up <= now, "a catch-up firing in the future");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto job = zf::parse_job(text, "fuzz.toml");
  if (job.ok()) exercise(*job);
  else FUZZ_CHECK(job.error().message.rfind("fuzz.toml", 0) == 0, "an error that does not name the file: " + job.error().message);
  auto queue = zf::parse_queue(text, "fuzz.toml");
  if (!queue.ok())
    FUZZ_CHECK(queue.error().message.rfind("fuzz.toml", 0) == 0, "an error that does not name the file: " + queue.error().message);
  return 0;
}
