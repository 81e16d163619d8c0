#include "master/persistence.h"

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "master/event_publisher.h"
#include "master/master.h"

namespace zf {

using json = nlohmann::json;

std::string steps_to_json(const std::vector<proto::StepSpec>& steps) {
  // Each instance row carries its steps: only what differs from a default is
  // written (schema 5), so a builtin step is a few dozen bytes, not a
  // hundred; every row write of the instance copies them.
  json a = json::array();
  for (const auto& s : steps) {
    json j = {{"name", s.name}, {"kind", s.kind}};
    if (!s.argv.empty()) j["argv"] = s.argv;
    if (!s.builtin.empty()) j["builtin"] = s.builtin;
    if (!s.args.empty()) j["args"] = s.args;
    if (!s.env.empty()) j["env"] = s.env;
    if (!s.cwd.empty()) j["cwd"] = s.cwd;
    if (s.timeout_ms != 0) j["timeout_ms"] = s.timeout_ms;
    a.push_back(std::move(j));
  }
  return a.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<std::vector<proto::StepSpec>> steps_from_json(const std::string& text) {
  // Reads both forms: every field (schema 4 and older) and the defaults left
  // out (schema 5).
  try {
    std::vector<proto::StepSpec> out;
    const json all = json::parse(text);
    if (!all.is_array()) return make_error("stored steps are unreadable: not a JSON array");
    for (const auto& j : all) {
      proto::StepSpec s;
      s.name = j.at("name");
      s.kind = j.at("kind");
      s.argv = j.value("argv", std::vector<std::string>{});
      s.builtin = j.value("builtin", std::string());
      s.args = j.value("args", std::map<std::string, std::string>{});
      s.env = j.value("env", std::map<std::string, std::string>{});
      s.cwd = j.value("cwd", std::string());
      s.timeout_ms = j.value("timeout_ms", uint64_t{0});
      out.push_back(std::move(s));
    }
    return out;
  } catch (const json::exception& e) {
    return make_error(std::string("stored steps are unreadable: ") + e.what());
  }
}

std::string retry_to_json(const RetryPolicy& r) {
  // The default policy (most jobs) is stored as "" (schema 5), which
  // retry_from_json has always read as the default.
  if (r == RetryPolicy{}) return {};
  // Otherwise formatted directly rather than through a json object
  // (retry_from_json reads either).
  char buf[200];
  int n = std::snprintf(buf, sizeof buf,
                        "{\"attempts\":%u,\"backoff_ms\":%lld,\"max_backoff_ms\":%lld,\"on_failed\":%s,"
                        "\"on_lost\":%s,\"on_timed_out\":%s}",
                        r.attempts, static_cast<long long>(r.backoff.count()),
                        static_cast<long long>(r.max_backoff.count()), r.on_failed ? "true" : "false",
                        r.on_lost ? "true" : "false", r.on_timed_out ? "true" : "false");
  return std::string(buf, static_cast<size_t>(std::max(n, 0)));
}

Result<RetryPolicy> retry_from_json(const std::string& text) {
  RetryPolicy r;
  if (text.empty()) return r;
  try {
    json j = json::parse(text);
    r.attempts = j.at("attempts");
    r.backoff = Millis(j.at("backoff_ms").get<int64_t>());
    r.max_backoff = Millis(j.at("max_backoff_ms").get<int64_t>());
    r.on_failed = j.at("on_failed");
    r.on_timed_out = j.at("on_timed_out");
    r.on_lost = j.at("on_lost");
    return r;
  } catch (const json::exception& e) {
    return make_error(std::string("stored retry policy is unreadable: ") + e.what());
  }
}

namespace {
// The master times retries on the steady clock; the store keeps wall time.
std::optional<int64_t> retry_at_wall_us(const Instance& inst) {
  if (!inst.retry_at) return std::nullopt;
  return wall_clock_us() +
         std::chrono::duration_cast<std::chrono::microseconds>(*inst.retry_at - std::chrono::steady_clock::now())
             .count();
}
}  // namespace

InstanceRecord to_update_record(const Instance& inst) {
  InstanceRecord r;
  r.id = inst.id;
  r.attempt = inst.attempt;
  r.state = inst.state;
  r.member = inst.member;
  r.slot = inst.slot;
  r.exit_code = inst.exit_code;
  r.failed_step = inst.failed_step;
  r.duration_ms = inst.duration_ms;
  r.error = inst.error;
  r.output = inst.output;
  r.updated_us = inst.history.empty() ? 0 : inst.history.back().ts_us;
  r.cancel_requested = inst.cancel_requested;
  r.retry_at_us = retry_at_wall_us(inst);
  return r;
}

namespace {
// What a submission's row and an instance's row both take from the spec;
// the steps and retry policy as the store keeps them (encoded once per spec
// when it was made, encoded here otherwise).
template <class Record>
void put_spec_columns(const InstanceSpec& spec, Record& r) {
  r.job = spec.job;
  r.queue = spec.queue;
  r.priority = spec.priority;
  r.params = spec.params;
  r.steps_json = !spec.steps_json.empty() ? spec.steps_json : steps_to_json(spec.steps);
  r.retry_json = !spec.retry_json.empty() ? spec.retry_json : retry_to_json(spec.retry);
  r.timeout_ms = spec.timeout_ms;
}
}  // namespace

SubmissionRecord to_submission_record(const InstanceSpec& spec, uint64_t first_id, uint64_t count,
                                      int64_t created_us) {
  SubmissionRecord r;
  r.first_id = first_id;
  r.count = count;
  put_spec_columns(spec, r);
  r.created_us = created_us;
  return r;
}

InstanceRecord to_record(const Instance& inst) {
  InstanceRecord r = to_update_record(inst);
  put_spec_columns(*inst.spec, r);
  r.created_us = inst.history.empty() ? 0 : inst.history.front().ts_us;
  return r;
}

namespace {
bool spec_matches(const InstanceSpec& spec, const InstanceRecord& r, const std::vector<std::string>& required_tags) {
  return spec.job == r.job && spec.queue == r.queue && spec.priority == r.priority && spec.timeout_ms == r.timeout_ms &&
         spec.params == r.params && spec.steps_json == r.steps_json && spec.required_tags == required_tags &&
         spec.retry_json == r.retry_json;
}
}  // namespace

Result<Instance> from_record(const InstanceRecord& r, const std::vector<std::string>& required_tags,
                             const std::shared_ptr<const InstanceSpec>& previous) {
  Instance inst;
  inst.id = r.id;
  inst.attempt = r.attempt;
  inst.state = r.state;
  if (previous && spec_matches(*previous, r, required_tags)) {
    inst.spec = previous;
  } else {
    auto spec = std::make_shared<InstanceSpec>();
    spec->job = r.job;
    spec->queue = r.queue;
    spec->priority = r.priority;
    spec->params = r.params;
    auto steps = steps_from_json(r.steps_json);
    if (!steps.ok()) return steps.error();
    spec->steps = std::move(*steps);
    spec->steps_json = r.steps_json;
    auto retry = retry_from_json(r.retry_json);
    if (!retry.ok()) return retry.error();
    spec->retry = *retry;
    spec->retry_json = r.retry_json;
    spec->timeout_ms = r.timeout_ms;
    spec->required_tags = required_tags;
    inst.spec = std::move(spec);
  }
  inst.member = r.member;
  inst.slot = r.slot;
  inst.exit_code = r.exit_code;
  inst.failed_step = r.failed_step;
  inst.duration_ms = r.duration_ms;
  inst.error = r.error;
  inst.output = r.output;
  inst.cancel_requested = r.cancel_requested;
  if (r.retry_at_us)
    inst.retry_at = std::chrono::steady_clock::now() + std::chrono::microseconds(*r.retry_at_us - wall_clock_us());
  for (const auto& t : r.history) inst.history.push_back({t.state, t.ts_us, t.attempt, t.member, t.exit_code});
  inst.persisted_transitions = inst.history.size();
  return inst;
}

}  // namespace zf
