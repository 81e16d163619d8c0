// The durable master: restarts after SIGKILL lose nothing that was
// acknowledged, run nothing twice while its first run is alive, and keep
// history and sequence numbers; a foreign database file is refused untouched.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "tests/cluster.h"

using namespace zf::test;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs the sqlite3 shell on the store (read-only) and returns its rows.
std::vector<std::string> sql(Cluster& c, const std::string& query) {
  std::string db = c.dir() + "/master/zforce.db";
  pid_t p = c.spawn({"/usr/bin/sqlite3", "-readonly", db, query}, "sqlite");
  REQUIRE(c.wait_exit(p, 60s) != -1);
  std::istringstream in(read_all(c.dir() + "/sqlite.out"));
  std::vector<std::string> rows;
  std::string line;
  while (std::getline(in, line)) rows.push_back(line);
  return rows;
}

// The masters started while it lives stall their commits while the file
// `path` exists (the test-only ZFORCE_TEST_STALL_COMMITS, docs/durability.md).
struct StallCommitsWhile {
  explicit StallCommitsWhile(const std::string& path) { ::setenv("ZFORCE_TEST_STALL_COMMITS", path.c_str(), 1); }
  ~StallCommitsWhile() { ::unsetenv("ZFORCE_TEST_STALL_COMMITS"); }
  StallCommitsWhile(const StallCommitsWhile&) = delete;
  StallCommitsWhile& operator=(const StallCommitsWhile&) = delete;
};

}  // namespace

TEST_CASE("after SIGKILL and a restart, jobs, queues and queued instances are back in order, with the history") {
  Cluster c;
  c.start_master();  // no members: instances stay queued
  c.connect_tap();
  auto q = c.write_file("q.toml", "name = \"q\"\nmax_parallel = 2\n");
  auto j = c.write_file("j.toml", "name = \"j\"\nqueue = \"q\"\n[params.n]\n[[steps]]\nrun = [\"echo\", \"{{n}}\"]\n");
  REQUIRE(c.zforce({"queue", "put", q}).exit_code == 0);
  REQUIRE(c.zforce({"job", "put", j}).exit_code == 0);
  for (int i = 1; i <= 5; ++i) REQUIRE(c.zforce({"run", "j", "-p", "n=" + std::to_string(i)}).exit_code == 0);
  REQUIRE(c.zforce({"job", "disable", "j"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.queued") == 5; }, 5s));
  uint64_t last_seq = c.events().back()["seq"];

  c.kill_master();
  c.restart_master();
  c.connect_tap();  // PUB/SUB: wait until the tap is live again before anything runs
  c.start_worker("w1", 1);
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 5; }, 15s));
  // Sequence numbers went on from where they were.
  for (const auto& e : c.events())
    if (e["type"] == "instance.succeeded") CHECK(e["seq"].get<uint64_t>() > last_seq);
  // FIFO kept: they ran in the order they were submitted (one at a time on w1's one slot).
  std::vector<uint64_t> order;
  for (const auto& e : c.events())
    if (e["type"] == "instance.running") order.push_back(e["instance"]);
  CHECK(order == std::vector<uint64_t>{1, 2, 3, 4, 5});
  auto show = parse_ok(c.zforce({"--json", "job", "show", "j"}));
  CHECK(show["queue"] == "q");
  CHECK(show["enabled"] == false);
  CHECK(parse_ok(c.zforce({"--json", "queue", "show", "q"}))["max_parallel"] == 2);

  // History is browsable after another restart.
  c.kill_master();
  c.restart_master();
  auto inst = parse_ok(c.zforce({"--json", "instance", "show", "3"}));
  CHECK(inst["state"] == "succeeded");
  CHECK(inst["output"] == "3\n");
  CHECK(inst["history"].size() == 4);
  CHECK(parse_ok(c.zforce({"--json", "instances", "--limit", "0"}))["instances"].size() == 5);
  auto next = c.zforce({"run", "j", "-p", "n=6"});
  CHECK(next.out == "6\n");  // ids are never reused
}

TEST_CASE("a bulk submission is stored as one row; after SIGKILL its instances are back queued and each runs once") {
  Cluster c;
  c.start_master();  // no members: instances stay queued
  c.connect_tap();
  auto j = c.write_file("b.toml", "name = \"b\"\n[[steps]]\nbuiltin = \"noop\"\n");
  REQUIRE(c.zforce({"job", "put", j}).exit_code == 0);
  REQUIRE(c.zforce({"run", "b", "--count", "40"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.queued") == 40; }, 5s));
  // One submission row, no instance rows yet.
  CHECK(sql(c, "SELECT first_id, count FROM submissions;") == std::vector<std::string>{"1|40"});
  CHECK(sql(c, "SELECT count(*) FROM instances;") == std::vector<std::string>{"0"});
  auto listed = parse_ok(c.zforce({"--json", "instances", "--limit", "0"}))["instances"];
  REQUIRE(listed.size() == 40);
  for (const auto& i : listed) CHECK(i["state"] == "queued");
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", "17"}))["history"].size() == 1);

  c.kill_master();
  c.restart_master();
  c.connect_tap();
  CHECK(parse_ok(c.zforce({"--json", "instances", "--state", "queued", "--limit", "0"}))["instances"].size() == 40);
  c.start_worker("w1", 1);
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 40; }, 15s));
  std::vector<uint64_t> order;
  for (const auto& e : c.events())
    if (e["type"] == "instance.running") order.push_back(e["instance"]);
  std::vector<uint64_t> expected;
  for (uint64_t id = 1; id <= 40; ++id) expected.push_back(id);
  CHECK(order == expected);  // in submission order, each once
  // Each has its row, with its whole history; the submission row went with the last.
  CHECK(sql(c, "SELECT count(*) FROM submissions;") == std::vector<std::string>{"0"});
  CHECK(sql(c, "SELECT count(*) FROM instances WHERE state = 'succeeded';") == std::vector<std::string>{"40"});
  auto inst = parse_ok(c.zforce({"--json", "instance", "show", "40"}));
  CHECK(inst["state"] == "succeeded");
  REQUIRE(inst["history"].size() == 4);
  CHECK(inst["history"][0]["state"] == "queued");
  // The tap's times are the stored ones, to the microsecond.
  std::vector<double> tapped;
  for (const auto& e : c.events())
    if (e.contains("instance") && e["instance"] == 40) tapped.push_back(e["ts"].get<double>());
  REQUIRE(tapped.size() == 4);  // queued (before the restart), assigned, running, succeeded
  for (size_t k = 0; k < 4; ++k) CHECK(tapped[k] == inst["history"][k]["ts"].get<double>());
}

TEST_CASE("a foreign or corrupt database file is refused at start-up and not touched") {
  Cluster c;
  std::filesystem::create_directories(c.dir() + "/master");
  std::string db = c.dir() + "/master/zforce.db";
  {
    std::ofstream out(db, std::ios::binary);
    out << "this is not a database, it is somebody's notes\n";
  }
  std::string before = read_all(db);
  struct stat st_before {};
  REQUIRE(::stat(db.c_str(), &st_before) == 0);
  pid_t m = c.spawn({bin("ZF_MASTER_BIN"), "--data", c.dir() + "/master", "--local-slots", "0", "--workers",
                     "tcp://127.0.0.1:*", "--api", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*"},
                    "corrupt");
  int st = c.wait_exit(m, 10s);
  REQUIRE(st != -1);
  CHECK(WEXITSTATUS(st) == 1);
  std::string log = c.log_of("corrupt");
  CHECK(log.find(db) != std::string::npos);
  CHECK(log.find("not") != std::string::npos);
  CHECK(read_all(db) == before);
  struct stat st_after {};
  REQUIRE(::stat(db.c_str(), &st_after) == 0);
  CHECK(st_after.st_mtim.tv_sec == st_before.st_mtim.tv_sec);
  CHECK(st_after.st_mtim.tv_nsec == st_before.st_mtim.tv_nsec);
}

TEST_CASE("a worker killed while the master is down: its instances end lost or retried, never stuck") {
  Cluster c;
  c.start_master({"--reconcile-grace", "1s"});
  c.connect_tap();
  pid_t w1 = c.start_worker("w1", 2);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 1; }, 10s));
  auto retried = c.write_file("r.toml", "name = \"r\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"2s\"\n");
  auto once = c.write_file("o.toml", "name = \"o\"\n[retry]\nattempts = 1\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"2s\"\n");
  REQUIRE(c.zforce({"job", "put", retried, once}).exit_code == 0);
  REQUIRE(c.zforce({"run", "r"}).exit_code == 0);
  REQUIRE(c.zforce({"run", "o"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 2; }, 5s));
  c.kill_master();
  c.signal(w1, SIGKILL);
  c.wait_exit(w1, 5s);
  c.restart_master({"--reconcile-grace", "2s"});
  // Until the grace ends they are running as far as anyone knows, listed
  // as such (from the unconfirmed ones: no member has them); under the
  // tests `stats` also checks that the listing sees every one.
  auto running = parse_ok(c.zforce({"--json", "instances", "--state", "running"}))["instances"];
  REQUIRE(running.size() == 2);
  CHECK(running[0]["id"] == 1);
  CHECK(running[1]["id"] == 2);
  CHECK(parse_ok(c.zforce({"--json", "stats"}))["instances"]["running"] == 2);
  c.start_worker("w2", 2);
  // r is lost and runs again on w2; o allows one attempt and ends lost.
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 1; }, 15s));
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", "1"}))["state"] == "succeeded");
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", "1"}))["attempt"] == 2);
  CHECK(parse_ok(c.zforce({"--json", "instance", "show", "2"}))["state"] == "lost");
}

// `stats` answers from counts the master keeps at every change of an
// instance in its memory (created, moved to another state, restored, read
// back from the store, forgotten). Under the tests every stats call also
// counts the instances one by one and fails if the two differ
// (ZFORCE_TEST_CHECK_COUNTS, set by tests/test_main.cc); this test takes
// instances through every one of those changes and asks after each.
TEST_CASE("stats counts instances by state through retries, losses, a cancel, a restart and forgetting") {
  Cluster c;
  const std::vector<std::string> flags = {"--reconcile-grace", "1s", "--keep-ended", "3"};
  c.start_master(flags);
  c.connect_tap();
  pid_t w1 = c.start_worker("w1", 2);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 1; }, 10s));
  auto failing = c.write_file("f.toml", "name = \"f\"\n[retry]\nattempts = 2\non = [\"failed\"]\n[[steps]]\nrun = [\"false\"]\n");
  auto sleeping = c.write_file("s.toml", "name = \"s\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"3s\"\n");
  auto noop = c.write_file("n.toml", "name = \"n\"\n[[steps]]\nbuiltin = \"noop\"\n");
  REQUIRE(c.zforce({"job", "put", failing, sleeping, noop}).exit_code == 0);
  auto by_state = [&] { return parse_ok(c.zforce({"--json", "stats"}))["instances"]; };

  // 1: failed twice (failed -> queued -> ... -> failed); 2-6: succeeded.
  CHECK(c.zforce({"run", "f", "--wait"}).exit_code != 0);
  REQUIRE(c.zforce({"run", "n", "--count", "5", "--wait"}).exit_code == 0);
  auto first = by_state();
  INFO(first.dump());
  CHECK(first.value("failed", 0) + first.value("succeeded", 0) <= 6);  // beyond --keep-ended some are forgotten
  CHECK(first.value("queued", 0) == 0);

  // 7, 8 run on w1's two slots, 9 waits and is cancelled.
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 5; }, 10s));  // the tap has caught up
  const size_t ran = c.count("instance.running");
  REQUIRE(c.zforce({"run", "s", "--count", "3"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == ran + 2; }, 10s));
  REQUIRE(c.zforce({"cancel", "9"}).exit_code == 0);
  auto second = by_state();
  INFO(second.dump());
  CHECK(second.value("running", 0) == 2);
  CHECK(second.value("cancelled", 0) == 1);

  // w1 dies: 7 and 8 are lost and queued again (the default policy retries a lost instance).
  c.signal(w1, SIGKILL);
  c.wait_exit(w1, 5s);
  REQUIRE(c.wait_for([&] { return c.count("instance.lost") == 2; }, 15s));
  REQUIRE(c.wait_for([&] { return by_state().value("queued", 0) == 2; }, 5s));

  // After SIGKILL the master restores the two queued ones from the store.
  c.kill_master();
  c.restart_master(flags);
  auto third = by_state();
  INFO(third.dump());
  CHECK(third.value("queued", 0) == 2);
  CHECK(third.value("running", 0) == 0);
  // Instance 2 is read back into memory from the store (a cancel looks at it there).
  CHECK(c.zforce({"cancel", "2"}).err.find("already ended (succeeded)") != std::string::npos);
  CHECK(by_state().value("succeeded", 0) == 1);

  // A new worker runs them; every end is counted, and the oldest are forgotten again.
  c.start_worker("w2", 2);
  auto ended = [&](int id) {
    return parse_ok(c.zforce({"--json", "instance", "show", std::to_string(id)}))["state"] == "succeeded";
  };
  REQUIRE(c.wait_for([&] { return ended(7) && ended(8); }, 30s));
  REQUIRE(c.zforce({"run", "n", "--count", "5", "--wait"}).exit_code == 0);
  auto last = by_state();
  INFO(last.dump());
  CHECK(last.value("queued", 0) == 0);
  CHECK(last.value("running", 0) == 0);
  CHECK(last.value("succeeded", 0) >= 1);
}

// An ASSIGN goes out before its turn is committed (docs/durability.md,
// "Assignments ahead of the commit"). Here the commit never comes: the
// store's writer is stalled (ZFORCE_TEST_STALL_COMMITS) while instance 2 is
// assigned to w1 and starts there, then the master is killed. The store
// still has 2 queued. The restarted master must not start it on w2, which is
// there first, but wait for w1 and take 2 back from it: it runs once.
TEST_CASE("an instance assigned ahead of a commit the crash prevented is taken back from its member, not run twice") {
  Cluster c;
  const std::string stall = c.dir() + "/stall-commits";
  StallCommitsWhile env(stall);
  c.start_master({"--reconcile-grace", "60s"});
  c.connect_tap();
  pid_t w1 = c.start_worker("w1", 1);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") == 1; }, 10s));
  std::string runs = c.dir() + "/runs.log";
  auto job = c.write_file("s.toml", "name = \"s\"\n[params.t]\n[[steps]]\nrun = [\"sh\", \"-c\", \"echo start "
                                    "$ZFORCE_INSTANCE $ZFORCE_ATTEMPT >> " + runs + "; sleep $1\", \"sh\", \"{{t}}\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "s", "-p", "t=2"}).exit_code == 0);  // 1 holds w1's one slot for 2 s
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 1; }, 10s));
  REQUIRE(c.zforce({"run", "s", "-p", "t=3"}).exit_code == 0);  // 2 is stored queued
  c.write_file("stall-commits", "");
  // 1 ends; 2 is assigned to w1 and starts there, and none of it is committed.
  auto started_2 = [&] { return read_all(runs).find("start 2 1") != std::string::npos; };
  for (int i = 0; i < 100 && !started_2(); ++i) std::this_thread::sleep_for(100ms);
  REQUIRE(started_2());
  CHECK(c.count("instance.assigned") == 1);  // the tap says only what is committed
  c.kill_master();
  std::filesystem::remove(stall);
  c.signal(w1, SIGSTOP);  // back only after w2: w2 must not be given 2
  const size_t joined = c.count("member.joined"), assigned = c.count("instance.assigned");
  c.restart_master({"--reconcile-grace", "60s"});
  c.connect_tap();
  c.start_worker("w2", 1);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") == joined + 1; }, 10s));
  c.wait_for([] { return false; }, 1500ms);  // w2 is idle and 2 queued: nothing may start
  CHECK(c.count("instance.assigned") == assigned);
  c.signal(w1, SIGCONT);
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 2; }, 20s));
  auto two = parse_ok(c.zforce({"--json", "instance", "show", "2"}));
  CHECK(two["state"] == "succeeded");
  CHECK(two["attempt"] == 1);
  CHECK(two["member"] == "w1");
  std::string log = read_all(runs);
  CHECK(log == "start 1 1\nstart 2 1\n");  // each ran once
  CHECK(c.log_of("master").find("assigned ahead of a commit the crash prevented; taken back") != std::string::npos);
  for (const auto& e : c.events())
    if (e["type"].get<std::string>().starts_with("instance.")) CHECK(e.value("member", "w1") != "w2");
}

// Everything to a member waits for its turn's commit, but heartbeats do
// not: a commit that takes longer than the member's liveness window (a slow
// disk, a burst under a sanitizer) must not make the member take the master
// for dead and register again.
TEST_CASE("a worker keeps its link while the master's commits stall for longer than its liveness window") {
  Cluster c;
  const std::string stall = c.dir() + "/stall-commits";
  StallCommitsWhile env(stall);
  c.start_master();  // heartbeat 250 ms, liveness 4: silent after 1 s
  c.connect_tap();
  c.start_worker("w1", 2);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") == 1; }, 10s));
  c.put_noop_job();
  REQUIRE(c.zforce({"run", "n"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 1; }, 10s));
  c.write_file("stall-commits", "");
  // Its result is not committed, so its acknowledgement and everything
  // else to w1 wait; the run's answer waits too (in the background).
  pid_t run = c.spawn({bin("ZF_CLIENT_BIN"), "--api", c.api(), "run", "n"}, "run-2");
  c.wait_for([] { return false; }, 2500ms);
  std::filesystem::remove(stall);
  REQUIRE(c.wait_exit(run, 20s) == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 2; }, 10s));
  std::string wlog = c.log_of("worker-w1");
  CHECK(wlog.find("no word from the master") == std::string::npos);
  CHECK(c.count("member.joined") == 1);
  CHECK(c.count("member.lost") == 0);
}

// An ASSIGN waits for its turn's commit when its member's admission is not
// committed yet. If that attempt ends meanwhile (here: the worker, hearing
// nothing, registers again without it, so it is lost and retried), the
// held ASSIGN must not go out when the commit comes: the worker would run
// the old attempt beside the new one (Master::assign_still_current).
TEST_CASE("an ASSIGN held behind a commit is dropped if its attempt ended meanwhile; the instance runs once") {
  Cluster c;
  const std::string stall = c.dir() + "/stall-commits";
  StallCommitsWhile env(stall);
  c.start_master();  // heartbeat 250 ms, liveness 4: silent after 1 s
  c.connect_tap();
  c.put_noop_job();
  c.write_file("stall-commits", "");
  c.start_worker("w1", 1);  // its READY is not committed: nothing goes to it
  pid_t run = c.spawn({bin("ZF_CLIENT_BIN"), "--api", c.api(), "run", "n"}, "run");
  // w1 hears nothing for its liveness window and registers again.
  REQUIRE(c.wait_for([&] { return c.log_of("worker-w1").find("no word from the master") != std::string::npos; },
                     10s));
  c.wait_for([] { return false; }, 500ms);
  std::filesystem::remove(stall);
  REQUIRE(c.wait_exit(run, 20s) == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 1; }, 10s));
  c.wait_for([] { return false; }, 500ms);  // a stale run of attempt 1 would report by now
  std::string mlog = c.log_of("master");
  INFO(mlog);
  CHECK(mlog.find("ASSIGN of instance 1 attempt 1 to 'w1' not sent") != std::string::npos);
  auto st = parse_ok(c.zforce({"--json", "stats"}));
  CHECK(st["late_results"] == 0);  // nothing reported for the dropped attempt
  auto inst = parse_ok(c.zforce({"--json", "instance", "show", "1"}));
  CHECK(inst["state"] == "succeeded");
  CHECK(inst["attempt"].get<int>() >= 2);
}

// Assigned and running are written with the instance's next change or a
// little later (Master::end_turn, kProgressDeferral), and the tap waits for
// that write: when the tap says running, the store says so too.
TEST_CASE("the tap reports assigned and running only once the store has them") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 8);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") == 1; }, 10s));
  auto job = c.write_file("s.toml", "name = \"s\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"3s\"\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "s", "--count", "8"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 8; }, 10s));
  auto rows = sql(c, "SELECT state FROM instances ORDER BY id;");
  CHECK(rows == std::vector<std::string>(8, "running"));
  // Every event seen was numbered in the store first (a restart never
  // reuses a number), also while progress writes were deferred.
  uint64_t max_seen = 0;
  for (const auto& e : c.events()) max_seen = std::max(max_seen, e.value("seq", uint64_t{0}));
  auto stored = sql(c, "SELECT value FROM meta WHERE key = 'last_event_seq';");
  REQUIRE(stored.size() == 1);
  CHECK(max_seen > 0);
  CHECK(std::stoull(stored[0]) >= max_seen);
}

TEST_CASE("SIGKILL of the master 20 times while 2,000 instances are submitted and run") {
  Cluster c;
  const std::string grace = "5s";
  c.start_master({"--reconcile-grace", grace});
  c.connect_tap();
  c.start_worker("w1", 4);
  c.start_worker("w2", 4);
  std::string runs = c.dir() + "/runs.log";
  // Each attempt appends its start and end (one small O_APPEND write each).
  auto job = c.write_file("work.toml", "name = \"work\"\n[params.ms]\n[retry]\nattempts = 100\non = [\"lost\"]\n"
                                       "[[steps]]\nrun = [\"sh\", \"-c\", \"echo start $ZFORCE_INSTANCE $ZFORCE_ATTEMPT "
                                       "$(date +%s%N) >> " + runs + "; sleep 0.0$1; echo end $ZFORCE_INSTANCE "
                                       "$ZFORCE_ATTEMPT $(date +%s%N) >> " + runs + "\", \"sh\", \"{{ms}}\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);

  std::mt19937 rng(99);
  std::set<uint64_t> acknowledged;
  int kills = 0, batches = 0;
  auto next_kill = std::chrono::steady_clock::now() + std::chrono::milliseconds(300 + rng() % 700);
  auto deadline = std::chrono::steady_clock::now() + 240s;
  while ((batches < 200 || kills < 20) && std::chrono::steady_clock::now() < deadline) {
    if (batches < 200) {
      auto r = c.zforce({"--json", "--timeout", "2s", "run", "work", "-p",
                         "ms=" + std::to_string(10 + rng() % 90), "--count", "10"});
      if (r.exit_code == 0) {  // acknowledged: it must not be lost
        json reply = json::parse(r.out);
        for (const auto& id : reply["instances"]) acknowledged.insert(id.get<uint64_t>());
        ++batches;
      }
    } else {
      std::this_thread::sleep_for(50ms);
    }
    if (std::chrono::steady_clock::now() >= next_kill && kills < 20) {
      c.kill_master();
      c.restart_master({"--reconcile-grace", grace});
      ++kills;
      next_kill = std::chrono::steady_clock::now() + std::chrono::milliseconds(300 + rng() % 700);
    }
  }
  REQUIRE(kills == 20);
  REQUIRE(acknowledged.size() == 2000);

  // Every acknowledged instance reaches a final state.
  json all;
  for (int i = 0; i < 120; ++i) {
    auto r = c.zforce({"--json", "instances", "--limit", "0"});
    if (r.exit_code == 0) {
      all = json::parse(r.out)["instances"];
      size_t final_count = 0;
      for (const auto& inst : all)
        if (inst["state"] != "queued" && inst["state"] != "assigned" && inst["state"] != "running") ++final_count;
      if (final_count == acknowledged.size()) break;
    }
    std::this_thread::sleep_for(1s);
  }
  std::map<uint64_t, std::string> state;
  for (const auto& inst : all) state[inst["id"]] = inst["state"];
  int missing = 0, not_succeeded = 0;
  for (uint64_t id : acknowledged) {
    if (!state.count(id)) ++missing;
    else if (state[id] != "succeeded") ++not_succeeded;
  }
  CHECK(missing == 0);
  CHECK(not_succeeded == 0);
  MESSAGE(kills << " master kills; " << acknowledged.size() << " acknowledged instances");

  // No instance ran twice while its first run was alive: per instance, the
  // attempts' [start, end] intervals do not overlap.
  std::map<uint64_t, std::vector<std::pair<long long, long long>>> spans;
  std::map<std::pair<uint64_t, int>, long long> started;
  std::istringstream log(read_all(runs));
  std::string word;
  uint64_t id;
  int attempt;
  long long ns;
  while (log >> word >> id >> attempt >> ns) {
    if (word == "start") started[{id, attempt}] = ns;
    else if (started.count({id, attempt})) spans[id].push_back({started[{id, attempt}], ns});
  }
  int overlaps = 0;
  for (auto& [i, v] : spans) {
    std::sort(v.begin(), v.end());
    for (size_t k = 1; k < v.size(); ++k) overlaps += v[k].first < v[k - 1].second;
  }
  CHECK(overlaps == 0);

  // The stored transitions of each instance are in order: times never go
  // back and each step is one the state machine allows.
  c.kill_master();
  // The history column holds one JSON array per line (docs/durability.md).
  auto rows = sql(c,
                  "SELECT i.id, e.value->>0, e.value->>1, e.value->>2 FROM instances i, "
                  "json_each('[' || rtrim(replace(i.history, char(10), ','), ',') || ']') e "
                  "ORDER BY i.id, e.value->>0;");
  std::map<std::string, std::set<std::string>> allowed = {
      {"queued", {"assigned", "cancelled"}},
      {"assigned", {"running", "succeeded", "failed", "timed_out", "cancelled", "lost"}},
      {"running", {"succeeded", "failed", "timed_out", "cancelled", "lost"}},
      {"lost", {"queued"}}, {"failed", {"queued"}}, {"timed_out", {"queued"}}};
  int bad = 0;
  std::string prev_inst, prev_state;
  long long prev_ts = 0;
  std::map<std::string, std::string> last_state;
  for (const auto& row : rows) {
    std::istringstream in(row);
    std::string inst, seq, st, ts;
    std::getline(in, inst, '|');
    std::getline(in, seq, '|');
    std::getline(in, st, '|');
    std::getline(in, ts, '|');
    if (inst == prev_inst) {
      if (!allowed[prev_state].count(st) || std::stoll(ts) < prev_ts) ++bad;
    } else if (st != "queued") {
      ++bad;
    }
    prev_inst = inst;
    prev_state = st;
    prev_ts = std::stoll(ts);
    last_state[inst] = st;
  }
  CHECK(bad == 0);
  // Every acknowledged instance is in the store and its last stored state is succeeded.
  CHECK(last_state.size() == acknowledged.size());
  int unfinished = 0;
  for (const auto& [inst, st] : last_state) unfinished += st != "succeeded";
  CHECK(unfinished == 0);
}
