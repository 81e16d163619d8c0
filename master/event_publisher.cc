#include "master/event_publisher.h"

#include <algorithm>

#include <chrono>

#include "common/log.h"
#include "common/zmq_util.h"

namespace zf {

int64_t wall_clock_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

EventPublisher::EventPublisher(zmq::context_t& ctx, const std::string& endpoint,
                               const std::function<void(zmq::socket_t&)>& before_bind)
    : socket_(ctx, zmq::socket_type::xpub) {
  // PUB drops beyond the HWM; a burst of thousands of instances makes tens of
  // thousands of events, so give slow subscribers room. Gaps remain visible
  // through seq.
  socket_.set(zmq::sockopt::sndhwm, 1'000'000);
  socket_.set(zmq::sockopt::linger, 200);
  if (before_bind) before_bind(socket_);
  socket_.bind(endpoint);
}

std::string EventPublisher::endpoint() { return last_endpoint(socket_); }

bool EventPublisher::wanted(std::string_view type) const {
  if (untracked_ > 0) return true;
  if (topics_.size() <= 8) {  // the usual case: a tap or two
    for (const auto& t : topics_)
      if (type.starts_with(t)) return true;
    return false;
  }
  for (size_t n = 0; n <= type.size(); ++n)
    if (topics_.contains(type.substr(0, n))) return true;
  return false;
}

void EventPublisher::take_subscriptions() {
  zmq::message_t m;
  while (true) {
    zmq::recv_result_t r;
    try {
      r = socket_.recv(m, zmq::recv_flags::dontwait);
    } catch (const zmq::error_t& e) {
      log::warn(std::string("event tap: cannot read subscriptions: ") + e.what());
      return;
    }
    if (!r) return;
    // [1|0][prefix]: subscribe or unsubscribe. Anything else is not from a
    // SUB socket (a peer may send what it likes to an XPUB): ignored.
    const auto* bytes = static_cast<const char*>(m.data());
    if (m.size() == 0 || (bytes[0] != 1 && bytes[0] != 0)) continue;
    std::string_view prefix(bytes + 1, m.size() - 1);
    if (bytes[0] == 1) {
      if (topics_.size() < kMaxTopics) topics_.emplace(prefix);
      else ++untracked_;
    } else if (auto it = topics_.find(prefix); it != topics_.end()) {
      topics_.erase(it);
    } else if (untracked_ > 0) {
      --untracked_;  // one of those only counted
    }
  }
}

void EventPublisher::publish(proto::Event e) {
  if (!wanted(e.type)) {
    ++seq_;
    return;
  }
  e.seq = ++seq_;
  e.ts_us = wall_clock_us();
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
