#include "bench/bench_client.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "common/zmq_util.h"

namespace zf::bench {

using namespace std::chrono_literals;

BenchClient::BenchClient(std::string program, const std::string& api, const std::string& tap,
                         std::initializer_list<const char*> events)
    : program_(std::move(program)), api_(ctx_, zmq::socket_type::dealer), sub_(ctx_, zmq::socket_type::sub) {
  api_.set(zmq::sockopt::linger, 0);
  api_.set(zmq::sockopt::maxmsgsize, int64_t{64} << 20);
  api_.connect(api);
  sub_.set(zmq::sockopt::linger, 0);
  sub_.set(zmq::sockopt::rcvhwm, 1'000'000);
  for (const char* t : events) sub_.set(zmq::sockopt::subscribe, t);
  sub_.set(zmq::sockopt::subscribe, "tap.ping");
  sub_.connect(tap);
}

void BenchClient::sync_tap() {
  for (int i = 0; i < 100; ++i) {
    std::string token = program_ + "-sync-" + std::to_string(i);
    call("ping", {{"token", token}}, 10s);
    auto deadline = Clock::now() + 200ms;
    while (Clock::now() < deadline)
      if (auto e = next_event(deadline); e && e->type == "tap.ping" && e->detail == token) return;
  }
  die("the tap never came alive");
}

uint64_t BenchClient::send_request(const std::string& op, const nlohmann::json& args) {
  proto::ApiRequest req{++req_, op, args};
  std::string bytes = proto::encode(req);
  api_.send(zmq::buffer(bytes), zmq::send_flags::none);
  return req.req;
}

std::optional<proto::ApiReply> BenchClient::take_reply() {
  zmq::message_t m;
  while (api_.recv(m, zmq::recv_flags::dontwait)) {
    auto d = proto::decode(m.data(), m.size());
    auto* msg = std::get_if<proto::Message>(&d);
    auto* rep = msg ? std::get_if<proto::ApiReply>(msg) : nullptr;
    if (!rep) continue;
    if (!rep->ok) die("request " + std::to_string(rep->req) + ": " + rep->error);
    return std::move(*rep);
  }
  return std::nullopt;
}

void BenchClient::wait_any(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return;
  zmq::pollitem_t items[] = {{api_.handle(), 0, ZMQ_POLLIN, 0}, {sub_.handle(), 0, ZMQ_POLLIN, 0}};
  zmq::poll(items, 2, std::min(left, std::chrono::milliseconds(100)));
}

nlohmann::json BenchClient::call(const std::string& op, const nlohmann::json& args, Clock::duration timeout) {
  const uint64_t req = send_request(op, args);
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    zmq::pollitem_t item{api_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, 100ms);
    zmq::message_t m;
    if (!(item.revents & ZMQ_POLLIN) || !api_.recv(m, zmq::recv_flags::dontwait)) continue;
    auto d = proto::decode(m.data(), m.size());
    auto* msg = std::get_if<proto::Message>(&d);
    auto* rep = msg ? std::get_if<proto::ApiReply>(msg) : nullptr;
    if (!rep || rep->req != req) continue;
    if (!rep->ok) die(op + ": " + rep->error);
    return rep->result;
  }
  die("no reply to " + op + " in time");
}

std::optional<proto::Event> BenchClient::next_event(Clock::time_point deadline) {
  while (true) {
    if (recv_multipart(sub_, parts_) && parts_.size() == 2) {
      auto d = proto::decode(parts_[1].data(), parts_[1].size());
      if (auto* msg = std::get_if<proto::Message>(&d))
        if (auto* e = std::get_if<proto::Event>(msg)) return *e;
      continue;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    zmq::pollitem_t item{sub_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::min(left, std::chrono::milliseconds(100)));
  }
}

}  // namespace zf::bench
