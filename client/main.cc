// zforce: the command-line client. Every action and query goes through the
// master's api endpoint; `tap` subscribes to its event endpoint.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "client/api_client.h"
#include "common/curve_keys.h"
#include "common/duration.h"
#include "common/protocol.h"
#include "common/zmq_util.h"

namespace {

using json = nlohmann::json;

std::string dump(const json& j, int indent = -1) {
  // Output tails are raw bytes and may not be valid UTF-8.
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::string format_ts(double ts) {
  auto secs = static_cast<time_t>(ts);
  std::tm tm{};
  localtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>((ts - static_cast<double>(secs)) * 1000));
  return buf;
}

std::string cell(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return "-";
  if (j[key].is_string()) return j[key].get<std::string>();
  return dump(j[key]);
}

void print_table(const std::vector<std::string>& headers, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(headers.size());
  for (size_t i = 0; i < headers.size(); ++i) w[i] = headers[i].size();
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (size_t i = 0; i < r.size(); ++i) {
      s += r[i];
      if (i + 1 < r.size()) s += std::string(w[i] - r[i].size() + 2, ' ');
    }
    std::cout << s << "\n";
  };
  line(headers);
  for (const auto& r : rows) line(r);
}

std::string event_line(const json& e) {
  std::string s = format_ts(e.value("ts", 0.0)) + " #" + std::to_string(e.value("seq", 0)) + " " +
                  e.value("type", std::string("?"));
  for (const char* k : {"job", "instance", "attempt", "queue", "member", "slot", "exit_code", "detail"})
    if (e.contains(k)) s += std::string(" ") + k + "=" + cell(e, k);
  return s;
}

std::string format_date(double ts) {
  auto secs = static_cast<time_t>(ts);
  std::tm tm{};
  localtime_r(&secs, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

// --key/--master-key, or ZFORCE_KEY/ZFORCE_MASTER_KEY: both or neither.
zf::Result<std::optional<zf::ClientKeys>> load_client_keys(const std::string& key_file,
                                                           const std::string& master_key_file) {
  if (key_file.empty() && master_key_file.empty()) return std::optional<zf::ClientKeys>{};
  if (key_file.empty() || master_key_file.empty())
    return zf::Error{"--key and --master-key (ZFORCE_KEY and ZFORCE_MASTER_KEY) go together: CURVE needs both"};
  auto key = zf::load_secret(key_file);
  if (!key.ok()) return zf::Error{"--key: " + key.error().message};
  auto master = zf::load_public(master_key_file);
  if (!master.ok()) return zf::Error{"--master-key: " + master.error().message};
  return std::optional<zf::ClientKeys>{zf::ClientKeys{*key, *master}};
}

volatile sig_atomic_t g_interrupted = 0;
void on_interrupt(int) { g_interrupted = 1; }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zforce: control and watch a zforce cluster"};
  app.require_subcommand(1);
  app.fallthrough();  // --json and --api are accepted before or after the subcommand
  std::string api_ep = env_or("ZFORCE_API", "tcp://127.0.0.1:7101");
  std::string events_ep = env_or("ZFORCE_EVENTS", "tcp://127.0.0.1:7102");
  bool as_json = false;
  std::string timeout_s = "10s";
  app.add_option("--api", api_ep, "the master's api endpoint (env ZFORCE_API)")->capture_default_str();
  app.add_option("--events", events_ep, "the master's event endpoint, for tap (env ZFORCE_EVENTS)")
      ->capture_default_str();
  app.add_flag("--json", as_json, "machine-readable output");
  app.add_option("--timeout", timeout_s, "how long to wait for the master's answer")->capture_default_str();
  std::string key_file = env_or("ZFORCE_KEY", ""), master_key_file = env_or("ZFORCE_MASTER_KEY", "");
  app.add_option("--key", key_file, "this client's secret key file, NAME.key (env ZFORCE_KEY)");
  app.add_option("--master-key", master_key_file, "the master's public key file, master.pub (env ZFORCE_MASTER_KEY)");

  auto* keygen = app.add_subcommand("keygen", "write a CURVE key pair NAME.key (0600) and NAME.pub; never overwrites");
  std::string keygen_name, keygen_dir = ".";
  keygen->add_option("name", keygen_name, "the key's name: the worker's or client's name")->required();
  keygen->add_option("--dir", keygen_dir, "folder to write the two files into")->capture_default_str();

  auto* job = app.add_subcommand("job", "manage jobs")->require_subcommand(1);
  std::vector<std::string> put_files;
  auto* job_put = job->add_subcommand("put", "add or replace jobs from TOML files (all or nothing)");
  job_put->add_option("files", put_files, "job files")->required();
  auto* job_list = job->add_subcommand("list", "list jobs");
  std::string job_name;
  auto* job_show = job->add_subcommand("show", "show a job");
  job_show->add_option("name", job_name)->required();
  auto* job_rm = job->add_subcommand("rm", "remove a job");
  job_rm->add_option("name", job_name)->required();
  auto* job_enable = job->add_subcommand("enable", "let a job's triggers fire again");
  job_enable->add_option("name", job_name)->required();
  auto* job_disable = job->add_subcommand("disable", "stop a job's triggers (the job stays; manual runs work)");
  job_disable->add_option("name", job_name)->required();

  auto* queue = app.add_subcommand("queue", "manage shared execution queues")->require_subcommand(1);
  std::vector<std::string> queue_files;
  std::string queue_name;
  auto* queue_put = queue->add_subcommand("put", "add or replace queues from TOML files");
  queue_put->add_option("files", queue_files, "queue files")->required();
  auto* queue_list = queue->add_subcommand("list", "list queues with their windows and counts");
  auto* queue_show = queue->add_subcommand("show", "show a queue");
  queue_show->add_option("name", queue_name)->required();
  auto* queue_rm = queue->add_subcommand("rm", "remove a queue (refused while jobs use it)");
  queue_rm->add_option("name", queue_name)->required();

  auto* run = app.add_subcommand("run", "run a job: prints the new instance id(s)");
  std::vector<std::string> run_params;
  uint64_t run_count = 1;
  bool run_wait = false;
  run->add_option("job", job_name, "job name")->required();
  run->add_option("-p,--param", run_params, "KEY=VALUE (repeatable)");
  run->add_option("--count", run_count, "submit N instances at once")->check(CLI::Range(1, 100000));
  run->add_flag("--wait", run_wait, "wait for the end; print the output; exit 0 only if all succeeded");

  auto* insts = app.add_subcommand("instances", "list instances (newest last)");
  std::string f_job, f_state;
  uint64_t limit = 100;
  insts->add_option("--job", f_job, "only this job");
  insts->add_option("--state", f_state, "only this state");
  insts->add_option("--limit", limit, "at most N, the newest (0 = all)")->capture_default_str();

  auto* inst = app.add_subcommand("instance", "one instance")->require_subcommand(1);
  uint64_t inst_id = 0;
  auto* inst_show = inst->add_subcommand("show", "show an instance with its history and output");
  inst_show->add_option("id", inst_id)->required();

  auto* cancel = app.add_subcommand("cancel", "cancel an instance");
  cancel->add_option("id", inst_id)->required();
  auto* workers = app.add_subcommand("workers", "list cluster members");
  bool workers_pending = false;
  workers->add_flag("--pending", workers_pending, "list worker keys waiting for approval instead (master with --keys)");
  auto* worker_cmd = app.add_subcommand("worker", "act on one member")->require_subcommand(1);
  std::string member_name;
  auto* worker_drain = worker_cmd->add_subcommand("drain", "take nothing new; finish what runs; then leave");
  worker_drain->add_option("name", member_name)->required();
  std::string approve_key;
  auto* worker_approve = worker_cmd->add_subcommand("approve", "admit a pending worker key as worker NAME");
  worker_approve->add_option("name", member_name)->required();
  worker_approve->add_option("--key", approve_key,
                             "which pending key: a fingerprint prefix or the Z85 key (needed when several are "
                             "pending); the client's own key goes before the subcommand or in ZFORCE_KEY");
  auto* worker_remove = worker_cmd->add_subcommand("remove", "revoke worker NAME's key and drop it from the cluster now");
  worker_remove->add_option("name", member_name)->required();
  auto* stats = app.add_subcommand("stats", "the master's counters");

  auto* tap = app.add_subcommand("tap", "print the live event tap");
  std::string tap_prefix;
  uint64_t tap_count = 0;
  std::string tap_for;
  tap->add_option("--type", tap_prefix, "only events whose type starts with this");
  tap->add_option("--count", tap_count, "exit after N events");
  tap->add_option("--for", tap_for, "exit after this long");

  CLI11_PARSE(app, argc, argv);

  auto timeout = zf::parse_duration(timeout_s);
  if (!timeout.ok()) {
    std::cerr << "zforce: --timeout: " << timeout.error().message << "\n";
    return 64;
  }
  if (keygen->parsed()) {  // local: no master involved
    auto kp = zf::write_key_pair(keygen_dir, keygen_name);
    if (!kp.ok()) {
      std::cerr << "zforce: keygen: " << kp.error().message << "\n";
      return 1;
    }
    std::string base = (std::filesystem::path(keygen_dir) / keygen_name).string();
    std::string fp = zf::fingerprint(kp->public_key);
    if (as_json)
      std::cout << dump({{"name", keygen_name}, {"key", base + ".key"}, {"pub", base + ".pub"}, {"fingerprint", fp}})
                << "\n";
    else
      std::cout << "wrote " << base << ".key (secret, mode 0600: keep it on this host) and " << base
                << ".pub\nfingerprint " << fp << "\n";
    return 0;
  }
  auto keys = load_client_keys(key_file, master_key_file);
  if (!keys.ok()) {
    std::cerr << "zforce: " << keys.error().message << "\n";
    return 64;
  }
  zmq::context_t ctx(1);

  if (tap->parsed()) {
    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    std::optional<std::chrono::steady_clock::time_point> until;
    if (!tap_for.empty()) {
      auto d = zf::parse_duration(tap_for);
      if (!d.ok()) {
        std::cerr << "zforce: --for: " << d.error().message << "\n";
        return 64;
      }
      until = std::chrono::steady_clock::now() + *d;
    }
    zmq::socket_t sub(ctx, zmq::socket_type::sub);
    sub.set(zmq::sockopt::rcvhwm, 1'000'000);
    sub.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::subscribe, tap_prefix);
    zf::apply_client_keys(sub, *keys);
    auto monitor = zf::HandshakeMonitor::attach(ctx, sub);  // a refused tap must not wait in silence
    sub.connect(events_ep);
    uint64_t seen = 0, last_seq = 0;
    std::vector<zmq::message_t> parts;
    while (!g_interrupted && (tap_count == 0 || seen < tap_count)) {
      auto wait = std::chrono::milliseconds(200);
      if (until) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*until - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        wait = std::min(wait, left);
      }
      zmq::pollitem_t items[] = {{sub.handle(), 0, ZMQ_POLLIN, 0},
                                 {monitor.ok() ? (*monitor)->socket().handle() : nullptr, -1,
                                  static_cast<short>(monitor.ok() ? ZMQ_POLLIN : 0), 0}};
      try {
        zmq::poll(items, 2, wait);
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;  // SIGINT/SIGTERM: the loop condition ends it
        throw;
      }
      if (items[1].revents & ZMQ_POLLIN)
        for (const auto& e : (*monitor)->take())
          if (auto why = zf::client_handshake_error(e, *keys, events_ep)) {
            std::cerr << "zforce: " << *why << "\n";
            return 1;
          }
      while (zf::recv_multipart(sub, parts)) {
        if (parts.size() != 2) continue;
        auto d = zf::proto::decode(parts[1].data(), parts[1].size());
        if (!std::holds_alternative<zf::proto::Message>(d)) continue;
        auto* e = std::get_if<zf::proto::Event>(&std::get<zf::proto::Message>(d));
        if (!e) continue;
        if (last_seq != 0 && e->seq > last_seq + 1 && tap_prefix.empty())
          std::cerr << "zforce: tap missed " << (e->seq - last_seq - 1) << " event(s)\n";
        last_seq = e->seq;
        json j = zf::proto::event_to_json(*e);
        std::cout << (as_json ? dump(j) : event_line(j)) << std::endl;
        if (tap_count != 0 && ++seen >= tap_count) break;
      }
    }
    return 0;
  }

  zf::ApiClient api(ctx, api_ep, *keys);
  auto call = [&](const std::string& op, const json& args) -> zf::Result<json> {
    return api.call(op, args, *timeout);
  };
  auto fail = [](const zf::Error& e) {
    std::cerr << "zforce: " << e.message << "\n";
    return 1;
  };

  // Files are read here and sent whole, so errors name them as the operator typed them.
  auto read_files = [](const std::vector<std::string>& paths, json& files) -> zf::Status {
    files = json::array();
    for (const auto& f : paths) {
      std::ifstream in(f, std::ios::binary);
      if (!in) return zf::Error{f + ": cannot read the file"};
      std::stringstream ss;
      ss << in.rdbuf();
      files.push_back({{"source", f}, {"text", ss.str()}});
    }
    return {};
  };
  if (job_put->parsed() || queue_put->parsed()) {
    json files;
    if (auto s = read_files(job_put->parsed() ? put_files : queue_files, files); !s.ok()) return fail(s.error());
    auto r = call(job_put->parsed() ? "job.put" : "queue.put", {{"files", files}});
    if (!r.ok()) return fail(r.error());
    if (as_json) std::cout << dump(*r) << "\n";
    else {
      for (const auto& n : (*r)["created"]) std::cout << "created " << n.get<std::string>() << "\n";
      for (const auto& n : (*r)["updated"]) std::cout << "updated " << n.get<std::string>() << "\n";
    }
    return 0;
  }
  if (queue_list->parsed()) {
    auto r = call("queue.list", json::object());
    if (!r.ok()) return fail(r.error());
    if (as_json) { std::cout << dump(*r) << "\n"; return 0; }
    std::vector<std::vector<std::string>> rows;
    for (const auto& q : (*r)["queues"])
      rows.push_back({cell(q, "name"), cell(q, "run_on") + (q.contains("fallback") ? "/" + cell(q, "fallback") : ""),
                      cell(q, "max_parallel"), cell(q, "window"), cell(q, "in_flight"), cell(q, "waiting"),
                      cell(q, "dispatched"), cell(q, "finished"), cell(q, "eligible_members")});
    print_table({"NAME", "RUN_ON", "PER_MEMBER", "WINDOW", "RUNNING", "WAITING", "DISPATCHED", "FINISHED", "MEMBERS"},
                rows);
    return 0;
  }
  if (queue_show->parsed() || queue_rm->parsed()) {
    auto r = call(queue_show->parsed() ? "queue.show" : "queue.rm", {{"name", queue_name}});
    if (!r.ok()) return fail(r.error());
    if (as_json || queue_show->parsed()) std::cout << dump(*r, as_json ? -1 : 2) << "\n";
    else std::cout << "removed " << queue_name << "\n";
    return 0;
  }
  if (job_list->parsed()) {
    auto r = call("job.list", json::object());
    if (!r.ok()) return fail(r.error());
    if (as_json) { std::cout << dump(*r) << "\n"; return 0; }
    std::vector<std::vector<std::string>> rows;
    for (const auto& j : (*r)["jobs"])
      rows.push_back({cell(j, "name"), cell(j, "steps"), cell(j, "params"), cell(j, "description")});
    print_table({"NAME", "STEPS", "PARAMS", "DESCRIPTION"}, rows);
    return 0;
  }
  if (job_show->parsed()) {
    auto r = call("job.show", {{"name", job_name}});
    if (!r.ok()) return fail(r.error());
    if (as_json) std::cout << dump(*r) << "\n";
    else {
      std::cout << "# " << (*r)["name"].get<std::string>() << " (from " << (*r)["source"].get<std::string>()
                << "), queue " << cell(*r, "queue") << ", " << ((*r)["enabled"].get<bool>() ? "enabled" : "disabled")
                << "\n";
      for (const auto& t : (*r)["triggers"])
        std::cout << "# trigger " << cell(t, "index") << " (" << cell(t, "kind") << "): next "
                  << (t.contains("next") ? cell(t, "next")
                                         : (t["kind"] == "watch" ? "on a new file in " + cell(t, "watch") : "never"))
                  << "\n";
      std::cout << (*r)["text"].get<std::string>();
    }
    return 0;
  }
  if (job_enable->parsed() || job_disable->parsed()) {
    auto r = call(job_enable->parsed() ? "job.enable" : "job.disable", {{"name", job_name}});
    if (!r.ok()) return fail(r.error());
    if (as_json) std::cout << dump(*r) << "\n";
    else std::cout << job_name << (job_enable->parsed() ? " enabled" : " disabled") << "\n";
    return 0;
  }
  if (job_rm->parsed()) {
    auto r = call("job.rm", {{"name", job_name}});
    if (!r.ok()) return fail(r.error());
    if (as_json) std::cout << dump(*r) << "\n";
    else std::cout << "removed " << job_name << "\n";
    return 0;
  }
  if (run->parsed()) {
    json params = json::object();
    for (const auto& kv : run_params) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) return fail(zf::Error{"-p expects KEY=VALUE, got '" + kv + "'"});
      params[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    auto r = call("run", {{"job", job_name}, {"params", params}, {"count", run_count}});
    if (!r.ok()) return fail(r.error());
    json ids = (*r)["instances"];
    if (!run_wait) {
      if (as_json) std::cout << dump(*r) << "\n";
      else if (ids.size() == 1) std::cout << ids[0].get<uint64_t>() << "\n";
      else if (ids.back().get<uint64_t>() - ids.front().get<uint64_t>() + 1 == ids.size())
        std::cout << ids.front().get<uint64_t>() << "-" << ids.back().get<uint64_t>() << "\n";
      else for (const auto& id : ids) std::cout << id.get<uint64_t>() << "\n";
      return 0;
    }
    // Without --json only counts are printed: ask for them, not for a
    // summary of every instance (a bulk run has up to 100,000).
    json done;
    while (true) {
      json wait_args = {{"ids", ids}, {"timeout_ms", 20000}};
      if (!as_json) wait_args["summary"] = true;
      auto w = api.call("wait", wait_args, std::chrono::seconds(30));
      if (!w.ok()) return fail(w.error());
      if ((*w)["done"].get<bool>()) {
        done = *w;
        break;
      }
    }
    std::map<std::string, uint64_t> by_state;
    if (as_json) {
      for (const auto& i : done["instances"]) by_state[i["state"].get<std::string>()]++;
    } else {
      for (const auto& [st, n] : done["by_state"].items()) by_state[st] = n.get<uint64_t>();
    }
    bool all_ok = by_state.size() == 1 && by_state.count("succeeded");
    if (ids.size() == 1) {
      auto s = call("instance.show", {{"id", ids[0]}});
      if (!s.ok()) return fail(s.error());
      if (as_json) std::cout << dump(*s) << "\n";
      else {
        std::cout << (*s)["output"].get<std::string>();
        std::cerr << "instance " << ids[0].get<uint64_t>() << " " << (*s)["state"].get<std::string>();
        if (s->contains("exit_code")) std::cerr << " (exit code " << (*s)["exit_code"].get<int>() << ")";
        std::cerr << "\n";
      }
    } else if (as_json) {
      std::cout << dump({{"instances", done["instances"]}}) << "\n";
    } else {
      std::string sum;
      for (const auto& [st, n] : by_state) sum += (sum.empty() ? "" : ", ") + std::to_string(n) + " " + st;
      std::cout << ids.size() << " instances: " << sum << "\n";
      for (const auto& i : done["instances"]) {  // the first ones that did not succeed
        std::cerr << "instance " << i["id"].get<uint64_t>() << " " << i["state"].get<std::string>();
        if (i.contains("exit_code")) std::cerr << " (exit code " << i["exit_code"].get<int>() << ")";
        std::cerr << "\n";
      }
    }
    return all_ok ? 0 : 1;
  }
  if (insts->parsed()) {
    json args = {{"limit", limit}};
    if (!f_job.empty()) args["job"] = f_job;
    if (!f_state.empty()) args["state"] = f_state;
    auto r = call("instances", args);
    if (!r.ok()) return fail(r.error());
    if (as_json) { std::cout << dump(*r) << "\n"; return 0; }
    std::vector<std::vector<std::string>> rows;
    for (const auto& i : (*r)["instances"])
      rows.push_back({cell(i, "id"), cell(i, "job"), cell(i, "state"), cell(i, "attempt"), cell(i, "member"),
                      cell(i, "exit_code"), cell(i, "duration_ms")});
    print_table({"ID", "JOB", "STATE", "ATTEMPT", "MEMBER", "EXIT", "MS"}, rows);
    return 0;
  }
  if (inst_show->parsed()) {
    auto r = call("instance.show", {{"id", inst_id}});
    if (!r.ok()) return fail(r.error());
    if (as_json) { std::cout << dump(*r) << "\n"; return 0; }
    const json& i = *r;
    std::cout << "instance " << cell(i, "id") << "  job " << cell(i, "job") << "  state " << cell(i, "state")
              << "  attempt " << cell(i, "attempt") << "  member " << cell(i, "member") << "  exit "
              << cell(i, "exit_code") << "\n";
    if (!i["params"].empty()) std::cout << "params " << dump(i["params"]) << "\n";
    for (const auto& h : i["history"])
      std::cout << "  " << format_ts(h["ts"].get<double>()) << " " << cell(h, "state") << " attempt "
                << cell(h, "attempt") << (h.contains("member") ? " on " + cell(h, "member") : "") << "\n";
    if (!i["error"].get<std::string>().empty()) std::cout << "error: " << i["error"].get<std::string>() << "\n";
    std::cout << "--- output\n" << i["output"].get<std::string>();
    return 0;
  }
  if (cancel->parsed()) {
    auto r = call("cancel", {{"id", inst_id}});
    if (!r.ok()) return fail(r.error());
    if (as_json) std::cout << dump(*r) << "\n";
    else std::cout << "instance " << inst_id << " " << (*r)["state"].get<std::string>() << "\n";
    return 0;
  }
  if (workers->parsed() && workers_pending) {
    auto r = call("workers.pending", json::object());
    if (!r.ok()) return fail(r.error());
    if (as_json) { std::cout << dump(*r) << "\n"; return 0; }
    if (!r->value("keyed", false)) {
      std::cout << "the master runs without keys: every worker gets in, none waits for approval\n";
      return 0;
    }
    std::vector<std::vector<std::string>> rows;
    for (const auto& p : (*r)["pending"])
      rows.push_back({cell(p, "fingerprint"), cell(p, "address"), format_date(p.value("first_seen", 0.0)),
                      format_date(p.value("last_seen", 0.0)), cell(p, "attempts")});
    print_table({"FINGERPRINT", "ADDRESS", "FIRST_SEEN", "LAST_SEEN", "ATTEMPTS"}, rows);
    return 0;
  }
  if (worker_approve->parsed() || worker_remove->parsed()) {
    json args = {{"name", member_name}};
    if (worker_approve->parsed() && !approve_key.empty()) args["key"] = approve_key;
    auto r = call(worker_approve->parsed() ? "worker.approve" : "worker.remove", args);
    if (!r.ok()) return fail(r.error());
    if (as_json) std::cout << dump(*r) << "\n";
    else if (worker_approve->parsed())
      std::cout << "approved " << member_name << " (key " << cell(*r, "fingerprint")
                << "): it gets in on its next connection attempt\n";
    else
      std::cout << "removed " << member_name << " (key " << cell(*r, "fingerprint") << " revoked)"
                << ((*r).value("dropped", false) ? "; dropped from the cluster, " + cell(*r, "lost") +
                                                        " instance(s) lost and re-queued"
                                                  : "")
                << "\n";
    return 0;
  }
  if (workers->parsed()) {
    auto r = call("workers", json::object());
    if (!r.ok()) return fail(r.error());
    if (as_json) { std::cout << dump(*r) << "\n"; return 0; }
    std::vector<std::vector<std::string>> rows;
    for (const auto& w : (*r)["workers"])
      rows.push_back({cell(w, "name"), cell(w, "state"), w["local"].get<bool>() ? "master" : "worker",
                      cell(w, "slots"), cell(w, "in_flight"), cell(w, "finished"), cell(w, "last_seen_ms")});
    print_table({"NAME", "STATE", "KIND", "SLOTS", "RUNNING", "FINISHED", "SEEN_MS_AGO"}, rows);
    return 0;
  }
  if (worker_drain->parsed()) {
    auto r = call("worker.drain", {{"name", member_name}});
    if (!r.ok()) return fail(r.error());
    if (as_json) std::cout << dump(*r) << "\n";
    else std::cout << member_name << " draining, " << (*r)["in_flight"].get<uint64_t>() << " instance(s) still running\n";
    return 0;
  }
  if (stats->parsed()) {
    auto r = call("stats", json::object());
    if (!r.ok()) return fail(r.error());
    std::cout << dump(*r, as_json ? -1 : 2) << "\n";
    return 0;
  }
  return 0;
}
