// The walking cluster, end to end: real master and workers on loopback, jobs
// run through the zforce client, results checked from the tap and the api.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "common/protocol.h"
#include "common/zmq_util.h"
#include "tests/cluster.h"

using namespace zf::test;

namespace {

bool all_members_joined(Cluster& c, size_t n) {
  return c.wait_for([&] { return c.count("member.joined") >= n; }, 10s);
}

}  // namespace

TEST_CASE("a job runs on a worker, its output comes back, and the tap shows each transition") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 2);
  REQUIRE(all_members_joined(c, 1));
  auto job = c.write_file("hello.toml", R"(
name = "hello"
[params.who]
default = "world"
[[steps]]
run = ["sh", "-c", "echo hello $1; echo to-stderr >&2", "sh", "{{who}}"]
[[steps]]
builtin = "echo"
text = "second step for {{who}}"
)");
  auto put = c.zforce({"job", "put", job});
  REQUIRE_MESSAGE(put.exit_code == 0, put.err);
  CHECK(put.out == "created hello\n");

  auto r = c.zforce({"run", "hello", "-p", "who=zforce", "--wait"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "hello zforce\nto-stderr\nsecond step for zforce\n");
  CHECK(r.err.find("succeeded") != std::string::npos);

  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 1; }, 5s));
  std::vector<std::string> types;
  for (const auto& e : c.events_of(1)) {
    types.push_back(e["type"]);
    CHECK(e["job"] == "hello");
    CHECK(e["attempt"] == 1);
  }
  CHECK(types == std::vector<std::string>{"instance.queued", "instance.assigned", "instance.running",
                                          "instance.succeeded"});
  auto done = c.events_of(1).back();
  CHECK(done["member"] == "w1");
  CHECK(done["exit_code"] == 0);

  auto show = parse_ok(c.zforce({"--json", "instance", "show", "1"}));
  CHECK(show["state"] == "succeeded");
  CHECK(show["params"]["who"] == "zforce");
  CHECK(show["history"].size() == 4);

  // --json after the subcommand works too.
  auto list = parse_ok(c.zforce({"job", "list", "--json"}));
  CHECK(list["jobs"][0]["name"] == "hello");
}

TEST_CASE("1,000 instances of true through a master with two workers all succeed, none twice, in order") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 4);
  c.start_worker("w2", 4);
  REQUIRE(all_members_joined(c, 2));
  auto job = c.write_file("true.toml", "name = \"t\"\n[[steps]]\nrun = [\"true\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);

  auto r = c.zforce({"run", "t", "--count", "1000", "--wait"}, 120s);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "1000 instances: 1000 succeeded\n");
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 1000; }, 20s));

  // From the tap alone: each instance went queued, assigned, running, succeeded,
  // exactly once each, on one member; sequence numbers have no gaps.
  std::map<uint64_t, std::vector<std::string>> seen;
  std::map<uint64_t, std::set<std::string>> members;
  std::map<std::string, int> per_member;
  uint64_t prev_seq = 0;
  for (const auto& e : c.events()) {
    uint64_t seq = e["seq"];
    if (prev_seq) CHECK(seq == prev_seq + 1);
    prev_seq = seq;
    if (!e.contains("instance")) continue;
    seen[e["instance"]].push_back(e["type"]);
    if (e.contains("member")) members[e["instance"]].insert(e["member"].get<std::string>());
    if (e["type"] == "instance.succeeded") per_member[e["member"]]++;
  }
  CHECK(seen.size() == 1000);
  const std::vector<std::string> expected = {"instance.queued", "instance.assigned", "instance.running",
                                             "instance.succeeded"};
  int wrong = 0;
  for (const auto& [id, types] : seen) {
    if (types != expected || members[id].size() != 1) ++wrong;
  }
  CHECK(wrong == 0);
  // Both workers took a share.
  CHECK(per_member["w1"] > 100);
  CHECK(per_member["w2"] > 100);

  auto st = parse_ok(c.zforce({"--json", "instances", "--state", "succeeded", "--limit", "0"}));
  CHECK(st["instances"].size() == 1000);
}

TEST_CASE("a failing command fails its instance, and run --wait says so") {
  Cluster c;
  c.start_master({"--local-slots", "2"});
  auto job = c.write_file("f.toml", "name = \"f\"\n[[steps]]\nrun = [\"sh\", \"-c\", \"echo oops; exit 3\"]\n"
                                    "[[steps]]\nrun = [\"echo\", \"never\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  auto r = c.zforce({"run", "f", "--wait"});
  CHECK(r.exit_code == 1);
  CHECK(r.out == "oops\n");
  auto show = parse_ok(c.zforce({"--json", "instance", "show", "1"}));
  CHECK(show["state"] == "failed");
  CHECK(show["exit_code"] == 3);
  CHECK(show["failed_step"] == 0);
  CHECK(show["member"] == "master");  // ran on the master's own slots

  auto job2 = c.write_file("m.toml", "name = \"m\"\n[[steps]]\nrun = [\"no-such-program-zf\"]\n");
  REQUIRE(c.zforce({"job", "put", job2}).exit_code == 0);
  auto r2 = c.zforce({"run", "m", "--wait"});
  CHECK(r2.exit_code == 1);
  CHECK(r2.out.find("no-such-program-zf") != std::string::npos);
}

TEST_CASE("a step timeout kills the whole process group and ends timed_out") {
  Cluster c;
  c.start_master();
  c.start_worker("w1", 1, {"--kill-grace", "200ms"});
  auto job = c.write_file("slow.toml", R"(
name = "slow"
[[steps]]
run = ["sh", "-c", "echo $$; sleep 30 & echo $!; wait"]
timeout = "500ms"
)");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  auto r = c.zforce({"run", "slow", "--wait"});
  CHECK(r.exit_code == 1);
  auto show = parse_ok(c.zforce({"--json", "instance", "show", "1"}));
  CHECK(show["state"] == "timed_out");
  CHECK(show["error"].get<std::string>().find("timeout") != std::string::npos);
  std::istringstream pids(show["output"].get<std::string>());
  pid_t shell = 0, child = 0;
  pids >> shell >> child;
  REQUIRE(shell > 0);
  REQUIRE(child > 0);
  std::this_thread::sleep_for(200ms);  // the reparented child is reaped by init
  CHECK(process_gone(shell));
  CHECK(process_gone(child));
}

TEST_CASE("cancel ends a queued instance at once and a running one by signal") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 1, {"--kill-grace", "200ms"});
  REQUIRE(all_members_joined(c, 1));
  auto job = c.write_file("s.toml", "name = \"s\"\n[[steps]]\nrun = [\"sleep\", \"30\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "s", "--count", "2"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 1; }, 5s));
  auto q = c.zforce({"cancel", "2"});  // still queued: one slot
  CHECK(q.out == "instance 2 cancelled\n");
  auto run = c.zforce({"cancel", "1"});
  CHECK(run.out == "instance 1 cancelling\n");
  REQUIRE(c.wait_for([&] { return c.count("instance.cancelled") == 2; }, 5s));
  auto again = c.zforce({"cancel", "1"});
  CHECK(again.exit_code == 1);
  CHECK(again.err.find("already ended") != std::string::npos);
}

TEST_CASE("a lost worker's instances run elsewhere") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  pid_t w1 = c.start_worker("w1", 2);
  REQUIRE(all_members_joined(c, 1));
  auto job = c.write_file("s.toml", "name = \"s\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"1s\"\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "s", "--count", "2"}).exit_code == 0);
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 2; }, 5s));
  c.start_worker("w2", 2);
  REQUIRE(all_members_joined(c, 2));
  c.signal(w1, SIGKILL);
  c.wait_exit(w1, 5s);
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") == 2; }, 10s));
  CHECK(c.count("member.lost") == 1);
  CHECK(c.count("instance.lost") == 2);
  for (uint64_t id : {1u, 2u}) {
    auto evs = c.events_of(id);
    CHECK(evs.back()["type"] == "instance.succeeded");
    CHECK(evs.back()["member"] == "w2");
    CHECK(evs.back()["attempt"] == 2);
  }
}

TEST_CASE("zforce tap --json prints one event per line with seq, ts and type") {
  Cluster c;
  c.start_master({"--local-slots", "1"});
  c.connect_tap();
  pid_t tap = c.spawn({bin("ZF_CLIENT_BIN"), "--events", c.events_endpoint(), "tap", "--json", "--count", "4",
                       "--type", "instance."},
                      "tap");
  // The tap process joins late; resend until it has its four events.
  c.put_noop_job();
  int st = -1;
  for (int i = 0; i < 50 && st == -1; ++i) {
    REQUIRE(c.zforce({"run", "n", "--wait"}).exit_code == 0);
    st = c.wait_exit(tap, 200ms);
  }
  REQUIRE(st != -1);
  std::istringstream out(c.log_of("tap"));
  std::string line;
  int n = 0;
  while (std::getline(out, line)) {
    if (line.empty() || line[0] != '{') continue;
    json e = json::parse(line);
    CHECK(e.contains("seq"));
    CHECK(e.contains("ts"));
    CHECK(e["type"].get<std::string>().rfind("instance.", 0) == 0);
    CHECK(e.contains("instance"));
    ++n;
  }
  CHECK(n == 4);
}

TEST_CASE("an idle cluster uses almost no CPU") {
  Cluster c;
  c.start_master({"--local-slots", "2"});
  c.connect_tap();
  pid_t w = c.start_worker("w1", 2);
  REQUIRE(all_members_joined(c, 1));  // the master's own slots joined before the tap was connected
  std::this_thread::sleep_for(500ms);
  long m0 = c.cpu_ticks(c.master_pid()), w0 = c.cpu_ticks(w);
  std::this_thread::sleep_for(3s);
  long m1 = c.cpu_ticks(c.master_pid()), w1 = c.cpu_ticks(w);
  long hz = sysconf(_SC_CLK_TCK);
  MESSAGE("idle 3 s: master " << (m1 - m0) << " ticks, worker " << (w1 - w0) << " ticks (" << hz << "/s)");
  // 3% of one core over 3 s; a busy loop would use ~100%.
  CHECK(m1 - m0 <= 3 * hz * 3 / 100);
  CHECK(w1 - w0 <= 3 * hz * 3 / 100);
}

TEST_CASE("run --count --wait prints counts by state and names the instances that did not succeed") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 4);
  REQUIRE(all_members_joined(c, 1));
  // Instances with an even id fail with exit code 3.
  auto job = c.write_file("half.toml",
                          "name = \"half\"\n[[steps]]\nrun = [\"sh\", \"-c\", \"exit $(( (ZFORCE_INSTANCE + 1) % 2 * 3 ))\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  auto r = c.zforce({"run", "half", "--count", "6", "--wait"}, 60s);
  CHECK(r.exit_code == 1);
  CHECK(r.out == "6 instances: 3 failed, 3 succeeded\n");
  CHECK(r.err == "instance 2 failed (exit code 3)\ninstance 4 failed (exit code 3)\ninstance 6 failed (exit code 3)\n");

  // --json still lists every instance.
  auto j = c.zforce({"--json", "run", "half", "--count", "2", "--wait"}, 60s);
  CHECK(j.exit_code == 1);
  auto all = json::parse(j.out);
  REQUIRE(all["instances"].size() == 2);
  CHECK(all["instances"][0]["id"] == 7);
  CHECK(all["instances"][0]["state"] == "succeeded");
  CHECK(all["instances"][1]["state"] == "failed");
}

// A big run is created a slice per loop turn (docs/performance.md): requests
// that come meanwhile are answered at once, and a later run waits behind it,
// so ids follow the order the runs came in.
TEST_CASE("a 100,000-instance run does not hold up other requests, and runs keep their order") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.put_noop_job();
  zmq::context_t ctx(1);
  zmq::socket_t big(ctx, zmq::socket_type::dealer), other(ctx, zmq::socket_type::dealer);
  for (auto* s : {&big, &other}) {
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::rcvtimeo, 60000);
    s->connect(c.api());
  }
  auto reply_to = [](zmq::socket_t& s) {
    zmq::message_t m;
    REQUIRE(s.recv(m));
    auto d = zf::proto::decode(m.data(), m.size());
    REQUIRE(std::holds_alternative<zf::proto::Message>(d));
    return std::get<zf::proto::ApiReply>(std::get<zf::proto::Message>(std::move(d)));
  };
  big.send(zmq::buffer(zf::proto::encode(zf::proto::ApiRequest{1, "run", {{"job", "n"}, {"count", 100000}}})));
  // Sent right behind the run: it is handled in one of the run's first turns
  // (each creates 5,000; 20 of them take far longer than this request takes
  // to arrive). Created all in one turn, the run would be complete first.
  // (Waiting for the first slice on the tap instead made this depend on
  // commit speed: under ASan the writer grouped every slice in one commit.)
  other.send(zmq::buffer(zf::proto::encode(zf::proto::ApiRequest{2, "stats", json::object()})));
  auto st = reply_to(other);
  REQUIRE(st.ok);
  CHECK(st.result["waiting"].get<uint64_t>() < 100000);  // answered while the run was still being created
  REQUIRE(c.wait_for([&] { return c.count("instance.queued") >= 1; }, 60s));
  other.send(zmq::buffer(zf::proto::encode(zf::proto::ApiRequest{3, "run", {{"job", "n"}}})));

  auto r = reply_to(big);
  REQUIRE(r.ok);
  REQUIRE(r.result["instances"].size() == 100000);
  CHECK(r.result["instances"][0] == 1);
  CHECK(r.result["instances"][99999] == 100000);
  auto small = reply_to(other);
  REQUIRE(small.ok);
  CHECK(small.result["instances"] == json::array({100001}));
  CHECK(parse_ok(c.zforce({"--json", "stats"}))["waiting"] == 100001);
}

// Hundreds of noop instances ending at once make a worker send more than its
// socket's queue holds; what does not fit must wait and go out later, not be
// dropped (a dropped FINISHED left its instance running for good).
TEST_CASE("workers with 1,000 slots each send every result of a 30,000-instance burst") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 1000);
  c.start_worker("w2", 1000);
  REQUIRE(all_members_joined(c, 2));
  c.put_noop_job();
  auto r = c.zforce({"run", "n", "--count", "30000", "--wait"}, 120s);
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out == "30000 instances: 30000 succeeded\n");
  auto st = parse_ok(c.zforce({"--json", "stats"}));
  CHECK(st["instances"]["succeeded"] == 30000);
  CHECK(st["late_results"] == 0);
}

// The master acknowledges the results of a turn with one FINISHED_ACK per
// worker (`more`); the worker must forget every one of them, or it sends them
// again after the next WELCOME, where they are stale and counted.
TEST_CASE("results acknowledged together are all forgotten: after a master restart none is sent again") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 200);
  REQUIRE(all_members_joined(c, 1));
  c.put_noop_job();
  auto r = c.zforce({"run", "n", "--count", "2000", "--wait"}, 120s);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "2000 instances: 2000 succeeded\n");
  // The last acknowledgements leave with the reply to --wait; give the worker
  // a moment to read them before the master goes.
  std::this_thread::sleep_for(500ms);
  c.kill_master();
  c.restart_master();
  REQUIRE(c.wait_for(
      [&] { return c.zforce({"--json", "workers"}).out.find("\"state\":\"active\"") != std::string::npos; }, 15s));
  // The worker resends what it still holds right after WELCOME, before it
  // reads this ASSIGN on the same connection: once this instance's result is
  // in, any resent one has been counted.
  auto one = c.zforce({"run", "n", "--wait"}, 60s);
  REQUIRE(one.exit_code == 0);
  auto st = parse_ok(c.zforce({"--json", "stats"}));
  CHECK(st["late_results"] == 0);
}

// Live instances are listed from the master's memory, where every one of
// them is (the store has no index on live states, and its state may be a
// commit behind); ended ones from the store.
TEST_CASE("instances --state lists the live ones from memory and the ended ones from the store") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 2);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 1; }, 10s));
  auto sleeping = c.write_file("s.toml", "name = \"s\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"30s\"\n");
  auto other = c.write_file("o.toml", "name = \"o\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"30s\"\n");
  REQUIRE(c.zforce({"job", "put", sleeping, other}).exit_code == 0);
  c.put_noop_job();
  REQUIRE(c.zforce({"run", "n", "--count", "3", "--wait"}).exit_code == 0);  // 1-3 succeed
  REQUIRE(c.zforce({"run", "s", "--count", "4"}).exit_code == 0);            // 4, 5 run; 6, 7 wait
  REQUIRE(c.zforce({"run", "o"}).exit_code == 0);                            // 8 waits
  REQUIRE(c.wait_for([&] { return c.count("instance.running") == 5; }, 10s));
  auto ids = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"--json", "instances"});
    std::vector<uint64_t> out;
    const json listed = parse_ok(c.zforce(args));  // held: a range-for would not keep it alive
    for (const auto& i : listed["instances"]) out.push_back(i["id"].get<uint64_t>());
    return out;
  };
  CHECK(ids({"--state", "running"}) == std::vector<uint64_t>{4, 5});
  CHECK(ids({"--state", "queued"}) == std::vector<uint64_t>{6, 7, 8});
  CHECK(ids({"--state", "queued", "--limit", "2"}) == std::vector<uint64_t>{7, 8});
  CHECK(ids({"--state", "queued", "--job", "s"}) == std::vector<uint64_t>{6, 7});
  CHECK(ids({"--state", "assigned"}).empty());
  CHECK(ids({"--state", "succeeded"}) == std::vector<uint64_t>{1, 2, 3});
  CHECK(ids({"--limit", "3"}) == std::vector<uint64_t>{6, 7, 8});
}

TEST_CASE("without a store, instances lists the newest from memory, oldest of them first") {
  Cluster c;
  c.start_master({"--no-store"});
  auto job = c.write_file("n.toml", "name = \"n\"\n[[steps]]\nbuiltin = \"noop\"\n");
  auto other = c.write_file("m.toml", "name = \"m\"\n[[steps]]\nbuiltin = \"noop\"\n");
  REQUIRE(c.zforce({"job", "put", job, other}).exit_code == 0);
  REQUIRE(c.zforce({"run", "n", "--count", "5"}).exit_code == 0);
  REQUIRE(c.zforce({"run", "m", "--count", "2"}).exit_code == 0);
  auto ids = [](const json& list) {
    std::vector<uint64_t> out;
    for (const auto& i : list["instances"]) out.push_back(i["id"].get<uint64_t>());
    return out;
  };
  CHECK(ids(parse_ok(c.zforce({"--json", "instances", "--limit", "3"}))) == std::vector<uint64_t>{5, 6, 7});
  CHECK(ids(parse_ok(c.zforce({"--json", "instances", "--job", "n", "--limit", "2"}))) == std::vector<uint64_t>{4, 5});
  CHECK(ids(parse_ok(c.zforce({"--json", "instances", "--job", "m"}))) == std::vector<uint64_t>{6, 7});
}

TEST_CASE("ended instances beyond --keep-ended leave the master's memory; show, wait, cancel and listings read them back") {
  Cluster c;
  c.start_master({"--keep-ended", "10"});
  c.start_worker("w1", 4);
  c.put_noop_job();
  auto first = c.zforce({"--json", "run", "n", "--count", "50", "--wait"});
  REQUIRE_MESSAGE(first.exit_code == 0, first.err);
  REQUIRE(json::parse(first.out)["instances"].size() == 50);
  // The wait held all 50; the next commit lets the oldest go.
  REQUIRE(c.zforce({"run", "n", "--wait"}).exit_code == 0);
  auto st = parse_ok(c.zforce({"--json", "stats"}));
  INFO(st.dump());
  CHECK(st["instances"]["succeeded"].get<int>() <= 10);
  CHECK(st["instances"]["succeeded"].get<int>() >= 1);

  // Instance 1 is no longer in memory: each request reads it from the store.
  auto show = parse_ok(c.zforce({"--json", "instance", "show", "1"}));
  CHECK(show["state"] == "succeeded");
  CHECK(show["history"].size() == 4);
  auto cancel = c.zforce({"cancel", "1"});
  CHECK(cancel.exit_code != 0);
  CHECK_MESSAGE(cancel.err.find("already ended (succeeded)") != std::string::npos, cancel.err);
  auto none = c.zforce({"cancel", "999"});
  CHECK(none.exit_code != 0);
  CHECK_MESSAGE(none.err.find("no instance 999") != std::string::npos, none.err);
  auto listed = parse_ok(c.zforce({"--json", "instances", "--limit", "100"}));
  CHECK(listed["instances"].size() == 51);

  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 30000);
  s.connect(c.api());
  s.send(zmq::buffer(zf::proto::encode(zf::proto::ApiRequest{1, "wait", {{"ids", {1, 2, 50}}}})));
  zmq::message_t m;
  REQUIRE(s.recv(m));
  auto d = zf::proto::decode(m.data(), m.size());
  REQUIRE(std::holds_alternative<zf::proto::Message>(d));
  auto reply = std::get<zf::proto::ApiReply>(std::get<zf::proto::Message>(std::move(d)));
  REQUIRE_MESSAGE(reply.ok, reply.error);
  CHECK(reply.result["done"] == true);
  REQUIRE(reply.result["instances"].size() == 3);
  for (const auto& i : reply.result["instances"]) CHECK(i["state"] == "succeeded");
  CHECK(reply.result["instances"][0]["id"] == 1);
}

// A worker speaking the protocol by hand (one DEALER, 1 slot): every
// instance ends 30 ms after its ASSIGN, STARTED and FINISHED in one BATCH,
// as the worker sends them. The master holds a committed FINISHED_ACK until
// something else goes to the worker (it rides in that frame) or for at most
// 100 ms. With an ASSIGN every 30 ms an acknowledgement finds one to ride
// with however long its commit takes (under a sanitizer, with instances
// ending at once, all 30 ran before the first commit and every
// acknowledgement came in the last frame).
TEST_CASE("acknowledgements ride with a worker's next ASSIGN, and each comes even when nothing else goes") {
  using namespace zf::proto;
  Cluster c;
  c.start_master();
  c.put_noop_job();
  zmq::context_t ctx{1};
  zmq::socket_t w(ctx, zmq::socket_type::dealer);
  w.set(zmq::sockopt::routing_id, "raw1");
  w.set(zmq::sockopt::linger, 0);
  w.connect(c.workers_endpoint());
  Ready ready;
  ready.name = "raw1";
  ready.slots = 1;
  ready.version = "test";
  REQUIRE(zf::send_multipart(w, {encode(ready)}).ok());

  constexpr uint64_t kInstances = 30;
  std::set<uint64_t> assigned, acked;
  size_t frames = 0, frames_assign_and_ack = 0;
  bool welcomed = false, submitted = false;
  std::vector<zmq::message_t> parts;
  // Results not sent yet, and when they are due.
  std::vector<std::pair<std::chrono::steady_clock::time_point, std::string>> due;
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (acked.size() < kInstances && std::chrono::steady_clock::now() < deadline) {
    if (welcomed && !submitted) {
      REQUIRE(c.zforce({"run", "n", "--count", std::to_string(kInstances)}).exit_code == 0);
      submitted = true;
    }
    auto now = std::chrono::steady_clock::now();
    for (auto it = due.begin(); it != due.end();) {
      if (it->first > now) {
        ++it;
        continue;
      }
      REQUIRE(zf::send_multipart(w, {it->second}).ok());
      it = due.erase(it);
    }
    zmq::pollitem_t item{w.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, due.empty() ? 100ms : 5ms);
    while (zf::recv_multipart(w, parts)) {
      REQUIRE(parts.size() == 1);
      ++frames;
      auto d = decode(parts[0].data(), parts[0].size());
      REQUIRE(std::holds_alternative<Message>(d));
      std::vector<Message> messages;
      if (auto* b = std::get_if<Batch>(&std::get<Message>(d))) {
        for (const auto& part : b->messages) {
          auto p = decode(part.data(), part.size());
          REQUIRE(std::holds_alternative<Message>(p));
          messages.push_back(std::get<Message>(std::move(p)));
        }
      } else {
        messages.push_back(std::get<Message>(std::move(d)));
      }
      bool has_assign = false, has_ack = false;
      std::vector<std::string> replies;
      for (auto& m : messages) {
        if (std::holds_alternative<Welcome>(m)) welcomed = true;
        if (auto* a = std::get_if<Assign>(&m)) {
          has_assign = true;
          CHECK(assigned.insert(a->instance).second);
          Finished f;
          f.instance = a->instance;
          f.attempt = a->attempt;
          f.status = "succeeded";
          replies.push_back(encode(Started{a->instance, a->attempt}));
          replies.push_back(encode(f));
        }
        if (auto* ack = std::get_if<FinishedAck>(&m)) {
          has_ack = true;
          acked.insert(ack->instance);
          for (const auto& more : ack->more) acked.insert(more.instance);
        }
      }
      if (has_assign && has_ack) ++frames_assign_and_ack;
      if (!replies.empty()) due.emplace_back(std::chrono::steady_clock::now() + 30ms, encode_batch(replies));
    }
  }
  INFO("frames received " << frames << ", with an ASSIGN and a FINISHED_ACK " << frames_assign_and_ack);
  CHECK(assigned.size() == kInstances);
  // The last result has no later ASSIGN to ride with: its acknowledgement
  // came alone, after the hold.
  CHECK(acked == assigned);
  CHECK(frames_assign_and_ack >= 1);
  auto st = parse_ok(c.zforce({"--json", "instances", "--state", "succeeded", "--limit", "0"}));
  CHECK(st["instances"].size() == kInstances);
}

// Run only by the next test, in a child test process: starts a master,
// tells where it is, and waits to be killed.
TEST_CASE("helper: a test process that starts a master and is killed" * doctest::skip()) {
  const char* report = std::getenv("ZF_TEST_REPORT");
  REQUIRE(report != nullptr);
  Cluster c;
  c.start_master();
  {
    std::ofstream out(std::string(report) + ".tmp");
    out << c.master_pid() << " " << c.dir() << "\n";
  }
  std::filesystem::rename(std::string(report) + ".tmp", report);
  std::this_thread::sleep_for(60s);
}

TEST_CASE("a test process killed by SIGKILL leaves no process of its cluster running") {
  Cluster c;  // for its temp folder and its spawn(), which kills the child test process at the end
  const std::string report = c.dir() + "/report";
  REQUIRE(::setenv("ZF_TEST_REPORT", report.c_str(), 1) == 0);
  pid_t child = c.spawn({std::filesystem::read_symlink("/proc/self/exe").string(), "--no-skip", "-tc=helper: a test process that starts a master*"}, "child");
  REQUIRE(::unsetenv("ZF_TEST_REPORT") == 0);
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!std::filesystem::exists(report) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  REQUIRE_MESSAGE(std::filesystem::exists(report), c.log_of("child"));
  pid_t master = -1;
  std::string child_dir;
  std::ifstream(report) >> master >> child_dir;
  REQUIRE(master > 0);
  CHECK_FALSE(process_gone(master));
  c.signal(child, SIGKILL);
  REQUIRE(c.wait_exit(child, 10s) != -1);
  bool gone = false;
  for (int i = 0; i < 250 && !gone; ++i) {
    gone = process_gone(master);
    if (!gone) std::this_thread::sleep_for(20ms);
  }
  CHECK(gone);
  if (!gone) ::kill(master, SIGKILL);  // not left behind either way
  // The killed process could not remove its temp folder.
  if (child_dir.rfind(std::filesystem::temp_directory_path().string() + "/zforce-test.", 0) == 0)
    std::filesystem::remove_all(child_dir);
}
