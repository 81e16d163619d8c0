#include "tests/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/curve_keys.h"
#include "common/protocol.h"
#include "common/zmq_util.h"

extern char** environ;

namespace zf::test {

namespace fs = std::filesystem;

std::string bin(const char* env_name) {
  const char* v = std::getenv(env_name);
  REQUIRE_MESSAGE(v != nullptr, std::string(env_name) << " is not set (run through meson test)");
  return v;
}

namespace {
std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

json parse_ok(const CmdResult& r) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);
}

bool process_gone(pid_t pid) {
  std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return true;
  auto close = stat.rfind(')');
  return close != std::string::npos && stat.size() > close + 2 && stat[close + 2] == 'Z';
}

Cluster::Cluster() {
  std::string tmpl = (fs::temp_directory_path() / "zforce-test.XXXXXX").string();
  REQUIRE(mkdtemp(tmpl.data()) != nullptr);
  dir_ = tmpl;
}

Cluster::~Cluster() {
  sub_.reset();
  for (pid_t p : pids_) ::kill(p, SIGKILL);
  for (pid_t p : pids_) {
    int st = 0;
    ::waitpid(p, &st, 0);
  }
  if (std::getenv("ZF_KEEP_TEST_DIR")) {
    MESSAGE("kept " << dir_);
    return;
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

pid_t Cluster::spawn(const std::vector<std::string>& argv, const std::string& log_name) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  std::string out = dir_ + "/" + log_name + ".out";
  std::string err = dir_ + "/" + log_name + ".err";
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  // Through setpriv (util-linux), which asks the kernel to SIGKILL the
  // process when this thread ends and then execs it (same pid): a test
  // binary killed before its destructors run (a signal, a crash) no longer
  // leaves its cluster running. Still posix_spawn: a fork of a sanitized
  // test binary made the 30,000-instance burst test fail (session 6).
  static const std::vector<std::string> kPrefix = {"/usr/bin/setpriv", "--pdeathsig", "KILL", "--"};
  static const bool wrap = ::access(kPrefix[0].c_str(), X_OK) == 0;
  std::vector<char*> args;
  if (wrap)
    for (const auto& a : kPrefix) args.push_back(const_cast<char*>(a.c_str()));
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  REQUIRE_MESSAGE(rc == 0, "cannot start " << argv[0]);
  pids_.push_back(pid);
  return pid;
}

std::string Cluster::log_of(const std::string& name) const {
  return read_file(dir_ + "/" + name + ".err") + read_file(dir_ + "/" + name + ".out");
}

void Cluster::start_master(std::vector<std::string> extra) {
  launch_master("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", std::move(extra));
}

void Cluster::restart_master(std::vector<std::string> extra) {
  launch_master(workers_, api_, events_ep_, std::move(extra));
}

void Cluster::kill_master() {
  signal(master_pid_, SIGKILL);
  REQUIRE(wait_exit(master_pid_, 10s) != -1);
}

void Cluster::launch_master(const std::string& workers, const std::string& api, const std::string& events,
                            std::vector<std::string> extra) {
  std::vector<std::string> argv = {bin("ZF_MASTER_BIN"), "--data", dir_ + "/master", "--workers", workers,
                                   "--api", api, "--events", events};
  bool has_local = false;
  for (const auto& e : extra) has_local = has_local || e == "--local-slots";
  if (!has_local) argv.insert(argv.end(), {"--local-slots", "0"});
  argv.insert(argv.end(), extra.begin(), extra.end());
  fs::remove(dir_ + "/master/endpoints.json");
  master_pid_ = spawn(argv, "master");
  auto deadline = std::chrono::steady_clock::now() + 10s;
  std::string path = dir_ + "/master/endpoints.json";
  while (!fs::exists(path)) {
    int st = 0;
    REQUIRE_MESSAGE(::waitpid(master_pid_, &st, WNOHANG) == 0, "master exited: " << log_of("master"));
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "master did not start: " << log_of("master"));
    std::this_thread::sleep_for(10ms);
  }
  json ep = json::parse(read_file(path));
  api_ = ep["api"];
  workers_ = ep["workers"];
  events_ep_ = ep["events"];
}

pid_t Cluster::start_worker(const std::string& name, int slots, std::vector<std::string> extra) {
  std::vector<std::string> argv = {bin("ZF_WORKER_BIN"), "--master", workers_, "--name", name, "--slots",
                                   std::to_string(slots)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return spawn(argv, "worker-" + name);
}

void Cluster::signal(pid_t pid, int sig) { REQUIRE(::kill(pid, sig) == 0); }

int Cluster::wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int st = 0;
    pid_t r = ::waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      std::erase(pids_, pid);
      return st;
    }
    std::this_thread::sleep_for(5ms);
  }
  return -1;
}

CmdResult Cluster::zforce(const std::vector<std::string>& args, std::chrono::milliseconds timeout) {
  return zforce_as(key_flags_, args, timeout);
}

CmdResult Cluster::zforce_as(const std::vector<std::string>& key_flags, const std::vector<std::string>& args,
                             std::chrono::milliseconds timeout) {
  static int n = 0;
  std::string name = "zforce-" + std::to_string(++n);
  std::vector<std::string> argv = {bin("ZF_CLIENT_BIN")};
  if (!api_.empty()) argv.insert(argv.end(), {"--api", api_, "--events", events_ep_});  // none before the master starts
  argv.insert(argv.end(), key_flags.begin(), key_flags.end());
  argv.insert(argv.end(), args.begin(), args.end());
  pid_t pid = spawn(argv, name);
  int st = wait_exit(pid, timeout);
  CmdResult r;
  r.out = read_file(dir_ + "/" + name + ".out");
  r.err = read_file(dir_ + "/" + name + ".err");
  if (st == -1) {
    ::kill(pid, SIGKILL);
    wait_exit(pid, 5s);
    r.exit_code = -1;
  } else {
    r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  return r;
}

void Cluster::use_keys(const std::string& secret_key_file, const std::string& master_pub_file) {
  auto kp = load_secret(secret_key_file);
  REQUIRE_MESSAGE(kp.ok(), (kp.ok() ? "" : kp.error().message));
  auto master = load_public(master_pub_file);
  REQUIRE_MESSAGE(master.ok(), (master.ok() ? "" : master.error().message));
  key_flags_ = {"--key", secret_key_file, "--master-key", master_pub_file};
  tap_public_ = kp->public_key;
  tap_secret_ = kp->secret_key;
  tap_master_ = *master;
}

void Cluster::apply_keys(zmq::socket_t& s) const {
  if (!tap_master_.empty()) make_curve_client(s, KeyPair{tap_public_, tap_secret_}, tap_master_);
}

void Cluster::connect_tap() {
  sub_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::sub);
  sub_->set(zmq::sockopt::rcvhwm, 5'000'000);
  sub_->set(zmq::sockopt::linger, 0);
  sub_->set(zmq::sockopt::subscribe, "");
  apply_keys(*sub_);
  sub_->connect(events_ep_);
  // PUB/SUB joins late: ping until our own marker comes through.
  for (int i = 0; i < 100; ++i) {
    std::string token = "sync-" + std::to_string(i);
    zmq::context_t c(1);
    zmq::socket_t d(c, zmq::socket_type::dealer);
    d.set(zmq::sockopt::linger, 0);
    apply_keys(d);
    d.connect(api_);
    proto::ApiRequest req{1, "ping", {{"token", token}}};
    std::string bytes = proto::encode(req);
    d.send(zmq::buffer(bytes));
    zmq::message_t m;
    d.set(zmq::sockopt::rcvtimeo, 5000);
    REQUIRE(d.recv(m));
    bool seen = wait_for(
        [&] {
          for (const auto& e : events_)
            if (e["type"] == "tap.ping" && e.value("detail", "") == token) return true;
          return false;
        },
        200ms);
    if (seen) return;
  }
  FAIL("the tap never came alive");
}

void Cluster::pump(std::chrono::milliseconds max_wait) {
  if (!sub_) {  // no tap connected: wait_for only polls its predicate
    std::this_thread::sleep_for(max_wait);
    return;
  }
  zmq::pollitem_t item{sub_->handle(), 0, ZMQ_POLLIN, 0};
  zmq::poll(&item, 1, max_wait);
  std::vector<zmq::message_t> parts;
  while (recv_multipart(*sub_, parts)) {
    if (parts.size() != 2) continue;
    auto d = proto::decode(parts[1].data(), parts[1].size());
    REQUIRE(std::holds_alternative<proto::Message>(d));
    events_.push_back(proto::event_to_json(std::get<proto::Event>(std::get<proto::Message>(d))));
  }
}

bool Cluster::wait_for(const std::function<bool()>& pred, std::chrono::milliseconds for_how_long) {
  auto deadline = std::chrono::steady_clock::now() + for_how_long;
  while (true) {
    if (pred()) return true;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pump(std::min(left, std::chrono::milliseconds(50)));
  }
}

std::vector<json> Cluster::events_of(uint64_t instance) const {
  std::vector<json> out;
  for (const auto& e : events_)
    if (e.contains("instance") && e["instance"] == instance) out.push_back(e);
  return out;
}

size_t Cluster::count(const std::string& type) const {
  size_t n = 0;
  for (const auto& e : events_) n += e["type"] == type;
  return n;
}

std::string Cluster::write_file(const std::string& name, const std::string& text) {
  std::string path = dir_ + "/" + name;
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
  return path;
}

void Cluster::put_noop_job() {
  auto job = write_file("n.toml", "name = \"n\"\n[[steps]]\nbuiltin = \"noop\"\n");
  auto r = zforce({"job", "put", job});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
}

long Cluster::cpu_ticks(pid_t pid) const {
  std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  REQUIRE(close != std::string::npos);
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  long utime = 0, stime = 0;
  // Fields after the command name start at 3 (state); utime is 14, stime 15.
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stol(field);
    if (i == 15) stime = std::stol(field);
  }
  return utime + stime;
}

int port_of(const std::string& endpoint) { return std::stoi(endpoint.substr(endpoint.rfind(':') + 1)); }

int tcp_connect_loopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace zf::test
