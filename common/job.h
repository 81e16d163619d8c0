// The job model: what a job file says, validated. Loading from TOML is in
// job_loader.h; turning a job plus run-time parameters into the resolved steps
// an instance runs is resolve_instance() here.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/duration.h"
#include "common/protocol.h"
#include "common/queue_config.h"
#include "common/trigger.h"
#include "common/result.h"

namespace zf {

// Limits that hold against careless or hostile callers.
inline constexpr size_t kMaxParams = 64;
inline constexpr size_t kMaxParamValueBytes = 64 * 1024;
inline constexpr size_t kMaxJobNameBytes = 128;

struct ParamSpec {
  std::string name;
  std::optional<std::string> default_value;  // none = required at run time
  std::string description;
};

// One step of a job, before parameter substitution. Exactly one kind.
struct Step {
  enum class Kind { Run, Builtin };
  Kind kind = Kind::Run;
  std::string name;
  std::vector<std::string> run;              // argv templates (Kind::Run)
  std::string builtin;                       // builtin name (Kind::Builtin)
  std::map<std::string, std::string> args;   // builtin argument templates
  std::map<std::string, std::string> env;    // value templates
  std::string cwd;                           // template; empty = worker's cwd
  std::optional<Millis> timeout;
};

// When and how an instance runs again as a new attempt. Without a [retry]
// table: only `lost` retries, up to the master's --max-attempts.
struct RetryPolicy {
  uint32_t attempts = 0;  // all attempts together; 0 = the master's default
  Millis backoff{0};      // before attempt 2; doubles each attempt (failed, timed_out only)
  Millis max_backoff{600000};
  bool on_failed = false;
  bool on_timed_out = false;
  bool on_lost = true;
  bool operator==(const RetryPolicy&) const = default;
};

struct Job {
  std::string name;
  std::string description;
  std::vector<ParamSpec> params;
  std::vector<Step> steps;
  std::optional<Millis> timeout;  // whole instance
  // Where its instances wait: a shared queue by name (`queue = "NAME"`), or a
  // queue of its own (`[queue]` table, named local_queue_name(job)). Neither:
  // the shared queue "default".
  std::string queue;
  std::optional<QueueConfig> local_queue;
  int priority = 0;  // higher first within its queue
  RetryPolicy retry;
  std::vector<std::string> requires_tags;  // `requires`: run only on members with every tag
  std::vector<TriggerSpec> triggers;  // [[triggers]], by index
  std::string source_name;        // file the job came from (for messages)
  std::string source_text;        // the TOML as given, kept for `job show`
};

// Names of jobs and parameters: letters, digits and ._- (parameters: no dots
// or dashes so that they read like identifiers in templates).
bool is_valid_job_name(std::string_view name);
// The queue an instance of `job` enters.
std::string queue_of(const Job& job);
inline constexpr std::string_view kDefaultQueue = "default";
bool is_valid_param_name(std::string_view name);

// Every {{name}} in a template, in order; Error if a brace pair is broken.
Result<std::vector<std::string>> template_names(std::string_view tmpl);
// Substitutes {{name}} from params; Error names the unknown parameter.
Result<std::string> substitute(std::string_view tmpl, const std::map<std::string, std::string>& params);

// Checks the given parameters against the job (unknown names, missing
// required ones, sizes), fills defaults and substitutes every template.
struct ResolvedInstance {
  std::map<std::string, std::string> params;
  std::vector<proto::StepSpec> steps;
};
Result<ResolvedInstance> resolve_instance(const Job& job, const std::map<std::string, std::string>& given);

}  // namespace zf
