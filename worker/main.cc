// zforce-worker: connects to a master and runs what it assigns.
#include <unistd.h>

#include <thread>

#include <CLI/CLI.hpp>

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
