// zforce-master: holds the jobs, turns runs into instances, and dispatches
// them to its members.
#include <sys/resource.h>

#include <cstdlib>
#include <thread>

#include <CLI/CLI.hpp>

#include "common/allocator.h"
#include "common/curve_keys.h"
#include "common/duration.h"
#include "common/log.h"
#include "common/signals.h"
#include "master/master.h"

namespace {

// Without keys, only loopback (and inproc/ipc) endpoints may be bound unless
// the operator says --insecure: an open api lets anyone run commands.
bool is_loopback_endpoint(const std::string& ep) {
  if (ep.rfind("inproc://", 0) == 0 || ep.rfind("ipc://", 0) == 0) return true;
  if (ep.rfind("tcp://", 0) != 0) return false;
  std::string host = ep.substr(6, ep.rfind(':') == std::string::npos ? std::string::npos : ep.rfind(':') - 6);
  return host.rfind("127.", 0) == 0 || host == "localhost" || host == "[::1]" || host == "::1";
}

std::string default_data_dir() {
  if (const char* s = std::getenv("XDG_STATE_HOME"); s && *s) return std::string(s) + "/zforce";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.local/state/zforce";
  return "zforce-data";
}

// Each worker, client and tap subscriber holds a socket (two with the store's
// connections and the writer): 1,024 descriptors, a common soft default, stop
// a master at about 1,000 workers. Raise the soft limit to the hard one.
void raise_fd_limit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur >= r.rlim_max) return;
  rlim_t before = r.rlim_cur;
  r.rlim_cur = r.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &r) == 0)
    zf::log::info("open files limit raised from " + std::to_string(before) + " to " + std::to_string(r.rlim_cur));
  else
    zf::log::warn("cannot raise the open files limit above " + std::to_string(before) +
                  " (about that many workers and clients at most)");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zforce-master: the zforce cluster's master"};
  zf::MasterOptions opt;
  opt.data_dir = default_data_dir();
  opt.local_slots = std::max(1u, std::thread::hardware_concurrency());
  std::string heartbeat = "250ms";
  bool verbose = false;
  app.add_option("--workers", opt.workers, "endpoint for workers (ROUTER)")->capture_default_str();
  app.add_option("--api", opt.api, "endpoint for clients (ROUTER)")->capture_default_str();
  app.add_option("--events", opt.events, "endpoint of the event tap (PUB)")->capture_default_str();
  app.add_option("--data", opt.data_dir, "folder for the master's files")->capture_default_str();
  app.add_option("--local-slots", opt.local_slots,
                 "instances the master runs itself (default: number of cores; 0 = dispatch only)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 100000u));
  app.add_option("--heartbeat", heartbeat, "heartbeat interval, both ways")->capture_default_str();
  app.add_option("--liveness", opt.liveness, "missed heartbeats before a member is lost")
      ->capture_default_str()
      ->check(CLI::Range(2u, 100u));
  app.add_option("--max-attempts", opt.max_attempts, "attempts of an instance whose member is lost")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100u));
  std::string shutdown_grace = "10s";
  app.add_option("--shutdown-grace", shutdown_grace, "on SIGTERM, how long to wait for instances in flight")
      ->capture_default_str();
  bool no_store = false;
  std::string sync = "full";
  app.add_option("--sync", sync,
                 "full: fsync every commit (survives power loss); normal: survives a killed process, not power loss")
      ->capture_default_str()
      ->check(CLI::IsMember({"full", "normal"}));
  std::string reconcile_grace = "3s", keep_history = "30d";
  app.add_flag("--no-store", no_store, "keep everything in memory only (for benchmarks: nothing survives a restart)");
  app.add_option("--reconcile-grace", reconcile_grace,
                 "after a restart, how long workers have to report what they still run")
      ->capture_default_str();
  app.add_option("--keep-history", keep_history, "how long ended instances are kept")->capture_default_str();
  app.add_option("--keep-ended", opt.keep_ended,
                 "how many ended instances stay in memory besides the store (older ones are read back from it)")
      ->capture_default_str();
  app.add_flag("--insecure", opt.insecure, "allow binding non-loopback addresses without keys");
  std::string keys_dir;
  app.add_option("--keys", keys_dir,
                 "key directory: CURVE on every endpoint, only listed keys get in (docs/security.md)");
  app.add_flag("-v,--verbose", verbose, "debug logging");
  CLI11_PARSE(app, argc, argv);

  zf::log::set_component("master");
  if (verbose) zf::log::set_min_level(zf::log::Level::Debug);
  zf::log::info("memory allocator: " + zf::allocator_description());
  raise_fd_limit();
  auto hb = zf::parse_duration(heartbeat);
  if (!hb.ok() || hb->count() < 10) {
    std::fprintf(stderr, "zforce-master: --heartbeat: %s\n",
                 hb.ok() ? "must be at least 10ms" : hb.error().message.c_str());
    return 64;
  }
  opt.heartbeat = *hb;
  auto grace = zf::parse_duration(shutdown_grace);
  if (!grace.ok()) {
    std::fprintf(stderr, "zforce-master: --shutdown-grace: %s\n", grace.error().message.c_str());
    return 64;
  }
  opt.shutdown_grace = *grace;
  opt.store = !no_store;
  opt.sync_full = sync == "full";
  for (auto [text, dst, flag] : {std::tuple{&reconcile_grace, &opt.reconcile_grace, "--reconcile-grace"},
                                 std::tuple{&keep_history, &opt.keep_history, "--keep-history"}}) {
    auto d = zf::parse_duration(*text);
    if (!d.ok()) {
      std::fprintf(stderr, "zforce-master: %s: %s\n", flag, d.error().message.c_str());
      return 64;
    }
    *dst = *d;
  }
  if (!keys_dir.empty()) {
    if (!zf::curve_available()) {
      std::fprintf(stderr, "zforce-master: --keys: this libzmq was built without CURVE support\n");
      return 64;
    }
    auto kd = zf::load_key_dir(keys_dir);
    if (!kd.ok()) {
      std::fprintf(stderr, "zforce-master: --keys: %s\n", kd.error().message.c_str());
      return 64;
    }
    zf::log::info("keys " + keys_dir + ": master key " + zf::fingerprint(kd->master.public_key) + ", " +
                  std::to_string(kd->workers.size()) + " worker(s), " + std::to_string(kd->admin_clients.size()) +
                  " admin and " + std::to_string(kd->readonly_clients.size()) + " read-only client(s), " +
                  std::to_string(kd->pending.size()) + " pending, " + std::to_string(kd->revoked.size()) +
                  " revoked");
    opt.keys = std::move(kd.value());
  }
  // With keys every endpoint is authenticated and encrypted: any address may be bound.
  for (const auto* ep : {&opt.workers, &opt.api, &opt.events}) {
    if (!opt.keys && !is_loopback_endpoint(*ep)) {
      if (!opt.insecure) {
        std::fprintf(stderr,
                     "zforce-master: refusing to bind %s without keys: anyone who reaches it could run "
                     "commands on the cluster. Bind loopback, or pass --insecure.\n",
                     ep->c_str());
        return 64;
      }
      zf::log::warn("INSECURE: binding " + *ep + " without authentication (--insecure)");
    }
  }

  auto sigfd = zf::block_stop_signals_into_fd();
  if (!sigfd.ok()) {
    zf::log::error(sigfd.error().message);
    return 1;
  }
  opt.stop_fd = *sigfd;
  zf::Master master(opt);
  return master.run();
}
