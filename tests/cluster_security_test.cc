// Keys, joining and roles with real processes (docs/security.md): a master
// with --keys, and workers and clients with admitted, unknown, read-only or
// no keys. After every refusal the cluster still serves.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <thread>

#include "tests/cluster.h"

using namespace zf::test;
namespace fs = std::filesystem;

namespace {

// The master's key directory (--keys) and the peers' key pairs, all made
// with `zforce keygen`, as an operator would.
struct KeySet {
  Cluster& c;
  std::string dir;    // the master's --keys DIR
  std::string peers;  // where workers and clients keep their NAME.key
  std::string master_pub;

  explicit KeySet(Cluster& cluster) : c(cluster), dir(cluster.dir() + "/keys"), peers(cluster.dir() + "/peers") {
    fs::create_directories(dir);
    fs::create_directories(peers);
    keygen(dir, "master");
    master_pub = dir + "/master.pub";
  }
  // Returns the fingerprint keygen printed.
  std::string keygen(const std::string& where, const std::string& name) {
    auto r = c.zforce_as({}, {"--json", "keygen", "--dir", where, name});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    return json::parse(r.out)["fingerprint"].get<std::string>();
  }
  // A peer key pair; `sub` ("workers", "clients/admin", ...) admits it.
  std::string peer(const std::string& name, const std::string& sub = "") {
    std::string fp = keygen(peers, name);
    if (!sub.empty()) {
      fs::create_directories(dir + "/" + sub);
      fs::copy_file(peers + "/" + name + ".pub", dir + "/" + sub + "/" + name + ".pub");
    }
    return fp;
  }
  std::string key(const std::string& name) const { return peers + "/" + name + ".key"; }
  std::vector<std::string> flags(const std::string& name) const {
    return {"--key", key(name), "--master-key", master_pub};
  }
};

bool has_event(Cluster& c, const std::string& type, const std::function<bool(const json&)>& pred) {
  for (const auto& e : c.events())
    if (e["type"] == type && pred(e)) return true;
  return false;
}

std::string detail_of(const json& e) { return e.value("detail", std::string()); }

size_t count_refused(Cluster& c, const std::string& needle) {
  size_t n = 0;
  for (const auto& e : c.events())
    if (e["type"] == "security.refused" && detail_of(e).find(needle) != std::string::npos) ++n;
  return n;
}

// Polls `pred` every 100 ms for up to `timeout`.
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(100ms);
  }
  return true;
}

json instances(Cluster& c) { return parse_ok(c.zforce({"--json", "instances", "--limit", "0"}))["instances"]; }

uint64_t run_id(const CmdResult& r) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out)["instances"][0].get<uint64_t>();
}

// The cluster serves: an admin run completes.
void still_serves(Cluster& c) {
  auto r = c.zforce({"run", "quick", "--wait"});
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  CHECK(r.exit_code == 0);
}

int tcp_connect(int port) {
  int fd = tcp_connect_loopback(port);
  REQUIRE(fd >= 0);
  return fd;
}

// A TCP proxy in front of the master's api: forwards both ways and records
// every byte the client sends.
class RecordingProxy {
 public:
  explicit RecordingProxy(int target_port) : target_(target_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(listen_fd_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(listen_fd_, 4) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~RecordingProxy() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }
  std::string endpoint() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
  // What the first client connection sent, once that connection has ended.
  std::string recorded() {
    std::lock_guard<std::mutex> l(mu_);
    return done_ ? recorded_ : std::string();
  }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      int server = tcp_connect_loopback(target_);
      if (server >= 0) forward(client, server);
      ::close(client);
      if (server >= 0) ::close(server);
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
    }
  }
  void forward(int client, int server) {
    char buf[65536];
    while (!stop_) {
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (::poll(p, 2, 100) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::recv(p[i].fd, buf, sizeof buf, 0);
        if (n <= 0) return;
        if (i == 0 && !done_) {
          std::lock_guard<std::mutex> l(mu_);
          recorded_.append(buf, static_cast<size_t>(n));
        }
        if (::send(p[1 - i].fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) return;
      }
    }
  }

  int target_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::string recorded_;
  bool done_ = false;
};

// Sends `bytes` on a fresh TCP connection to the api and reads until the
// master closes it. True if it did within 10 s. `half_close`: we end our
// side after the bytes (a truncated handshake otherwise waits for more).
bool master_drops(int port, const std::string& bytes, bool half_close) {
  int fd = tcp_connect(port);
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the master already closed: that is what we check below
    sent += static_cast<size_t>(n);
  }
  if (half_close) ::shutdown(fd, SHUT_WR);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  bool closed = false;
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) continue;  // its greeting and WELCOME
    closed = n == 0 || errno == ECONNRESET || errno == EPIPE;
    break;
  }
  ::close(fd);
  return closed;
}

const char* kQuickJob = "name = \"quick\"\n[[steps]]\nrun = [\"echo\", \"hi\"]\n";

// A keyed master with an admin client the harness uses, local slots to run
// `quick`, and the tap connected.
void start_keyed(Cluster& c, KeySet& k, std::vector<std::string> extra = {"--local-slots", "1"}) {
  k.peer("admin", "clients/admin");
  std::vector<std::string> args = {"--keys", k.dir};
  args.insert(args.end(), extra.begin(), extra.end());
  c.start_master(args);
  c.use_keys(k.key("admin"), k.master_pub);
  c.connect_tap();
  auto quick = c.write_file("quick.toml", kQuickJob);
  REQUIRE(c.zforce({"job", "put", quick}).exit_code == 0);
}

}  // namespace

TEST_CASE("keygen writes a 0600 secret key and a public key, prints the fingerprint, and never overwrites") {
  Cluster c;
  std::string dir = c.dir() + "/k";
  fs::create_directories(dir);
  auto r = c.zforce_as({}, {"keygen", "--dir", dir, "w1"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("fingerprint ") != std::string::npos);
  struct stat st {};
  REQUIRE(::stat((dir + "/w1.key").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  REQUIRE(fs::exists(dir + "/w1.pub"));
  auto before = fs::last_write_time(dir + "/w1.key");
  std::ifstream in(dir + "/w1.key");
  std::string secret((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  auto again = c.zforce_as({}, {"keygen", "--dir", dir, "w1"});
  CHECK(again.exit_code == 1);
  CHECK(again.err.find("already exists") != std::string::npos);
  std::ifstream in2(dir + "/w1.key");
  std::string secret2((std::istreambuf_iterator<char>(in2)), std::istreambuf_iterator<char>());
  CHECK(secret2 == secret);
  CHECK(fs::last_write_time(dir + "/w1.key") == before);
}

TEST_CASE("an unknown worker waits for approval, runs once approved, and is dropped at once when removed") {
  Cluster c;
  KeySet k(c);
  std::string w1_fp = k.peer("w1");  // not admitted: it will be pending
  k.peer("w2", "workers");
  start_keyed(c, k, {});  // no local slots: only w1 and w2 can run anything
  auto slow = c.write_file("slow.toml", "name = \"slow\"\n[[steps]]\nrun = [\"sleep\", \"60\"]\n");
  REQUIRE(c.zforce({"job", "put", slow}).exit_code == 0);

  pid_t w1 = c.start_worker("w1", 1, {"--key", k.key("w1"), "--master-key", k.master_pub});
  // Refused at the handshake, again and again (a fresh socket each time), and listed as pending.
  json pending;
  REQUIRE(eventually(
      [&] {
        pending = parse_ok(c.zforce({"--json", "workers", "--pending"}))["pending"];
        return pending.size() == 1 && pending[0]["attempts"].get<uint64_t>() >= 3;
      },
      20s));
  CHECK(pending[0]["fingerprint"] == w1_fp);
  CHECK(pending[0]["address"] == "127.0.0.1");
  auto table = c.zforce({"workers", "--pending"});
  CHECK(table.out.find(w1_fp) != std::string::npos);
  CHECK(c.wait_for([&] { return count_refused(c, "fingerprint=" + w1_fp) > 0; }, 10s));
  CHECK(count_refused(c, "domain=workers") > 0);
  CHECK(c.log_of("worker-w1").find("the master refused this worker's key") != std::string::npos);

  // It runs nothing: it is no member and the instance stays queued.
  uint64_t id = run_id(c.zforce({"--json", "run", "quick"}));
  uint64_t attempts_then = pending[0]["attempts"].get<uint64_t>();
  REQUIRE(eventually(
      [&] {
        auto p = parse_ok(c.zforce({"--json", "workers", "--pending"}))["pending"];
        return p.size() == 1 && p[0]["attempts"].get<uint64_t>() > attempts_then;  // it tried again meanwhile
      },
      20s));
  CHECK(parse_ok(c.zforce({"--json", "workers"}))["workers"].empty());
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", std::to_string(id)}))["state"] == "queued");
  CHECK_FALSE(has_event(c, "instance.assigned", [&](const json& e) { return e["instance"] == id; }));

  // Approved (by a fingerprint prefix): it gets in on its next attempt and runs the instance.
  auto approve = c.zforce({"worker", "approve", "w1", "--key", w1_fp.substr(0, 6)});
  INFO(approve.err);
  REQUIRE(approve.exit_code == 0);
  CHECK(approve.out.find("approved w1") != std::string::npos);
  CHECK(fs::exists(k.dir + "/workers/w1.pub"));
  CHECK(c.wait_for([&] { return has_event(c, "member.joined", [](const json& e) { return e["member"] == "w1"; }); },
                   20s));
  CHECK(c.wait_for(
      [&] { return has_event(c, "instance.succeeded", [&](const json& e) { return e["instance"] == id; }); }, 20s));
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", std::to_string(id)}))["member"] == "w1");
  CHECK(parse_ok(c.zforce({"--json", "workers", "--pending"}))["pending"].empty());

  // Removed while it runs something: dropped at once, the instance runs on w2.
  uint64_t sid = run_id(c.zforce({"--json", "run", "slow"}));
  REQUIRE(c.wait_for(
      [&] {
        return has_event(c, "instance.running",
                         [&](const json& e) { return e["instance"] == sid && e["member"] == "w1"; });
      },
      20s));
  c.start_worker("w2", 1, {"--key", k.key("w2"), "--master-key", k.master_pub});
  REQUIRE(c.wait_for([&] { return has_event(c, "member.joined", [](const json& e) { return e["member"] == "w2"; }); },
                     20s));
  auto rm = c.zforce({"--json", "worker", "remove", "w1"});
  auto removed = parse_ok(rm);
  CHECK(removed["dropped"] == true);
  CHECK(removed["lost"] == 1);
  CHECK(fs::exists(k.dir + "/revoked/w1.pub"));
  CHECK_FALSE(fs::exists(k.dir + "/workers/w1.pub"));
  CHECK(c.wait_for([&] { return has_event(c, "member.lost", [](const json& e) { return e["member"] == "w1"; }); },
                   20s));
  CHECK(c.wait_for(
      [&] { return has_event(c, "instance.lost", [&](const json& e) { return e["instance"] == sid; }); }, 20s));
  CHECK(c.wait_for(
      [&] {
        return has_event(c, "instance.running", [&](const json& e) {
          return e["instance"] == sid && e["member"] == "w2" && e["attempt"] == 2;
        });
      },
      20s));
  // The worker was told REFUSED: it exits with 2.
  int st = c.wait_exit(w1, 20s);
  REQUIRE(st != -1);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 2);
  CHECK(c.log_of("worker-w1").find("the master refused this worker") != std::string::npos);
  CHECK(c.log_of("master").find("worker 'w1': removed by an operator") != std::string::npos);
  // A removed key is refused, not pending again.
  CHECK(parse_ok(c.zforce({"--json", "workers", "--pending"}))["pending"].empty());
}

TEST_CASE("a client without a key, or with an unknown key, gets a clear error and changes nothing") {
  Cluster c;
  KeySet k(c);
  std::string stranger_fp = k.peer("stranger");  // made, but not admitted
  k.peer("w9", "workers");                       // a worker's key
  start_keyed(c, k);
  auto jobs_before = parse_ok(c.zforce({"--json", "job", "list"}));
  auto other = c.write_file("other.toml", "name = \"other\"\n[[steps]]\nrun = [\"true\"]\n");

  auto nokey = c.zforce_as({}, {"run", "quick"}, 30s);
  CHECK(nokey.exit_code == 1);
  // The mechanism mismatch when the client reads the master's greeting, or
  // (when the master closed the connection first, every time) the same
  // advice after the client's timeout.
  CHECK_MESSAGE(nokey.err.find("requires keys and this client has none") != std::string::npos, nokey.err);
  auto nokey_put = c.zforce_as({}, {"job", "put", other}, 30s);
  CHECK(nokey_put.exit_code == 1);

  auto unknown = c.zforce_as(k.flags("stranger"), {"run", "quick"}, 30s);
  CHECK(unknown.exit_code == 1);
  CHECK(unknown.err.find("the master refused this client's key (" + stranger_fp + ")") != std::string::npos);
  auto unknown_put = c.zforce_as(k.flags("stranger"), {"job", "put", other}, 30s);
  CHECK(unknown_put.exit_code == 1);
  CHECK(unknown_put.err.find("the master refused this client's key") != std::string::npos);

  // A worker's key is not a client key.
  auto worker_key = c.zforce_as(k.flags("w9"), {"job", "list"}, 30s);
  CHECK(worker_key.exit_code == 1);
  CHECK(worker_key.err.find("the master refused this client's key") != std::string::npos);

  // The tap refuses them too.
  auto tap = c.zforce_as({}, {"tap", "--for", "20s"}, 30s);
  CHECK(tap.exit_code == 1);
  CHECK(tap.err.find("requires keys") != std::string::npos);

  // With a wrong master.pub the master cannot even read the handshake: the
  // client gives up at its --timeout, with a message about the keys.
  auto wrong = c.zforce_as({"--key", k.key("admin"), "--master-key", k.peers + "/stranger.pub", "--timeout", "2s"},
                           {"run", "quick"}, 30s);
  CHECK(wrong.exit_code == 1);
  CHECK(wrong.err.find("no answer from the master") != std::string::npos);
  CHECK(wrong.err.find("--master-key") != std::string::npos);

  // Nothing changed.
  CHECK(parse_ok(c.zforce({"--json", "job", "list"})) == jobs_before);
  CHECK(instances(c).empty());

  // Each refusal is on the tap and in the master's log.
  CHECK(c.wait_for([&] { return count_refused(c, "fingerprint=" + stranger_fp) >= 2; }, 10s));
  CHECK(count_refused(c, "domain=api") >= 2);
  // The keyless attempts (run, job put, tap; the client retries). How the
  // master's monitor classifies each is a race: a client that has read the
  // master's CURVE greeting may hang up before the master has read its NULL
  // one, and the master then reports the connection ended during the
  // handshake. Both kinds show up under ASan (where this check, counting
  // only mismatches, failed in 3 of 5 runs); either way the refusal is on
  // the tap.
  bool keyless_refused = c.wait_for(
      [&] {
        return count_refused(c, "mechanism mismatch") + count_refused(c, "connection ended during the handshake") >= 2;
      },
      10s);
  std::string refusals;
  for (const auto& e : c.events())
    if (e["type"] == "security.refused") refusals += detail_of(e) + "\n";
  CHECK_MESSAGE(keyless_refused, "refusals on the tap:\n" << refusals);
  CHECK(c.wait_for([&] { return count_refused(c, "domain=events") >= 1; }, 10s));
  std::string log = c.log_of("master");
  CHECK(log.find("refused api peer 127.0.0.1 key " + stranger_fp) != std::string::npos);
  CHECK(log.find("refused api peer (address unknown") != std::string::npos);

  still_serves(c);
  CHECK(instances(c).size() == 1);
}

TEST_CASE("a read-only client can list, show and tap, but not run") {
  Cluster c;
  KeySet k(c);
  k.peer("viewer", "clients/readonly");
  start_keyed(c, k);
  auto ro = k.flags("viewer");
  still_serves(c);  // instance 1
  REQUIRE(instances(c).size() == 1);
  uint64_t first = instances(c)[0]["id"].get<uint64_t>();

  CHECK(c.zforce_as(ro, {"job", "list"}).out.find("quick") != std::string::npos);
  CHECK(c.zforce_as(ro, {"job", "show", "quick"}).exit_code == 0);
  CHECK(c.zforce_as(ro, {"--json", "instances"}).exit_code == 0);
  CHECK(c.zforce_as(ro, {"instance", "show", std::to_string(first)}).exit_code == 0);
  CHECK(c.zforce_as(ro, {"workers"}).exit_code == 0);
  CHECK(c.zforce_as(ro, {"workers", "--pending"}).exit_code == 0);
  CHECK(c.zforce_as(ro, {"queue", "list"}).exit_code == 0);

  auto run = c.zforce_as(ro, {"run", "quick"});
  CHECK(run.exit_code == 1);
  CHECK(run.err == "zforce: permission denied: run needs the admin role (this client is readonly:viewer)\n");
  auto rm = c.zforce_as(ro, {"job", "rm", "quick"});
  CHECK(rm.exit_code == 1);
  CHECK(rm.err.find("permission denied: job.rm needs the admin role") != std::string::npos);
  auto approve = c.zforce_as(ro, {"worker", "approve", "x"});
  CHECK(approve.err.find("permission denied: worker.approve needs the admin role") != std::string::npos);
  // The same keys from the environment.
  ::setenv("ZFORCE_KEY", k.key("viewer").c_str(), 1);
  ::setenv("ZFORCE_MASTER_KEY", k.master_pub.c_str(), 1);
  auto from_env = c.zforce_as({}, {"run", "quick"});
  ::unsetenv("ZFORCE_KEY");
  ::unsetenv("ZFORCE_MASTER_KEY");
  CHECK(from_env.exit_code == 1);
  CHECK(from_env.err == "zforce: permission denied: run needs the admin role (this client is readonly:viewer)\n");

  // Nothing was created or removed.
  CHECK(instances(c).size() == 1);
  CHECK(parse_ok(c.zforce({"--json", "job", "list"}))["jobs"].size() == 1);
  auto stats = parse_ok(c.zforce({"--json", "stats"}));
  CHECK(stats["permission_denied"] == 4);
  CHECK(c.log_of("master").find("refused a call from readonly:viewer") != std::string::npos);

  // The tap: a read-only subscriber receives events (published by an admin's changes).
  pid_t tap = c.spawn({bin("ZF_CLIENT_BIN"), "--events", c.events_endpoint(), "--key", k.key("viewer"),
                       "--master-key", k.master_pub, "--json", "tap", "--type", "job.updated", "--count", "1",
                       "--for", "60s"},
                      "tap-viewer");
  auto quick = c.dir() + "/quick.toml";
  int st = -1;
  for (int i = 0; i < 100 && st == -1; ++i) {
    REQUIRE(c.zforce({"job", "put", quick}).exit_code == 0);  // publishes job.updated
    st = c.wait_exit(tap, 200ms);
  }
  REQUIRE(st != -1);
  CHECK(WEXITSTATUS(st) == 0);
  std::string out = c.log_of("tap-viewer");
  INFO(out);
  CHECK(out.find("\"type\":\"job.updated\"") != std::string::npos);
}

TEST_CASE("replayed and truncated api bytes create nothing; the master drops the connection and serves on") {
  Cluster c;
  KeySet k(c);
  start_keyed(c, k);
  int api_port = port_of(c.api());

  std::string recorded;
  {
    RecordingProxy proxy(api_port);
    pid_t p = c.spawn({bin("ZF_CLIENT_BIN"), "--api", proxy.endpoint(), "--key", k.key("admin"), "--master-key",
                       k.master_pub, "--json", "run", "quick"},
                      "via-proxy");
    int st = c.wait_exit(p, 30s);
    INFO(c.log_of("via-proxy"));
    REQUIRE(st != -1);
    REQUIRE(WEXITSTATUS(st) == 0);
    REQUIRE(eventually([&] { return !proxy.recorded().empty(); }, 10s));
    recorded = proxy.recorded();
  }
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 1; }, 20s));
  REQUIRE(instances(c).size() == 1);
  REQUIRE(recorded.size() > 64 + 200);  // greeting, HELLO, INITIATE, the request

  REQUIRE(count_refused(c, "domain=api") == 0);
  // The master closes the connection by itself, except for a handshake cut
  // short, which it waits for until we end our side. Each is a
  // security.refused event and a log line.
  SUBCASE("replayed whole") {
    CHECK(master_drops(api_port, recorded, false));
    CHECK(c.wait_for([&] { return count_refused(c, "domain=api reason=handshake failed before authentication") >= 1; },
                     10s));
  }
  SUBCASE("replayed without its last byte") {
    CHECK(master_drops(api_port, recorded.substr(0, recorded.size() - 1), false));
    CHECK(c.wait_for([&] { return count_refused(c, "domain=api reason=handshake failed before authentication") >= 1; },
                     10s));
  }
  SUBCASE("cut inside the handshake") {
    CHECK(master_drops(api_port, recorded.substr(0, 64 + 100), true));
    CHECK(c.wait_for([&] { return count_refused(c, "domain=api reason=the connection ended during the handshake") >= 1; },
                     10s));
  }
  CHECK(c.log_of("master").find("refused api peer (address unknown") != std::string::npos);
  // Nothing was created by the replay; the cluster still serves.
  still_serves(c);
  CHECK(instances(c).size() == 2);
  CHECK(c.wait_for([&] { return c.count("instance.succeeded") == 2; }, 20s));
  CHECK(c.count("instance.queued") == 2);
}

TEST_CASE("without keys, a non-loopback bind needs --insecure and is logged as INSECURE at every start") {
  Cluster c;
  for (int start = 0; start < 2; ++start) {
    std::string name = "insecure-" + std::to_string(start);
    std::string data = c.dir() + "/" + name;
    pid_t m = c.spawn({bin("ZF_MASTER_BIN"), "--data", data, "--workers", "tcp://0.0.0.0:*", "--api",
                       "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*", "--local-slots", "0", "--insecure"},
                      name);
    REQUIRE(eventually([&] { return fs::exists(data + "/endpoints.json"); }, 10s));
    CHECK(c.log_of(name).find("INSECURE: binding tcp://0.0.0.0:*") != std::string::npos);
    c.signal(m, SIGKILL);
    REQUIRE(c.wait_exit(m, 10s) != -1);
  }
  // With keys the same bind needs no --insecure, and nothing is logged as INSECURE.
  KeySet k(c);
  std::string data = c.dir() + "/keyed";
  pid_t m = c.spawn({bin("ZF_MASTER_BIN"), "--data", data, "--workers", "tcp://0.0.0.0:*", "--api",
                     "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*", "--local-slots", "0", "--keys", k.dir},
                    "keyed");
  REQUIRE(eventually([&] { return fs::exists(data + "/endpoints.json"); }, 10s));
  CHECK(c.log_of("keyed").find("INSECURE") == std::string::npos);
  CHECK(c.log_of("keyed").find("keys " + k.dir + ": master key") != std::string::npos);
  c.signal(m, SIGKILL);
  REQUIRE(c.wait_exit(m, 10s) != -1);
}

// When every connection ends before the client has read the master's
// greeting, no mechanism mismatch is reported, only cut handshakes; a
// keyless client then still says what a keyed master wants once its
// --timeout is over. The "master" here accepts TCP connections and closes
// them at once.
TEST_CASE("a keyless client whose handshakes are all cut is told that the master probably requires keys") {
  Cluster c;
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(listener >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 16) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  std::atomic<bool> stop{false};
  std::atomic<int> accepted{0};
  std::thread closer([&] {
    while (!stop) {
      pollfd p{listener, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int conn = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn < 0) continue;
      ++accepted;
      ::close(conn);
    }
  });
  const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  pid_t p = c.spawn({bin("ZF_CLIENT_BIN"), "--api", endpoint, "--timeout", "2s", "job", "list"}, "client");
  int code = c.wait_exit(p, 30s);
  stop = true;
  closer.join();
  ::close(listener);
  CHECK((WIFEXITED(code) && WEXITSTATUS(code) == 1));
  CHECK(accepted > 0);
  const std::string err = c.log_of("client");
  CHECK_MESSAGE(err.find("ended during the handshake") != std::string::npos, err);
  CHECK_MESSAGE(err.find("requires keys and this client has none") != std::string::npos, err);
}
