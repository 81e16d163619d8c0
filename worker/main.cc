// zforce-worker: connects to a master and runs what it assigns.
#include <unistd.h>

#include <thread>

#include <CLI/CLI.hpp>

#include "common/allocator.h"
#include "common/curve_keys.h"
#include "common/duration.h"
#include "common/log.h"
#include "common/signals.h"
#include "worker/worker.h"

int main(int argc, char** argv) {
  CLI::App app{"zforce-worker: runs job instances assigned by a zforce master"};
  zf::WorkerOptions opt;
  opt.master = "tcp://127.0.0.1:7100";
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  opt.name = host;
  opt.slots = std::max(1u, std::thread::hardware_concurrency());
  std::string kill_grace = "1s";
  bool verbose = false;
  app.add_option("--master", opt.master, "the master's worker endpoint")->capture_default_str();
  app.add_option("--name", opt.name, "this worker's name (unique in the cluster)")->capture_default_str();
  app.add_option("--slots", opt.slots, "instances run at once (default: number of cores)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--tag", opt.tags, "a tag jobs can require (repeatable)");
  app.add_option("--kill-grace", kill_grace, "time between SIGTERM and SIGKILL on cancel or timeout")
      ->capture_default_str();
  app.add_option("--output-limit", opt.exec.output_limit, "bytes of output kept per instance")
      ->capture_default_str();
  std::string key_file, master_key_file;
  app.add_option("--key", key_file, "this worker's secret key file (NAME.key, from zforce keygen)");
  app.add_option("--master-key", master_key_file, "the master's public key file (master.pub)");
  app.add_flag("-v,--verbose", verbose, "debug logging");
  CLI11_PARSE(app, argc, argv);

  auto grace = zf::parse_duration(kill_grace);
  if (!grace.ok()) {
    std::fprintf(stderr, "zforce-worker: --kill-grace: %s\n", grace.error().message.c_str());
    return 64;
  }
  opt.exec.kill_grace = *grace;
  if (opt.name.empty() || opt.name.size() > 128) {
    std::fprintf(stderr, "zforce-worker: --name must be 1 to 128 characters\n");
    return 64;
  }
  zf::log::set_component("worker " + opt.name);
  if (verbose) zf::log::set_min_level(zf::log::Level::Debug);
  zf::log::info("memory allocator: " + zf::allocator_description());
  if (key_file.empty() != master_key_file.empty()) {
    std::fprintf(stderr, "zforce-worker: --key and --master-key go together (CURVE needs both)\n");
    return 64;
  }
  if (!key_file.empty()) {
    if (auto st = zf::check_key_name(opt.name); !st.ok()) {
      std::fprintf(stderr, "zforce-worker: --name: %s (with keys, the name is the one the master approves)\n",
                   st.error().message.c_str());
      return 64;
    }
    auto key = zf::load_secret(key_file);
    if (!key.ok()) {
      std::fprintf(stderr, "zforce-worker: --key: %s\n", key.error().message.c_str());
      return 64;
    }
    auto master_key = zf::load_public(master_key_file);
    if (!master_key.ok()) {
      std::fprintf(stderr, "zforce-worker: --master-key: %s\n", master_key.error().message.c_str());
      return 64;
    }
    opt.key = *key;
    opt.master_key = *master_key;
    zf::log::info("CURVE: this worker's key " + zf::fingerprint(opt.key.public_key) + ", master key " +
                  zf::fingerprint(opt.master_key));
  }

  auto sigfd = zf::block_stop_signals_into_fd();
  if (!sigfd.ok()) {
    zf::log::error(sigfd.error().message);
    return 1;
  }
  opt.stop_fd = *sigfd;
  zmq::context_t ctx(1);
  zf::Worker worker(ctx, opt);
  return worker.run();
}
