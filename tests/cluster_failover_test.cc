// Failover and control with real processes: lost workers, a worker that comes
// back after being declared lost, retries, cancel, drain and shutdown.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/protocol.h"
#include "common/zmq_util.h"
#include "tests/cluster.h"

using namespace zf::test;

namespace {

bool wait_gone(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!process_gone(pid)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

std::vector<pid_t> read_pids(const std::string& path) {
  std::ifstream in(path);
  std::vector<pid_t> pids;
  pid_t p;
  while (in >> p) pids.push_back(p);
  return pids;
}

}  // namespace

TEST_CASE("chaos: a worker killed every 2 s, 1,500 instances, each succeeds exactly once within its windows") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  std::map<std::string, pid_t> workers;
  for (const char* w : {"w1", "w2", "w3"}) workers[w] = c.start_worker(w, 4);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 3; }, 10s));
  auto q = c.write_file("chaos.queue.toml", "name = \"chaos\"\nmax_parallel = 3\nrun_on = \"workers\"\n");
  REQUIRE(c.zforce({"queue", "put", q}).exit_code == 0);
  auto job = c.write_file("nap.toml", R"(
name = "nap"
queue = "chaos"
[params.ms]
[retry]
attempts = 50
on = ["lost"]
[[steps]]
builtin = "sleep"
duration = "{{ms}}ms"
)");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);

  // Kill one worker every 2 s and start it again, from the first submission
  // until everything has ended (submitting 150 batches takes a while itself).
  auto next_kill = std::chrono::steady_clock::now() + 2s;
  int kills = 0;
  const char* names[] = {"w1", "w2", "w3"};
  auto all_done = [&] { return c.count("instance.succeeded") >= 1500; };
  auto maybe_kill = [&] {
    if (std::chrono::steady_clock::now() < next_kill || all_done()) return;
    std::string victim = names[kills % 3];
    c.signal(workers[victim], SIGKILL);
    c.wait_exit(workers[victim], 5s);
    workers[victim] = c.start_worker(victim, 4);
    ++kills;
    next_kill += 2s;
  };
  std::mt19937 rng(2026);
  for (int batch = 0; batch < 150; ++batch) {
    int ms = 10 + static_cast<int>(rng() % 191);
    REQUIRE(c.zforce({"run", "nap", "-p", "ms=" + std::to_string(ms), "--count", "10"}).exit_code == 0);
    maybe_kill();
  }
  auto deadline = std::chrono::steady_clock::now() + 180s;
  while (!all_done() && std::chrono::steady_clock::now() < deadline) {
    c.wait_for(all_done, 100ms);
    maybe_kill();
  }
  REQUIRE(all_done());
  MESSAGE(kills << " workers killed; " << c.count("instance.lost") << " attempts lost");
  CHECK(kills >= 3);
  CHECK(c.count("instance.lost") > 0);

  // From the tap alone: each instance succeeded exactly once; in-flight never
  // exceeded the window (3 per alive worker) nor 3 per member.
  std::map<uint64_t, int> succeeded;
  std::set<std::string> alive;
  std::map<uint64_t, std::string> in_flight;
  size_t worst_excess = 0;
  int over_member = 0;
  for (const auto& e : c.events()) {
    std::string type = e["type"];
    if (type == "member.joined") alive.insert(e["member"].get<std::string>());
    if (type == "member.lost" || type == "member.left") alive.erase(e["member"].get<std::string>());
    if (!e.contains("instance")) continue;
    uint64_t id = e["instance"];
    if (type == "instance.assigned") {
      in_flight[id] = e["member"];
      if (in_flight.size() > 3 * alive.size()) worst_excess = std::max(worst_excess, in_flight.size() - 3 * alive.size());
      int on_member = 0;
      for (const auto& [i, m] : in_flight) on_member += m == e["member"];
      if (on_member > 3) ++over_member;
    } else if (type != "instance.running" && type != "instance.queued") {
      in_flight.erase(id);
      if (type == "instance.succeeded") ++succeeded[id];
    }
  }
  CHECK(succeeded.size() == 1500);
  int twice = 0;
  for (const auto& [id, n] : succeeded) twice += n != 1;
  CHECK(twice == 0);
  CHECK(worst_excess == 0);
  CHECK(over_member == 0);
  auto st = parse_ok(c.zforce({"--json", "stats"}));
  CHECK(st["instances"]["succeeded"] == 1500);
  CHECK(st["instances"].size() == 1);
}

TEST_CASE("a worker that comes back after being declared lost is told to stop the superseded attempt") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  pid_t w1 = c.start_worker("w1", 1, {"--kill-grace", "200ms"});
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 1; }, 10s));
  std::string pids = c.dir() + "/pids";
  auto job = c.write_file("long.toml", "name = \"long\"\n[[steps]]\nrun = [\"sh\", \"-c\", \"echo $$ > " + pids +
                                           "-$ZFORCE_ATTEMPT; exec sleep 3\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "long"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 1; }, 5s));
  c.start_worker("w2", 1);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 2; }, 10s));

  c.signal(w1, SIGSTOP);  // frozen: no heartbeats, but its child keeps running
  REQUIRE(c.wait_for([&] { return c.count("member.lost") == 1; }, 5s));
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 2; }, 5s));
  auto first = read_pids(pids + "-1");
  REQUIRE(first.size() == 1);
  CHECK_FALSE(process_gone(first[0]));
  c.signal(w1, SIGCONT);  // it comes back and reports attempt 1 still running
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 3; }, 10s));
  CHECK(wait_gone(first[0], 5s));  // the master sent CANCEL: attempt 1 was killed on w1

  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 1; }, 10s));
  auto evs = c.events_of(1);
  CHECK(evs.back()["type"] == "instance.succeeded");
  CHECK(evs.back()["attempt"] == 2);
  CHECK(evs.back()["member"] == "w2");
  CHECK(c.count("instance.cancelled") == 0);  // the late result of attempt 1 changed nothing
  std::this_thread::sleep_for(500ms);
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", "1"}))["state"] == "succeeded");
  CHECK(c.log_of("master").find("is stale") != std::string::npos);
}

TEST_CASE("retry policy: a failing instance runs again after a growing backoff, then ends failed") {
  Cluster c;
  c.start_master({"--local-slots", "1"});
  c.connect_tap();
  auto job = c.write_file("flaky.toml", R"(
name = "flaky"
[retry]
attempts = 3
backoff = "150ms"
on = ["failed"]
[[steps]]
run = ["false"]
)");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  auto r = c.zforce({"run", "flaky", "--wait"});
  CHECK(r.exit_code == 1);
  REQUIRE(c.wait_for([&] { return c.count("instance.failed") == 3; }, 5s));
  std::vector<double> failed_at, assigned_at;
  std::vector<int> attempts;
  for (const auto& e : c.events_of(1)) {
    if (e["type"] == "instance.failed") failed_at.push_back(e["ts"]), attempts.push_back(e["attempt"]);
    if (e["type"] == "instance.assigned") assigned_at.push_back(e["ts"]);
  }
  CHECK(attempts == std::vector<int>{1, 2, 3});
  REQUIRE(assigned_at.size() == 3);
  CHECK(assigned_at[1] - failed_at[0] >= 0.149);  // backoff
  CHECK(assigned_at[2] - failed_at[1] >= 0.299);  // doubled
  auto show = parse_ok(c.zforce({"--json", "instance", "show", "1"}));
  CHECK(show["state"] == "failed");
  CHECK(show["attempt"] == 3);

  // The default policy retries only lost instances: a failure is final at once.
  auto once = c.write_file("once.toml", "name = \"once\"\n[[steps]]\nrun = [\"false\"]\n");
  REQUIRE(c.zforce({"job", "put", once}).exit_code == 0);
  CHECK(c.zforce({"run", "once", "--wait"}).exit_code == 1);
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", "2"}))["attempt"] == 1);
}

TEST_CASE("cancel of a running instance kills its whole process group") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 1, {"--kill-grace", "300ms"});
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 1; }, 10s));
  std::string pids = c.dir() + "/cancel-pids";
  // The shell ignores SIGTERM, so only the SIGKILL after the grace ends it.
  auto job = c.write_file("c.toml", "name = \"c\"\n[[steps]]\nrun = [\"sh\", \"-c\", \"trap '' TERM; echo $$ > " +
                                        pids + "; sleep 30 & echo $! >> " + pids + "; wait; wait\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "c"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 1; }, 5s));
  std::vector<pid_t> p;
  for (int i = 0; i < 100 && p.size() < 2; ++i) {
    std::this_thread::sleep_for(20ms);
    p = read_pids(pids);
  }
  REQUIRE(p.size() == 2);
  CHECK(c.zforce({"cancel", "1"}).out == "instance 1 cancelling\n");
  REQUIRE(c.wait_for([&] { return c.count("instance.cancelled") == 1; }, 5s));
  CHECK(wait_gone(p[0], 2s));
  CHECK(wait_gone(p[1], 2s));
}

TEST_CASE("drain: a drained worker takes nothing new, finishes what it runs, then leaves") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  pid_t w1 = c.start_worker("w1", 2);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 1; }, 10s));
  auto job = c.write_file("s.toml", "name = \"s\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"800ms\"\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "s"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 1; }, 5s));
  pid_t w2 = c.start_worker("w2", 2);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 2; }, 10s));

  auto d = c.zforce({"worker", "drain", "w1"});
  CHECK(d.out == "w1 draining, 1 instance(s) still running\n");
  REQUIRE(c.wait_for([&] { return c.count("member.draining") == 1; }, 5s));
  REQUIRE(c.zforce({"run", "s", "--count", "2"}).exit_code == 0);  // these go to w2 only
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 3; }, 10s));
  CHECK(c.events_of(1).back()["member"] == "w1");  // finished where it ran
  CHECK(c.events_of(2).back()["member"] == "w2");
  CHECK(c.events_of(3).back()["member"] == "w2");
  int st = c.wait_exit(w1, 5s);
  REQUIRE(st != -1);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  REQUIRE(c.wait_for([&] { return c.count("member.left") == 1; }, 5s));
  CHECK(c.count("instance.lost") == 0);

  // SIGTERM to a worker drains it the same way.
  REQUIRE(c.zforce({"run", "s"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 4; }, 5s));
  c.signal(w2, SIGTERM);
  int st2 = c.wait_exit(w2, 5s);
  REQUIRE(st2 != -1);
  CHECK(WEXITSTATUS(st2) == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 4; }, 5s));
  CHECK(c.count("instance.lost") == 0);
}

TEST_CASE("SIGTERM to the master waits for instances in flight, then exits 0") {
  Cluster c;
  c.start_master({"--local-slots", "1", "--shutdown-grace", "5s"});
  c.connect_tap();
  auto job = c.write_file("s.toml", "name = \"s\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"700ms\"\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "s"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 1; }, 5s));
  c.signal(c.master_pid(), SIGTERM);
  int st = c.wait_exit(c.master_pid(), 10s);
  REQUIRE(st != -1);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  c.wait_for([&] { return c.count("instance.succeeded") == 1; }, 1s);
  CHECK(c.count("instance.succeeded") == 1);  // it finished before the master left
}

TEST_CASE("an instance that requires a tag runs only on a member that has every tag") {
  Cluster c;
  c.start_master({"--local-slots", "1"});
  c.connect_tap();
  c.start_worker("plain", 2);
  c.start_worker("gpu1", 2, {"--tag", "gpu", "--tag", "ssd"});
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 2; }, 10s));
  auto job = c.write_file("g.toml", "name = \"g\"\nrequires = [\"gpu\", \"ssd\"]\n[[steps]]\nbuiltin = \"noop\"\n");
  auto other = c.write_file("n.toml", "name = \"n\"\nrequires = [\"quantum\"]\n[[steps]]\nbuiltin = \"noop\"\n");
  auto any = c.write_file("a.toml", "name = \"a\"\n[[steps]]\nbuiltin = \"noop\"\n");
  REQUIRE(c.zforce({"job", "put", job, other, any}).exit_code == 0);
  REQUIRE(c.zforce({"run", "g", "--count", "20", "--wait"}).exit_code == 0);
  for (const auto& e : c.events())
    if (e["type"] == "instance.succeeded") CHECK(e["member"] == "gpu1");
  // Nobody has `quantum`: it waits, and does not hold up what can run.
  REQUIRE(c.zforce({"run", "n"}).exit_code == 0);
  CHECK(c.zforce({"run", "a", "--count", "5", "--wait"}).exit_code == 0);
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", "21"}))["state"] == "queued");
  // A member with the tag joins: it runs there.
  c.start_worker("q1", 1, {"--tag", "quantum"});
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 26; }, 10s));
  CHECK(c.events_of(21).back()["member"] == "q1");
}

// The master gives an attempt up while its ASSIGN is still on the way (the
// worker re-registered meanwhile) and assigns the next attempt to the same
// worker. A scripted master (a ROUTER in this test) drives the real
// zforce-worker: the worker must stop the older attempt and then run the
// newer one, never both at once, and never leave the newer one waiting.
TEST_CASE("a worker given a newer attempt of an instance it runs stops the older one, then runs the newer") {
  Cluster c;  // only for its temp folder, process bookkeeping and logs
  zmq::context_t ctx;
  zmq::socket_t router(ctx, zmq::socket_type::router);
  router.set(zmq::sockopt::rcvtimeo, 200);
  router.bind("tcp://127.0.0.1:*");
  std::string ep = router.get(zmq::sockopt::last_endpoint);
  c.spawn({bin("ZF_WORKER_BIN"), "--master", ep, "--name", "w1", "--slots", "2", "--kill-grace", "200ms"}, "worker-w1");

  std::string peer;
  std::vector<zf::proto::Message> got;  // everything the worker sent, in order
  auto receive = [&](std::chrono::milliseconds for_how_long, const std::function<bool()>& until) {
    auto deadline = std::chrono::steady_clock::now() + for_how_long;
    while (std::chrono::steady_clock::now() < deadline && !until()) {
      std::vector<zmq::message_t> parts;
      if (!zf::recv_multipart(router, parts) || parts.size() != 2) continue;
      peer = parts[0].to_string();
      auto d = zf::proto::decode(parts[1].data(), parts[1].size());
      REQUIRE(std::holds_alternative<zf::proto::Message>(d));
      got.push_back(std::get<zf::proto::Message>(std::move(d)));
    }
    return until();
  };
  auto send = [&](const zf::proto::Message& m) {
    REQUIRE(zf::send_multipart(router, {peer, zf::proto::encode(m)}).ok());
  };
  auto count = [&](auto pred) { return std::count_if(got.begin(), got.end(), pred); };
  auto started = [](uint32_t attempt) {
    return [=](const zf::proto::Message& m) {
      auto* s = std::get_if<zf::proto::Started>(&m);
      return s && s->instance == 7 && s->attempt == attempt;
    };
  };
  auto finished = [](uint32_t attempt) {
    return [=](const zf::proto::Message& m) {
      auto* f = std::get_if<zf::proto::Finished>(&m);
      return f && f->instance == 7 && f->attempt == attempt;
    };
  };

  REQUIRE(receive(10s, [&] { return count([](const auto& m) { return std::holds_alternative<zf::proto::Ready>(m); }) == 1; }));
  send(zf::proto::Welcome{250, 40});  // a long liveness: this test sends no heartbeats
  std::string pids = c.dir() + "/pids";
  auto assign = [&](uint32_t attempt, const std::string& script) {
    zf::proto::Assign a;
    a.instance = 7;
    a.attempt = attempt;
    a.job = "long";
    zf::proto::StepSpec s;
    s.name = "main";
    s.kind = "run";
    s.argv = {"sh", "-c", script};
    a.steps = {s};
    return a;
  };
  send(assign(1, "echo $$ > " + pids + "-1; exec sleep 30"));
  REQUIRE(receive(5s, [&] { return count(started(1)) == 1; }));
  REQUIRE(c.wait_for([&] { return read_pids(pids + "-1").size() == 1; }, 5s));
  pid_t first = read_pids(pids + "-1")[0];

  // Attempt 2 while attempt 1 runs; a repeated attempt 1 changes nothing.
  send(assign(2, "if kill -0 " + std::to_string(first) + " 2>/dev/null; then exit 9; fi; echo two"));
  send(assign(1, "exit 0"));
  REQUIRE(receive(10s, [&] { return count(finished(2)) == 1; }));
  CHECK(process_gone(first));
  CHECK(count(started(2)) == 1);
  CHECK(count(started(1)) == 1);
  CHECK(count(finished(1)) == 0);  // the given-up attempt's result is not reported
  auto f = std::find_if(got.begin(), got.end(), finished(2));
  const auto& fin = std::get<zf::proto::Finished>(*f);
  CHECK(fin.status == "succeeded");  // exit 9 would mean attempt 1 was still alive
  CHECK(fin.output.find("two") != std::string::npos);
  CHECK(c.log_of("worker-w1").find("still runs here") != std::string::npos);
  send(zf::proto::Disconnect{"test over"});
}
