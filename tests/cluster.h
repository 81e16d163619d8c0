// A real cluster for tests: starts zforce-master and zforce-worker as
// processes on loopback (ports chosen by the kernel, read back from the
// master's endpoints.json), runs the zforce client, and records the tap.
// Every process it starts is killed by pid and its temp folder removed when
// it goes out of scope. Every wait has a timeout.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

namespace zf::test {

using json = nlohmann::json;
using namespace std::chrono_literals;

struct CmdResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

class Cluster {
 public:
  Cluster();
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Starts the master (ports chosen by the kernel) and waits for its endpoints.
  void start_master(std::vector<std::string> extra = {});
  // Starts the master again on the same data folder and the same endpoints
  // (after kill_master or its own exit), so workers and the tap reconnect.
  void restart_master(std::vector<std::string> extra = {});
  void kill_master();
  pid_t start_worker(const std::string& name, int slots, std::vector<std::string> extra = {});
  // Spawns any program with stdout/stderr into files under the temp folder.
  pid_t spawn(const std::vector<std::string>& argv, const std::string& log_name);

  void signal(pid_t pid, int sig);
  // Waits for the process to exit; returns its wait status or -1 on timeout.
  int wait_exit(pid_t pid, std::chrono::milliseconds timeout);

  // Runs the zforce client with --api/--events set (and the keys of
  // use_keys, if any); waits up to `timeout`.
  CmdResult zforce(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 60s);
  // The same with `key_flags` instead of those keys ({} = no keys).
  CmdResult zforce_as(const std::vector<std::string>& key_flags, const std::vector<std::string>& args,
                      std::chrono::milliseconds timeout = 60s);
  // For a master started with --keys: zforce() and the harness's tap use
  // this client key pair (NAME.key) and master.pub from now on.
  void use_keys(const std::string& secret_key_file, const std::string& master_pub_file);

  // Subscribes to the tap and waits until it is live (a tap.ping comes through).
  void connect_tap();
  // Receives tap events for up to `for_how_long`, until pred is true; true if it became true.
  bool wait_for(const std::function<bool()>& pred, std::chrono::milliseconds for_how_long);
  const std::vector<json>& events() const { return events_; }
  std::vector<json> events_of(uint64_t instance) const;
  size_t count(const std::string& type) const;

  std::string write_file(const std::string& name, const std::string& text);
  // Writes and puts job "n": one builtin noop step (the workload of most
  // throughput tests).
  void put_noop_job();
  const std::string& dir() const { return dir_; }
  const std::string& api() const { return api_; }
  const std::string& workers_endpoint() const { return workers_; }
  const std::string& events_endpoint() const { return events_ep_; }
  pid_t master_pid() const { return master_pid_; }
  std::string log_of(const std::string& name) const;
  // CPU time (user+system, clock ticks) a process has used so far.
  long cpu_ticks(pid_t pid) const;

 private:
  void pump(std::chrono::milliseconds max_wait);
  void launch_master(const std::string& workers, const std::string& api, const std::string& events,
                     std::vector<std::string> extra);

  std::string dir_;
  std::string api_, workers_, events_ep_;
  pid_t master_pid_ = -1;
  std::vector<pid_t> pids_;
  zmq::context_t ctx_{1};
  std::unique_ptr<zmq::socket_t> sub_;
  std::vector<json> events_;
  std::vector<std::string> key_flags_;  // use_keys: --key FILE --master-key FILE
  std::string tap_public_, tap_secret_, tap_master_;  // use_keys, Z85
  void apply_keys(zmq::socket_t& s) const;
};

std::string bin(const char* env_name);
// The client's JSON output; the command must have succeeded.
json parse_ok(const CmdResult& r);
// True once /proc has no entry for pid, or only a zombie.
bool process_gone(pid_t pid);
// The port of a "tcp://HOST:PORT" endpoint.
int port_of(const std::string& endpoint);
// A plain TCP connection to 127.0.0.1:port (raw bytes, no ZeroMQ), or -1.
// Safe off the test's thread: it asserts nothing.
int tcp_connect_loopback(int port);

}  // namespace zf::test
