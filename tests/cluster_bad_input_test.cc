// Bad input gets a clear error and changes nothing; hostile bytes on any
// endpoint are dropped and counted while the master keeps serving.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <random>
#include <thread>

#include "common/protocol.h"
#include "tests/cluster.h"

using namespace zf::test;

namespace {

json stats(Cluster& c) {
  auto r = c.zforce({"--json", "stats"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return json::parse(r.out);
}

// Raw TCP garbage: not even a ZeroMQ greeting.
void send_raw_tcp(int port, const std::string& bytes) {
  int fd = tcp_connect_loopback(port);
  REQUIRE(fd >= 0);
  ssize_t n = ::write(fd, bytes.data(), bytes.size());
  (void)n;
  std::this_thread::sleep_for(20ms);
  ::close(fd);
}

}  // namespace

TEST_CASE("a broken job file is refused with file, line and field, and nothing changes") {
  Cluster c;
  c.start_master();
  auto good = c.write_file("good.toml", "name = \"good\"\n[[steps]]\nrun = [\"true\"]\n");
  auto bad = c.write_file("bad.toml", "name = \"bad\"\n[[steps]]\nrun = [\"echo\", 42]\n");
  auto r = c.zforce({"job", "put", good, bad});
  CHECK(r.exit_code == 1);
  CHECK(r.err == "zforce: " + bad + ":3:16: field 'steps[0].run[1]': expected a string\n");
  auto list = c.zforce({"--json", "job", "list"});
  CHECK(json::parse(list.out)["jobs"].empty());  // all or nothing: good.toml was not applied either

  auto syntax = c.write_file("syntax.toml", "name = \"s\"\n[[steps]\n");
  auto r2 = c.zforce({"job", "put", syntax});
  CHECK(r2.exit_code == 1);
  CHECK(r2.err.find(syntax + ":2:") != std::string::npos);

  auto missing = c.zforce({"job", "put", c.dir() + "/nope.toml"});
  CHECK(missing.exit_code == 1);
  CHECK(missing.err.find("nope.toml: cannot read the file") != std::string::npos);
}

TEST_CASE("an unknown job and bad parameters are refused and create no instance") {
  Cluster c;
  c.start_master();
  auto job = c.write_file("p.toml", "name = \"p\"\n[params.n]\n[[steps]]\nrun = [\"echo\", \"{{n}}\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);

  auto unknown = c.zforce({"run", "nosuchjob"});
  CHECK(unknown.exit_code == 1);
  CHECK(unknown.err == "zforce: no job named 'nosuchjob'\n");

  auto missing = c.zforce({"run", "p"});
  CHECK(missing.exit_code == 1);
  CHECK(missing.err == "zforce: job 'p' needs parameter 'n'\n");

  auto extra = c.zforce({"run", "p", "-p", "n=1", "-p", "colour=red"});
  CHECK(extra.exit_code == 1);
  CHECK(extra.err == "zforce: job 'p' has no parameter 'colour'\n");

  auto malformed = c.zforce({"run", "p", "-p", "novalue"});
  CHECK(malformed.exit_code == 1);
  CHECK(malformed.err.find("KEY=VALUE") != std::string::npos);

  CHECK(stats(c)["instances"].empty());
  auto show = c.zforce({"instance", "show", "99"});
  CHECK(show.exit_code == 1);
  CHECK(show.err == "zforce: no instance 99\n");
  auto rm = c.zforce({"job", "rm", "nosuchjob"});
  CHECK(rm.exit_code == 1);
}

TEST_CASE("garbage on every endpoint is dropped and counted, and the master keeps serving") {
  Cluster c;
  c.start_master({"--local-slots", "1"});
  auto job = c.write_file("ok.toml", "name = \"ok\"\n[[steps]]\nrun = [\"echo\", \"still here\"]\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);

  std::mt19937 rng(7);
  auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (auto& ch : s) ch = static_cast<char>(rng());
    return s;
  };
  // 1. Raw TCP garbage at all three ports (fails the ZMTP handshake).
  for (const auto& ep : {c.workers_endpoint(), c.api(), c.events_endpoint()})
    for (int i = 0; i < 5; ++i) send_raw_tcp(port_of(ep), random_bytes(1 + rng() % 2000));

  // 2. Well-framed ZeroMQ messages with garbage inside, to workers and api.
  zmq::context_t ctx(1);
  for (const auto& ep : {c.workers_endpoint(), c.api()}) {
    zmq::socket_t d(ctx, zmq::socket_type::dealer);
    d.set(zmq::sockopt::linger, 1000);
    d.connect(ep);
    for (int i = 0; i < 300; ++i) {
      std::string b = random_bytes(rng() % 300);
      if (i % 3 == 0) {  // a valid message with one byte flipped
        b = zf::proto::encode(zf::proto::ApiRequest{1, "job.list", json::object()});
        b[rng() % b.size()] = static_cast<char>(rng());
      }
      if (i % 10 == 0) {  // several frames
        d.send(zmq::buffer(b), zmq::send_flags::sndmore);
      }
      d.send(zmq::buffer(b), zmq::send_flags::none);
    }
  }
  // 3. A SUB-side peer cannot send anything to PUB; a DEALER to the PUB port is refused by ZMTP.
  {
    zmq::socket_t d(ctx, zmq::socket_type::dealer);
    d.set(zmq::sockopt::linger, 0);
    d.connect(c.events_endpoint());
    d.send(zmq::buffer(random_bytes(100)), zmq::send_flags::dontwait);
  }
  std::this_thread::sleep_for(300ms);

  json s = stats(c);
  CHECK(s["malformed_workers"].get<int>() > 0);
  CHECK(s["malformed_api"].get<int>() > 0);
  auto r = c.zforce({"run", "ok", "--wait"});
  CHECK(r.exit_code == 0);
  CHECK(r.out == "still here\n");
  CHECK(c.log_of("master").find("dropped a malformed message on the workers endpoint") != std::string::npos);
}

TEST_CASE("a full queue refuses a whole submission with a clear error and keeps what it accepted") {
  Cluster c;
  c.start_master({"--local-slots", "0"});  // no member: everything waits
  auto job = c.write_file("q.toml", "name = \"q\"\n[queue]\nmax_queued = 5\n[[steps]]\nbuiltin = \"noop\"\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  REQUIRE(c.zforce({"run", "q", "--count", "3"}).exit_code == 0);
  auto over = c.zforce({"run", "q", "--count", "3"});
  CHECK(over.exit_code == 1);
  CHECK(over.err ==
        "zforce: queue 'job:q' is full: 3 instances waiting, 3 more would exceed max_queued = 5; nothing was "
        "submitted\n");
  json s = stats(c);
  CHECK(s["refused_queue_full"].get<int>() == 1);
  CHECK(s["instances"]["queued"].get<int>() == 3);  // all or nothing: none of the 3 was added
  REQUIRE(c.zforce({"run", "q", "--count", "2"}).exit_code == 0);  // exactly up to the limit
  CHECK(c.zforce({"run", "q"}).exit_code == 1);
  // Nothing accepted is dropped: a worker joins and all 5 succeed.
  c.connect_tap();
  c.start_worker("w1", 2);
  CHECK(c.wait_for([&] { return c.count("instance.succeeded") == 5; }, 30s));
  CHECK(c.zforce({"run", "q"}).exit_code == 0);  // room again
}

TEST_CASE("a message with too many frames is dropped and counted") {
  Cluster c;
  c.start_master();
  zmq::context_t ctx(1);
  zmq::socket_t d(ctx, zmq::socket_type::dealer);
  d.set(zmq::sockopt::linger, 1000);
  d.connect(c.api());
  std::string req = zf::proto::encode(zf::proto::ApiRequest{1, "stats", json::object()});
  for (int i = 0; i < 5000; ++i) d.send(zmq::buffer(req), zmq::send_flags::sndmore);
  d.send(zmq::buffer(req), zmq::send_flags::none);
  // The 5001-frame message gets no answer; the api keeps serving.
  zmq::message_t reply;
  d.set(zmq::sockopt::rcvtimeo, 500);
  CHECK_FALSE(d.recv(reply));
  json s = stats(c);
  CHECK(s["malformed_api"].get<int>() == 1);
}

TEST_CASE("a worker of another protocol version is refused with a reason") {
  Cluster c;
  c.start_master();
  zmq::context_t ctx(1);
  zmq::socket_t d(ctx, zmq::socket_type::dealer);
  d.set(zmq::sockopt::routing_id, "future");
  d.set(zmq::sockopt::linger, 0);
  d.set(zmq::sockopt::rcvtimeo, 5000);
  d.connect(c.workers_endpoint());
  // The envelope keeps its layout across versions; the body is whatever v2 says.
  json ready = json::array({"ZF", 2, 0, 1, {{"name", "future"}, {"slots", 4}, {"quantum", true}}});
  auto bytes = json::to_msgpack(ready);
  d.send(zmq::buffer(bytes));
  zmq::message_t reply;
  REQUIRE(d.recv(reply));
  auto dec = zf::proto::decode(reply.data(), reply.size());
  REQUIRE(std::holds_alternative<zf::proto::Message>(dec));
  auto* refused = std::get_if<zf::proto::Refused>(&std::get<zf::proto::Message>(dec));
  REQUIRE(refused != nullptr);
  CHECK(refused->reason == "protocol version 2.0 is not supported (this side speaks 1.1)");
  auto w = json::parse(c.zforce({"--json", "workers"}).out);
  CHECK(w["workers"].empty());
  CHECK(stats(c)["refused_version"] == 1);

  // A message other than READY from a peer that never registered is not admitted.
  zmq::socket_t e(ctx, zmq::socket_type::dealer);
  e.set(zmq::sockopt::routing_id, "sneaky");
  e.set(zmq::sockopt::linger, 0);
  e.set(zmq::sockopt::rcvtimeo, 5000);
  e.connect(c.workers_endpoint());
  std::string fin = zf::proto::encode(zf::proto::Finished{1, 1, "succeeded", 0, 1, -1, "", ""});
  e.send(zmq::buffer(fin));
  REQUIRE(e.recv(reply));
  auto dec2 = zf::proto::decode(reply.data(), reply.size());
  REQUIRE(std::holds_alternative<zf::proto::Message>(dec2));
  CHECK(std::holds_alternative<zf::proto::Disconnect>(std::get<zf::proto::Message>(dec2)));
  CHECK(json::parse(c.zforce({"--json", "workers"}).out)["workers"].empty());
}

namespace {

// A worker spoken by hand on a DEALER: READY with the given protocol minor.
std::unique_ptr<zmq::socket_t> raw_worker(zmq::context_t& ctx, Cluster& c, const std::string& name, int minor) {
  auto d = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::dealer);
  d->set(zmq::sockopt::routing_id, name);
  d->set(zmq::sockopt::linger, 0);
  d->set(zmq::sockopt::rcvtimeo, 10000);
  d->connect(c.workers_endpoint());
  json ready = json::array({"ZF", 1, minor, 1,
                            {{"name", name}, {"slots", 8}, {"tags", json::array()}, {"version", "by hand"},
                             {"running", json::array()}}});
  auto bytes = json::to_msgpack(ready);
  d->send(zmq::buffer(bytes));
  return d;
}

struct Assigned {
  int assigns = 0;
  int batches = 0;
  std::vector<zf::proto::Assign> list;
};

// Reads frames until `want` ASSIGNs came (opening BATCHes); a frame that does
// not decode, or no frame within the socket's timeout, fails the test.
Assigned read_assigns(zmq::socket_t& d, int want) {
  using namespace zf::proto;
  Assigned got;
  zmq::message_t m;
  while (got.assigns < want) {
    REQUIRE(d.recv(m));
    auto dec = decode(m.data(), m.size());
    REQUIRE(std::holds_alternative<Message>(dec));
    std::vector<Message> msgs;
    if (auto* b = std::get_if<Batch>(&std::get<Message>(dec))) {
      ++got.batches;
      for (const auto& part : b->messages) {
        auto inner = decode(part);
        REQUIRE(std::holds_alternative<Message>(inner));
        msgs.push_back(std::get<Message>(inner));
      }
    } else {
      msgs.push_back(std::get<Message>(dec));
    }
    for (auto& x : msgs)
      if (auto* a = std::get_if<Assign>(&x)) {
        ++got.assigns;
        got.list.push_back(*a);
      }
  }
  return got;
}

bool member_active(Cluster& c, const std::string& name) {
  const json all = json::parse(c.zforce({"--json", "workers"}).out);
  for (const auto& w : all["workers"])
    if (w["name"] == name && w["state"] == "active") return true;
  return false;
}

}  // namespace

TEST_CASE("BATCH goes only to workers of protocol 1.1; in a BATCH, bad messages are dropped and counted, the rest "
          "handled") {
  using namespace zf::proto;
  Cluster c;
  c.start_master();
  c.put_noop_job();
  zmq::context_t ctx(1);

  auto old = raw_worker(ctx, c, "old", 0);
  REQUIRE(c.wait_for([&] { return member_active(c, "old"); }, 10s));
  REQUIRE(c.zforce({"run", "n", "--count", "8"}).exit_code == 0);
  auto to_old = read_assigns(*old, 8);
  CHECK(to_old.batches == 0);  // a 1.0 worker gets one message per frame

  auto fresh = raw_worker(ctx, c, "new", static_cast<int>(kMinor));
  REQUIRE(c.wait_for([&] { return member_active(c, "new"); }, 10s));
  // "old" has its 8 slots taken: these 8 go to "new", in one turn.
  REQUIRE(c.zforce({"run", "n", "--count", "8"}).exit_code == 0);
  auto to_new = read_assigns(*fresh, 8);
  CHECK(to_new.batches >= 1);

  const auto& first = to_new.list.front();
  const auto before = stats(c)["malformed_workers"].get<int>();
  std::vector<std::string> parts = {"not a message", encode(Heartbeat{}), encode(Batch{{encode(Heartbeat{})}}),
                                    encode(Started{first.instance, first.attempt})};
  auto frame = encode_batch(parts);
  fresh->send(zmq::buffer(frame));
  // The STARTED after the two bad ones is handled.
  REQUIRE(c.wait_for(
      [&] {
        auto show = json::parse(c.zforce({"--json", "instance", "show", std::to_string(first.instance)}).out);
        return show["state"] == "running";
      },
      10s));
  CHECK(stats(c)["malformed_workers"].get<int>() == before + 2);  // the garbage and the nested BATCH
}

TEST_CASE("the master refuses to bind a non-loopback address without --insecure") {
  Cluster c;
  pid_t m = c.spawn({bin("ZF_MASTER_BIN"), "--data", c.dir() + "/m", "--workers", "tcp://0.0.0.0:*", "--api",
                     "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*"},
                    "insecure");
  int st = c.wait_exit(m, 10s);
  REQUIRE(st != -1);
  CHECK(WEXITSTATUS(st) == 64);
  CHECK(c.log_of("insecure").find("refusing to bind tcp://0.0.0.0:*") != std::string::npos);
}
