#include "master/event_publisher.h"

#include <chrono>

#include "common/zmq_util.h"

namespace zf {

int64_t wall_clock_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

EventPublisher::EventPublisher(zmq::context_t& ctx, const std::string& endpoint)
    : socket_(ctx, zmq::socket_type::pub) {
  // PUB drops beyond the HWM; a burst of thousands of instances makes tens of
  // thousands of events, so give slow subscribers room. Gaps remain visible
  // through seq.
  socket_.set(zmq::sockopt::sndhwm, 1'000'000);
  socket_.set(zmq::sockopt::linger, 200);
  socket_.bind(endpoint);
}

std::string EventPublisher::endpoint() { return last_endpoint(socket_); }

void EventPublisher::publish(proto::Event e) {
  e.seq = ++seq_;
  e.ts_us = wall_clock_us();
  held_.emplace_back(e.type, proto::encode(e));
}

void EventPublisher::flush() {
  for (const auto& [type, body] : held_)
    if (!send_multipart(socket_, {type, body}).ok()) ++dropped_;
  held_.clear();
}

}  // namespace zf
