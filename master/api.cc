// The api endpoint of the master: one function per operation. Each takes the
// request's args (JSON from msgpack) and returns the result, or throws
// ApiError, which becomes an error reply. Nothing here blocks.
#include <algorithm>
#include <array>

#include "common/job_loader.h"
#include "common/zmq_util.h"
#include "master/master.h"
#include "master/persistence.h"
#include "master/store.h"

namespace zf {

namespace {

// A request the master refuses, with the words the client prints.
struct ApiError {
  std::string message;
};

const nlohmann::json& need(const nlohmann::json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end()) throw ApiError{std::string("missing argument '") + key + "'"};
  return *it;
}

std::string need_string(const nlohmann::json& args, const char* key) {
  const auto& v = need(args, key);
  if (!v.is_string()) throw ApiError{std::string("argument '") + key + "' must be a string"};
  return v.get<std::string>();
}

uint64_t need_id(const nlohmann::json& args, const char* key) {
  const auto& v = need(args, key);
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    throw ApiError{std::string("argument '") + key + "' must be an instance id"};
  return v.get<uint64_t>();
}

nlohmann::json step_json(const Step& s) {
  nlohmann::json j;
  j["name"] = s.name;
  if (s.kind == Step::Kind::Run) j["run"] = s.run;
  else {
    j["builtin"] = s.builtin;
    for (const auto& [k, v] : s.args) j[k] = v;
  }
  if (!s.env.empty()) j["env"] = s.env;
  if (!s.cwd.empty()) j["cwd"] = s.cwd;
  if (s.timeout) j["timeout"] = format_duration(*s.timeout);
  return j;
}

}  // namespace

void Master::reply(const std::string& client, uint64_t req, bool ok, const std::string& error,
                   nlohmann::json result) {
  proto::ApiReply r;
  r.req = req;
  r.ok = ok;
  r.error = error;
  r.result = std::move(result);
  // Sent after the turn is committed; a client that went away is no error of ours.
  outbox_.push_back({api_.get(), client, proto::encode(proto::Message{std::move(r)}), ""});
}

void Master::drain_api_socket() {
  std::vector<zmq::message_t> parts;
  auto now = Clock::now();
  for (int n = 0; n < 1024 && recv_multipart(*api_, parts); ++n) {
    if (parts.size() != 2) {
      ++counters_.malformed_api;
      continue;
    }
    std::string client(view(parts[0]));
    auto d = proto::decode(parts[1].data(), parts[1].size());
    auto* err = std::get_if<proto::DecodeError>(&d);
    const proto::ApiRequest* req = err ? nullptr : std::get_if<proto::ApiRequest>(&std::get<proto::Message>(d));
    if (!req) {
      ++counters_.malformed_api;
      uint64_t suppressed = 0;
      if (bad_traffic_log_.allow(now, suppressed))
        log::warn("dropped a bad message on the api endpoint: " +
                  (err ? err->reason : std::string("not an API_REQUEST")) + " [" +
                  proto::sanitize_sample(parts[1].data(), parts[1].size()) + "]");
      if (err && err->kind == proto::DecodeFailure::VersionMismatch)
        reply(client, 0, false, err->reason, nullptr);
      continue;
    }
    ++counters_.api_requests;
    if (auto denied = api_denied(parts[1], req->op)) {  // the role of the caller's key, on every call
      reply(client, req->req, false, *denied, nullptr);
      continue;
    }
    bool deferred = false;
    try {
      nlohmann::json result = handle_api(client, *req, deferred);
      if (!deferred) reply(client, req->req, true, "", std::move(result));
    } catch (const ApiError& e) {
      reply(client, req->req, false, e.message, nullptr);
    } catch (const nlohmann::json::exception& e) {
      reply(client, req->req, false, std::string("bad arguments: ") + e.what(), nullptr);
    }
  }
}

nlohmann::json Master::handle_api(const std::string& client, const proto::ApiRequest& req, bool& deferred) {
  const auto& a = req.args;
  const std::string& op = req.op;
  if (op == "job.put") return api_job_put(a);
  if (op == "job.list") return api_job_list(a);
  if (op == "job.show") return api_job_show(a);
  if (op == "job.rm") return api_job_rm(a);
  if (op == "run") return api_run(client, req.req, a, deferred);
  if (op == "instances") return api_instances(a);
  if (op == "instance.show") return api_instance_show(a);
  if (op == "cancel") return api_cancel(a);
  if (op == "workers") return api_workers(a);
  if (op == "worker.drain") return api_worker_drain(a);
  if (op == "workers.pending") return api_workers_pending(a);
  if (op == "worker.approve") return api_worker_approve(a);
  if (op == "worker.remove") return api_worker_remove(a);
  if (op == "job.enable") return api_job_enable(a, true);
  if (op == "job.disable") return api_job_enable(a, false);
  if (op == "stats") return api_stats(a);
  if (op == "ping") return api_ping(a);
  if (op == "queue.put") return api_queue_put(a);
  if (op == "queue.list") return api_queue_list(a);
  if (op == "queue.show") return api_queue_show(a);
  if (op == "queue.rm") return api_queue_rm(a);
  if (op == "wait") {
    nlohmann::json out;
    deferred = !api_wait(client, req.req, a, out);
    return out;
  }
  throw ApiError{"unknown operation '" + op + "'"};
}

nlohmann::json Master::api_job_put(const nlohmann::json& args) {
  const auto& files = need(args, "files");
  if (!files.is_array() || files.empty()) throw ApiError{"argument 'files' must be a non-empty list"};
  // All files are checked before any is applied: one bad file changes nothing.
  std::vector<Job> parsed;
  for (const auto& f : files) {
    if (!f.is_object()) throw ApiError{"each file is {source, text}"};
    auto job = parse_job(need_string(f, "text"), need_string(f, "source"));
    if (!job.ok()) throw ApiError{job.error().message};
    for (const auto& p : parsed)
      if (p.name == job->name) throw ApiError{"job '" + job->name + "' is defined twice (" + p.source_name + ", " + job->source_name + ")"};
    parsed.push_back(std::move(job.value()));
  }
  for (const auto& j : parsed)
    if (!j.queue.empty() && !queues_.count(j.queue))
      throw ApiError{j.source_name + ": job '" + j.name + "' uses queue '" + j.queue +
                     "', which does not exist (zforce queue put FILE first)"};
  nlohmann::json out = {{"created", nlohmann::json::array()}, {"updated", nlohmann::json::array()}};
  for (auto& j : parsed) {
    if (j.local_queue) {
      if (auto s = sched_.add_or_update_queue(*j.local_queue); !s.ok()) throw ApiError{s.error().message};
      queues_[j.local_queue->name] = *j.local_queue;
      publish_queue_updated(j.local_queue->name, "updated");
    } else if (auto old = jobs_.find(j.name); old != jobs_.end() && old->second.local_queue) {
      // The job no longer has a queue of its own; drop it once it is empty.
      if (sched_.remove_queue(old->second.local_queue->name).ok()) {
        queues_.erase(old->second.local_queue->name);
        publish_queue_updated(old->second.local_queue->name, "removed");
      }
    }
    bool exists = jobs_.count(j.name) > 0;
    out[exists ? "updated" : "created"].push_back(j.name);
    proto::Event ev;
    ev.type = "job.updated";
    ev.job = j.name;
    std::string name = j.name;
    write([rec = JobRecord{name, j.source_name, j.source_text, !disabled_jobs_.count(name)}](Store& st) {
      return st.put_job(rec);
    });
    jobs_[name] = std::move(j);
    apply_job_triggers(jobs_[name]);
    events_->publish(std::move(ev));
  }
  return out;
}

nlohmann::json Master::api_job_list(const nlohmann::json&) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [name, j] : jobs_)
    out.push_back({{"name", name}, {"description", j.description}, {"steps", j.steps.size()},
                   {"params", j.params.size()}, {"source", j.source_name}});
  return {{"jobs", out}};
}

nlohmann::json Master::api_job_show(const nlohmann::json& args) {
  std::string name = need_string(args, "name");
  auto it = jobs_.find(name);
  if (it == jobs_.end()) throw ApiError{"no job named '" + name + "'"};
  const Job& j = it->second;
  nlohmann::json params = nlohmann::json::array();
  for (const auto& p : j.params) {
    nlohmann::json pj = {{"name", p.name}, {"description", p.description}};
    if (p.default_value) pj["default"] = *p.default_value;
    else pj["required"] = true;
    params.push_back(pj);
  }
  nlohmann::json steps = nlohmann::json::array();
  for (const auto& s : j.steps) steps.push_back(step_json(s));
  nlohmann::json out = {{"name", j.name},     {"description", j.description}, {"params", params},
                        {"steps", steps},     {"source", j.source_name},       {"text", j.source_text},
                        {"queue", queue_of(j)}, {"priority", j.priority},
                        {"enabled", !disabled_jobs_.count(j.name)}, {"requires", j.requires_tags}};
  nlohmann::json triggers = nlohmann::json::array();
  auto next = triggers_.next_fire_times(j.name);
  for (size_t i = 0; i < j.triggers.size(); ++i) {
    const auto& t = j.triggers[i];
    nlohmann::json tj = {{"index", i}, {"kind", kind_name(t.kind)}};
    if (t.kind == TriggerSpec::Kind::Watch) tj["watch"] = t.watch, tj["pattern"] = t.pattern;
    if (i < next.size() && next[i]) tj["next"] = format_rfc3339(*next[i]);
    triggers.push_back(tj);
  }
  out["triggers"] = triggers;
  if (j.timeout) out["timeout"] = format_duration(*j.timeout);
  return out;
}

nlohmann::json Master::api_job_rm(const nlohmann::json& args) {
  std::string name = need_string(args, "name");
  auto it = jobs_.find(name);
  if (it == jobs_.end()) throw ApiError{"no job named '" + name + "'"};
  // Its own queue goes with it unless instances still wait or run there.
  if (it->second.local_queue && sched_.remove_queue(it->second.local_queue->name).ok()) {
    queues_.erase(it->second.local_queue->name);
    publish_queue_updated(it->second.local_queue->name, "removed");
  }
  write([name](Store& st) { return st.remove_job(name); });
  forget_job_triggers(name);
  jobs_.erase(it);
  proto::Event ev;
  ev.type = "job.removed";
  ev.job = name;
  events_->publish(std::move(ev));
  return {{"removed", name}};
}

nlohmann::json Master::api_run(const std::string& client, uint64_t req, const nlohmann::json& args, bool& deferred) {
  std::string name = need_string(args, "job");
  if (shutdown_deadline_) throw ApiError{"the master is stopping; nothing new is accepted"};
  auto it = jobs_.find(name);
  if (it == jobs_.end()) throw ApiError{"no job named '" + name + "'"};
  std::map<std::string, std::string> given;
  if (auto p = args.find("params"); p != args.end()) {
    if (!p->is_object()) throw ApiError{"argument 'params' must be a map of strings"};
    if (p->size() > kMaxParams) throw ApiError{"too many parameters"};
    for (const auto& [k, v] : p->items()) {
      if (!v.is_string()) throw ApiError{"parameter '" + k + "' must be a string"};
      given[k] = v.get<std::string>();
    }
  }
  uint64_t count = 1;
  if (auto c = args.find("count"); c != args.end()) {
    if (!c->is_number_unsigned() || c->get<uint64_t>() < 1 || c->get<uint64_t>() > 100000)
      throw ApiError{"argument 'count' must be between 1 and 100000"};
    count = c->get<uint64_t>();
  }
  auto resolved = resolve_instance(it->second, given);
  if (!resolved.ok()) throw ApiError{resolved.error().message};
  const std::string queue = queue_of(it->second);
  if (auto full = queue_full(queue, pending_in_queue(queue) + count)) {
    ++counters_.refused_queue_full;
    throw ApiError{*full + "; nothing was submitted"};
  }
  PendingRun run;
  run.client = client;
  run.req = req;
  run.spec = make_spec(it->second, std::move(resolved->params), std::move(resolved->steps));
  run.remaining = count;
  pending_runs_.push_back(std::move(run));
  // Answered by continue_runs(): at the end of this turn, or a later one.
  deferred = true;
  return nullptr;
}

void Master::continue_runs() {
  uint64_t budget = kRunsPerTurn;
  while (!pending_runs_.empty()) {
    PendingRun& run = pending_runs_.front();
    const uint64_t n = std::min(run.remaining, budget);
    const uint64_t first = create_instances(run.spec, n);
    for (uint64_t id = first; id < first + n; ++id) run.ids.push_back(id);
    run.remaining -= n;
    budget -= n;
    if (run.remaining > 0) return;
    reply(run.client, run.req, true, "", {{"instances", std::move(run.ids)}});
    pending_runs_.pop_front();
  }
}

uint64_t Master::pending_in_queue(const std::string& queue) const {
  uint64_t n = 0;
  for (const auto& run : pending_runs_)
    if (run.spec->queue == queue) n += run.remaining;
  return n;
}

nlohmann::json Master::instance_summary(const Instance& inst) const {
  nlohmann::json j = {{"id", inst.id}, {"job", inst.spec->job}, {"state", state_name(inst.state)},
                      {"attempt", inst.attempt}};
  j["queue"] = inst.spec->queue;
  if (!inst.member.empty()) j["member"] = inst.member;
  if (is_terminal(inst.state) && inst.state != InstanceState::Lost) {
    j["exit_code"] = inst.exit_code;
    j["duration_ms"] = inst.duration_ms;
  }
  if (!inst.history.empty()) j["created"] = static_cast<double>(inst.history.front().ts_us) / 1e6;
  return j;
}

nlohmann::json Master::wait_result(const Waiter& w) const {
  nlohmann::json out = {{"done", true}, {"instances", nlohmann::json::array()}};
  auto& list = out["instances"];
  if (!w.summary) {
    for (uint64_t id : w.ids) list.push_back(instance_summary(instances_.at(id)));
    return out;
  }
  // Bulk waits (`run --count 100000 --wait`): counts, and the instances that
  // did not succeed (the first kWaitSummaryListed of them), not 100,000 summaries.
  constexpr size_t kWaitSummaryListed = 100;
  std::map<std::string_view, uint64_t> by_state;
  for (uint64_t id : w.ids) {
    const Instance& inst = instances_.at(id);
    ++by_state[state_name(inst.state)];
    if (inst.state != InstanceState::Succeeded && list.size() < kWaitSummaryListed) list.push_back(instance_summary(inst));
  }
  auto& counts = out["by_state"] = nlohmann::json::object();
  for (const auto& [st, n] : by_state) counts[std::string(st)] = n;
  out["count"] = w.ids.size();
  return out;
}

nlohmann::json Master::api_instances(const nlohmann::json& args) {
  std::optional<std::string> job;
  std::optional<InstanceState> state;
  size_t limit = 1000;
  if (args.contains("job")) job = need_string(args, "job");
  if (args.contains("state")) {
    auto s = parse_state(need_string(args, "state"));
    if (!s) throw ApiError{"unknown state '" + args["state"].get<std::string>() +
                           "' (queued, assigned, running, succeeded, failed, cancelled, timed_out, lost)"};
    state = s;
  }
  if (args.contains("limit")) {
    if (!args["limit"].is_number_unsigned()) throw ApiError{"argument 'limit' must be a number"};
    limit = args["limit"].get<size_t>();
  }
  nlohmann::json out = nlohmann::json::array();
  if (state && (*state == InstanceState::Assigned || *state == InstanceState::Running)) {
    std::vector<const Instance*> hits;  // in id order, as in_flight_ids() gives them
    for (uint64_t id : in_flight_ids()) {
      auto it = instances_.find(id);
      if (it == instances_.end() || it->second.state != *state) continue;
      if (job && it->second.spec->job != *job) continue;
      hits.push_back(&it->second);
    }
    if (limit != 0 && hits.size() > limit) hits.erase(hits.begin(), hits.end() - static_cast<std::ptrdiff_t>(limit));
    for (const Instance* inst : hits) out.push_back(instance_summary(*inst));  // newest last
    return {{"instances", out}};
  }
  // Every live instance is in memory, where its state is the newest (the
  // store has it as of the last commit, and assigned/running a little
  // later still, docs/durability.md). The store has no index on the live
  // states either: asking it for the few running instances walked the whole
  // history.
  if (store_ && !(state && is_live(*state))) {
    // The store holds the whole history; instances in memory are fresher.
    InstanceFilter f;
    f.job = job;
    f.state = state;
    f.limit = limit == 0 ? std::numeric_limits<size_t>::max() : limit;
    auto recs = store_->list_instances(f);
    if (!recs.ok()) throw ApiError{recs.error().message};
    for (auto r = recs->rbegin(); r != recs->rend(); ++r) {  // newest last
      auto mem = instances_.find(r->id);
      if (mem != instances_.end()) {
        out.push_back(instance_summary(mem->second));
        continue;
      }
      auto inst = from_record(*r, {}, nullptr);  // for its summary only
      if (inst.ok()) out.push_back(instance_summary(*inst));
    }
    return {{"instances", out}};
  }
  // From memory: everything without a store, the live states with one.
  // Newest last; `limit` keeps the newest. (instances_ is unordered: sort the hits.)
  std::vector<const Instance*> hits;
  for (const auto& [id, inst] : instances_) {
    if (job && inst.spec->job != *job) continue;
    if (state && inst.state != *state) continue;
    hits.push_back(&inst);
  }
  auto newer = [](const Instance* a, const Instance* b) { return a->id > b->id; };
  size_t keep = limit == 0 ? hits.size() : std::min(limit, hits.size());
  std::partial_sort(hits.begin(), hits.begin() + static_cast<std::ptrdiff_t>(keep), hits.end(), newer);
  hits.resize(keep);
  for (auto it = hits.rbegin(); it != hits.rend(); ++it) out.push_back(instance_summary(**it));
  return {{"instances", out}};
}

nlohmann::json Master::api_instance_show(const nlohmann::json& args) {
  uint64_t id = need_id(args, "id");
  auto it = instances_.find(id);
  Instance from_store;
  if (it == instances_.end() && store_) {  // history that is no longer kept in memory
    auto rec = store_->load_instance(id);
    if (!rec.ok()) throw ApiError{rec.error().message};
    if (*rec) {
      auto inst = from_record(**rec, {}, nullptr);
      if (!inst.ok()) throw ApiError{inst.error().message};
      from_store = std::move(inst.value());
    }
  }
  if (it == instances_.end() && from_store.id == 0) throw ApiError{"no instance " + std::to_string(id)};
  const Instance& inst = it != instances_.end() ? it->second : from_store;
  nlohmann::json j = instance_summary(inst);
  j["params"] = inst.spec->params;
  j["output"] = inst.output;
  j["error"] = inst.error;
  j["failed_step"] = inst.failed_step;
  nlohmann::json hist = nlohmann::json::array();
  for (const auto& t : inst.history) {
    nlohmann::json h = {{"state", state_name(t.state)}, {"ts", static_cast<double>(t.ts_us) / 1e6},
                        {"attempt", t.attempt}};
    if (!t.member.empty()) h["member"] = t.member;
    hist.push_back(h);
  }
  j["history"] = hist;
  return j;
}

nlohmann::json Master::api_cancel(const nlohmann::json& args) {
  uint64_t id = need_id(args, "id");
  Instance* found = page_in(id);
  if (!found) throw ApiError{"no instance " + std::to_string(id)};
  Instance& inst = *found;
  if (is_terminal(inst.state)) throw ApiError{"instance " + std::to_string(id) + " already ended (" +
                                              std::string(state_name(inst.state)) + ")"};
  if (inst.state == InstanceState::Queued) {
    if (inst.retry_at) {  // waiting out a retry backoff, not in its queue yet
      auto [b, e] = retries_.equal_range(*inst.retry_at);
      for (auto r = b; r != e; ++r)
        if (r->second == id) {
          retries_.erase(r);
          break;
        }
      inst.retry_at.reset();
    } else if (auto s = sched_.cancel_waiting(id); !s.ok()) {
      throw ApiError{s.error().message};
    }
    transition(inst, InstanceEvent::Cancel);
    notify_waiters(inst);
    return {{"instance", id}, {"state", "cancelled"}};
  }
  inst.cancel_requested = true;
  mark_dirty(inst);
  auto m = members_.find(inst.member);
  if (m != members_.end()) send_to(m->second, proto::Cancel{inst.id, inst.attempt});
  return {{"instance", id}, {"state", "cancelling"}};
}

nlohmann::json Master::api_workers(const nlohmann::json&) {
  nlohmann::json out = nlohmann::json::array();
  auto now = Clock::now();
  for (const auto& [id, m] : members_) {
    out.push_back({{"name", m.name},
                   {"state", member_state_name(m.state)},
                   {"local", m.local},
                   {"slots", m.slots},
                   {"in_flight", m.in_flight.size()},
                   {"finished", m.finished},
                   {"tags", m.tags},
                   {"version", m.version},
                   {"last_seen_ms", std::chrono::duration_cast<std::chrono::milliseconds>(now - m.last_seen).count()}});
  }
  return {{"workers", out}};
}

nlohmann::json Master::api_job_enable(const nlohmann::json& args, bool enable) {
  std::string name = need_string(args, "name");
  auto it = jobs_.find(name);
  if (it == jobs_.end()) throw ApiError{"no job named '" + name + "'"};
  auto now = std::chrono::system_clock::now();
  if (enable) {
    disabled_jobs_.erase(name);
    triggers_.enable(name, now);
    for (size_t i = 0; i < it->second.triggers.size(); ++i)
      if (it->second.triggers[i].kind == TriggerSpec::Kind::Watch) watcher_->add(name, i, it->second.triggers[i]);
  } else {
    disabled_jobs_.insert(name);
    triggers_.disable(name);
    watcher_->remove_job(name);
  }
  write([rec = JobRecord{name, it->second.source_name, it->second.source_text, enable}](Store& st) {
    return st.put_job(rec);
  });
  proto::Event ev;
  ev.type = enable ? "job.enabled" : "job.disabled";
  ev.job = name;
  events_->publish(std::move(ev));
  return {{"job", name}, {"enabled", enable}};
}

nlohmann::json Master::api_worker_drain(const nlohmann::json& args) {
  std::string name = need_string(args, "name");
  auto it = members_.find(name);
  if (it == members_.end() || !is_present(it->second.state)) throw ApiError{"no member named '" + name + "' is connected"};
  Member& m = it->second;
  if (m.state == MemberState::Draining) return {{"member", name}, {"state", "draining"}, {"in_flight", m.in_flight.size()}};
  if (auto s = sched_.member_joined(m.name, m.local, 0, m.tags); !s.ok()) throw ApiError{s.error().message};
  member_event(m, MemberEvent::Drain);
  send_to(m, proto::Drain{"drain requested by an operator"});
  return {{"member", name}, {"state", "draining"}, {"in_flight", m.in_flight.size()}};
}

nlohmann::json Master::api_stats(const nlohmann::json&) {
  const auto& counts = state_counts_;
  if (check_counts_) {
    std::array<uint64_t, kInstanceStates> walked{};
    for (const auto& [id, inst] : instances_) ++walked[static_cast<size_t>(inst.state)];
    for (size_t k = 0; k < kInstanceStates; ++k)
      if (walked[k] != counts[k]) {
        log::error("instance count of state " + std::string(state_name(static_cast<InstanceState>(k))) + " is " +
                   std::to_string(counts[k]) + ", but " + std::to_string(walked[k]) + " are in memory");
        throw ApiError{"instance counts out of step with the instances in memory (see the master's log)"};
      }
    // Listing assigned and running walks in_flight_ids() alone: it must hold them all.
    uint64_t found = 0;
    for (uint64_t id : in_flight_ids()) {
      auto it = instances_.find(id);
      if (it != instances_.end() &&
          (it->second.state == InstanceState::Assigned || it->second.state == InstanceState::Running))
        ++found;
    }
    const uint64_t live = counts[static_cast<size_t>(InstanceState::Assigned)] +
                          counts[static_cast<size_t>(InstanceState::Running)];
    if (found != live) {
      log::error(std::to_string(live) + " instances are assigned or running, but " + std::to_string(found) +
                 " are in the members' in-flight sets and the unconfirmed ones");
      throw ApiError{"in-flight sets out of step with the instances in memory (see the master's log)"};
    }
  }
  nlohmann::json by_state = nlohmann::json::object();
  for (size_t k = 0; k < kInstanceStates; ++k)
    if (counts[k] > 0) by_state[std::string(state_name(static_cast<InstanceState>(k)))] = counts[k];
  return {{"malformed_workers", counters_.malformed_workers},
          {"malformed_api", counters_.malformed_api},
          {"refused_version", counters_.refused_version},
          {"unexpected_messages", counters_.unexpected_messages},
          {"late_results", counters_.late_results},
          {"api_requests", counters_.api_requests},
          {"dispatched", counters_.dispatched},
          {"trigger_fired", counters_.trigger_fired},
          {"trigger_failed", counters_.trigger_failed},
          {"permission_denied", counters_.permission_denied},
          {"security_dropped", counters_.security_dropped},
          {"refused_queue_full", counters_.refused_queue_full},
          {"handshakes_failed", security_ ? security_->handshake_counters().failed : 0},
          {"zap_admitted", security_ && security_->zap() ? security_->zap()->counters().admitted : 0},
          {"zap_refused", security_ && security_->zap() ? security_->zap()->counters().refused : 0},
          {"zap_malformed", security_ && security_->zap() ? security_->zap()->counters().malformed : 0},
          {"events_published", events_->last_seq()},
          {"waiting", by_state.value("queued", 0)},
          {"instances", by_state},
          {"jobs", jobs_.size()}};
}

nlohmann::json Master::api_ping(const nlohmann::json& args) {
  // Publishes a marker on the tap, so a subscriber can tell when it is connected.
  proto::Event ev;
  ev.type = "tap.ping";
  if (args.contains("token")) ev.detail = need_string(args, "token");
  events_->publish(std::move(ev));
  return {{"seq", events_->last_seq()}};
}

void Master::publish_queue_updated(const std::string& name, const std::string& what) {
  proto::Event ev;
  ev.type = "queue.updated";
  ev.queue = name;
  ev.detail = what;
  events_->publish(std::move(ev));
}

nlohmann::json Master::queue_json(const QueueConfig& q) const {
  nlohmann::json j = {{"name", q.name},
                      {"max_parallel", q.max_parallel},
                      {"min_delay", format_duration(q.min_delay)},
                      {"run_on", to_string(q.run_on)},
                      {"max_queued", q.max_queued}};
  if (q.max_total) j["max_total"] = *q.max_total;
  if (q.fallback) j["fallback"] = to_string(*q.fallback);
  if (auto st = sched_.queue_stats(q.name)) {
    j["window"] = st->window;
    j["in_flight"] = st->in_flight;
    j["held"] = st->held;
    j["waiting"] = st->waiting;
    j["eligible_members"] = st->eligible_members;
    j["dispatched"] = st->dispatched;
    j["finished"] = st->finished + st->cancelled + st->timed_out;
    j["lost"] = st->lost;
  }
  nlohmann::json users = nlohmann::json::array();
  for (const auto& [name, job] : jobs_)
    if (queue_of(job) == q.name) users.push_back(name);
  j["jobs"] = users;
  return j;
}

nlohmann::json Master::api_queue_put(const nlohmann::json& args) {
  const auto& files = need(args, "files");
  if (!files.is_array() || files.empty()) throw ApiError{"argument 'files' must be a non-empty list"};
  std::vector<QueueConfig> parsed;
  std::vector<std::pair<std::string, std::string>> sources;
  for (const auto& f : files) {
    if (!f.is_object()) throw ApiError{"each file is {source, text}"};
    sources.emplace_back(need_string(f, "source"), need_string(f, "text"));
    auto q = parse_queue(need_string(f, "text"), need_string(f, "source"));
    if (!q.ok()) throw ApiError{q.error().message};
    if (q->name == kDefaultQueue)
      throw ApiError{need_string(f, "source") + ": the queue 'default' is built in and cannot be replaced"};
    parsed.push_back(std::move(q.value()));
  }
  nlohmann::json out = {{"created", nlohmann::json::array()}, {"updated", nlohmann::json::array()}};
  for (size_t i = 0; i < parsed.size(); ++i) {
    auto& q = parsed[i];
    if (auto s = sched_.add_or_update_queue(q); !s.ok()) throw ApiError{s.error().message};
    write([rec = QueueRecord{q.name, sources[i].first, sources[i].second}](Store& st) {
      return st.put_queue(rec);
    });
    queue_sources_[q.name] = sources[i];
    bool exists = queues_.count(q.name) > 0;
    out[exists ? "updated" : "created"].push_back(q.name);
    queues_[q.name] = q;
    publish_queue_updated(q.name, exists ? "updated" : "created");
  }
  dispatch_needed_ = true;  // a bigger window may start waiting instances now
  return out;
}

nlohmann::json Master::api_queue_list(const nlohmann::json&) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [name, q] : queues_) out.push_back(queue_json(q));
  return {{"queues", out}};
}

nlohmann::json Master::api_queue_show(const nlohmann::json& args) {
  std::string name = need_string(args, "name");
  auto it = queues_.find(name);
  if (it == queues_.end()) throw ApiError{"no queue named '" + name + "'"};
  return queue_json(it->second);
}

nlohmann::json Master::api_queue_rm(const nlohmann::json& args) {
  std::string name = need_string(args, "name");
  auto it = queues_.find(name);
  if (it == queues_.end()) throw ApiError{"no queue named '" + name + "'"};
  if (name == kDefaultQueue) throw ApiError{"the queue 'default' is built in and cannot be removed"};
  for (const auto& [jn, job] : jobs_)
    if (queue_of(job) == name) throw ApiError{"queue '" + name + "' is used by job '" + jn + "'"};
  if (auto s = sched_.remove_queue(name); !s.ok()) throw ApiError{s.error().message};
  write([name](Store& st) { return st.remove_queue(name); });
  queues_.erase(it);
  queue_sources_.erase(name);
  publish_queue_updated(name, "removed");
  return {{"removed", name}};
}

Result<Instance> Master::instance_from_record(const InstanceRecord& rec,
                                              const std::shared_ptr<const InstanceSpec>& previous) const {
  static const std::vector<std::string> kNoTags;
  auto j = jobs_.find(rec.job);
  return from_record(rec, j != jobs_.end() ? j->second.requires_tags : kNoTags, previous);
}

Instance* Master::page_in(uint64_t id) {
  if (auto it = instances_.find(id); it != instances_.end()) return &it->second;
  if (!store_) return nullptr;
  auto rec = store_->load_instance(id);
  if (!rec.ok()) throw ApiError{"cannot read instance " + std::to_string(id) + ": " + rec.error().message};
  if (!rec.value() || !is_terminal(rec.value()->state)) return nullptr;  // live ones are always in memory
  auto inst = instance_from_record(*rec.value(), nullptr);
  if (!inst.ok()) throw ApiError{"cannot read instance " + std::to_string(id) + ": " + inst.error().message};
  Instance& kept = instances_[id] = std::move(inst.value());
  count_in(kept.state);
  ended_kept_.push_back(id);
  return &kept;
}

bool Master::api_wait(const std::string& client, uint64_t req, const nlohmann::json& args, nlohmann::json& out) {
  const auto& ids = need(args, "ids");
  if (!ids.is_array() || ids.empty()) throw ApiError{"argument 'ids' must be a non-empty list"};
  uint64_t timeout_ms = 10000;
  if (args.contains("timeout_ms")) {
    if (!args["timeout_ms"].is_number_unsigned()) throw ApiError{"argument 'timeout_ms' must be a number"};
    timeout_ms = std::min<uint64_t>(args["timeout_ms"].get<uint64_t>(), 60000);
  }
  Waiter w;
  w.client = client;
  w.req = req;
  if (args.contains("summary")) {
    if (!args["summary"].is_boolean()) throw ApiError{"argument 'summary' must be true or false"};
    w.summary = args["summary"].get<bool>();
  }
  w.ids.reserve(ids.size());
  for (const auto& v : ids) {
    if (!v.is_number_unsigned()) throw ApiError{"ids must be instance ids"};
    uint64_t id = v.get<uint64_t>();
    const Instance* inst = page_in(id);  // ended long ago: read back from the store
    if (!inst) throw ApiError{"no instance " + std::to_string(id)};
    w.ids.push_back(id);
    // Retries move an instance back to queued at once, so an ended state is final.
    if (!is_terminal(inst->state)) ++w.remaining;
  }
  if (w.remaining == 0) {
    out = wait_result(w);
    return true;
  }
  w.deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  waiters_.push_back(std::move(w));
  auto wit = std::prev(waiters_.end());
  for (uint64_t id : wit->ids) {
    const auto& inst = instances_.at(id);
    if (!is_terminal(inst.state)) waiters_by_instance_.emplace(id, wit);
    ++pinned_[id];  // its answer reads every one of them: none is forgotten meanwhile
  }
  return false;
}

// ---- security: roles, pending workers, approve and remove (docs/security.md) ----

std::optional<std::string> Master::api_denied(const zmq::message_t& body, const std::string& op) {
  if (!security_ || !security_->keyed()) return std::nullopt;  // without keys everyone is admin
  std::string user_id;
  const ApiRole role = security_->api_role(body, user_id);  // sets user_id
  auto why = api_permission_error(role, user_id, op);
  if (!why) return std::nullopt;
  ++counters_.permission_denied;
  uint64_t suppressed = 0;
  if (bad_traffic_log_.allow(Clock::now(), suppressed))
    log::warn("api: refused a call from " + proto::sanitize_sample(user_id.data(), user_id.size(), 80) + ": " + *why +
              " (" + std::to_string(suppressed) + " more suppressed)");
  return why;
}

namespace {
double unix_seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}
}  // namespace

nlohmann::json Master::api_workers_pending(const nlohmann::json&) {
  nlohmann::json out = nlohmann::json::array();
  ZapHandler* zap = security_ ? security_->zap() : nullptr;
  if (!zap) return {{"keyed", false}, {"pending", out}};
  for (const auto& p : zap->pending()) {
    nlohmann::json j = {{"fingerprint", p.fingerprint}, {"key", p.public_key},   {"address", p.address},
                        {"attempts", p.attempts},       {"first_seen", unix_seconds(p.first_seen)},
                        {"last_seen", unix_seconds(p.last_seen)}};
    out.push_back(std::move(j));
  }
  return {{"keyed", true}, {"pending", out}};
}

nlohmann::json Master::api_worker_approve(const nlohmann::json& args) {
  std::string name = need_string(args, "name");
  std::string key = args.contains("key") ? need_string(args, "key") : std::string();
  ZapHandler* zap = security_ ? security_->zap() : nullptr;
  if (!zap) throw ApiError{"the master runs without keys (no --keys DIR): every worker gets in, nothing to approve"};
  auto approved = zap->approve(name, key);
  if (!approved) throw ApiError{approved.error().message};
  log::info("worker '" + approved->name + "' approved (key " + approved->fingerprint + "); it gets in on its next handshake");
  return {{"worker", approved->name}, {"fingerprint", approved->fingerprint}, {"file", approved->path.string()}};
}

nlohmann::json Master::api_worker_remove(const nlohmann::json& args) {
  std::string name = need_string(args, "name");
  ZapHandler* zap = security_ ? security_->zap() : nullptr;
  if (!zap) throw ApiError{"the master runs without keys (no --keys DIR): there is no key to revoke"};
  auto removed = zap->remove(name);
  if (!removed) throw ApiError{removed.error().message};
  log::info("worker '" + removed->name + "' removed (key " + removed->fingerprint + " revoked)");
  // ZAP only runs at the handshake: the connection it has is dropped here.
  bool dropped = false;
  size_t in_flight = 0;
  auto it = members_.find(removed->name);
  if (it != members_.end() && is_present(it->second.state) && !it->second.local) {
    in_flight = it->second.in_flight.size();
    drop_removed_member(it->second, "removed by an operator (key revoked)");
    dropped = true;
  }
  return {{"worker", removed->name},
          {"fingerprint", removed->fingerprint},
          {"dropped", dropped},
          {"lost", in_flight}};
}

}  // namespace zf
