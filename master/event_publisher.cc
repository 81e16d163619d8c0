#include "master/event_publisher.h"

#include <algorithm>

#include <chrono>

#include "common/zmq_util.h"

namespace zf {

int64_t wall_clock_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

EventPublisher::EventPublisher(zmq::context_t& ctx, const std::string& endpoint,
                               const std::function<void(zmq::socket_t&)>& before_bind)
    : socket_(ctx, zmq::socket_type::pub) {
  // PUB drops beyond the HWM; a burst of thousands of instances makes tens of
  // thousands of events, so give slow subscribers room. Gaps remain visible
  // through seq.
  socket_.set(zmq::sockopt::sndhwm, 1'000'000);
  socket_.set(zmq::sockopt::linger, 200);
  if (before_bind) before_bind(socket_);
  socket_.bind(endpoint);
}

std::string EventPublisher::endpoint() { return last_endpoint(socket_); }

void EventPublisher::publish(proto::Event e) {
  e.seq = ++seq_;
  if (e.ts_us == 0) e.ts_us = wall_clock_us();
  std::string bytes = proto::encode(e);
  held_.emplace_back(std::move(e.type), std::move(bytes));
}

void EventPublisher::flush() { flush(held_.size()); }

void EventPublisher::flush(size_t n) {
  n = std::min(n, held_.size());
  for (size_t i = 0; i < n; ++i)
    if (!send_multipart(socket_, {held_[i].first, held_[i].second}).ok()) ++dropped_;
  held_.erase(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(n));  // a deque: O(n) at the front
}

}  // namespace zf
