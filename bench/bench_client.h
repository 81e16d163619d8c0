// What the benchmark probes share: an api DEALER with a blocking call(), and
// a tap SUB that reads events until a deadline. A probe that fails prints
// "PROGRAM: why" and exits 1 (a benchmark has nobody to hand an error to).
#pragma once

#include <chrono>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "bench/bench_util.h"
#include "common/protocol.h"

namespace zf::bench {

using Clock = std::chrono::steady_clock;

class BenchClient {
 public:
  // Subscribes to `events` only (plus tap.ping, for sync_tap), so the tap
  // costs the probe little.
  BenchClient(std::string program, const std::string& api, const std::string& tap,
              std::initializer_list<const char*> events);

  // PUB/SUB joins late: pings until our own marker comes through.
  void sync_tap();
  // Sends op(args) and returns the reply's result; dies on an error reply or a timeout.
  nlohmann::json call(const std::string& op, const nlohmann::json& args, Clock::duration timeout);
  // The next tap event before the deadline, if any.
  std::optional<proto::Event> next_event(Clock::time_point deadline);
  // Without waiting: sends op(args) and returns its request number; its
  // reply comes from take_reply(). Not to be mixed with call(), which drops
  // replies to other requests.
  uint64_t send_request(const std::string& op, const nlohmann::json& args);
  // A reply that has arrived, if any; dies on an error reply.
  std::optional<proto::ApiReply> take_reply();
  // Waits until the api or the tap has something to read, or the deadline.
  void wait_any(Clock::time_point deadline);
  [[noreturn]] void die(const std::string& why) const { bench::die(program_, why); }

 private:
  std::string program_;
  zmq::context_t ctx_{1};
  zmq::socket_t api_;
  zmq::socket_t sub_;
  std::vector<zmq::message_t> parts_;
  uint64_t req_ = 0;
};

}  // namespace zf::bench
