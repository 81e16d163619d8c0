// The event tap: a PUB socket on which every state change is published with a
// sequence number, so subscribers can tell when they missed something.
// Owned by the master loop (single-threaded).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <deque>
#include <string>

#include <zmq.hpp>

#include "common/protocol.h"

namespace zf {

class EventPublisher {
 public:
  // `before_bind` runs on the PUB socket before it binds (the master's CURVE
  // server options, see master/security.h).
  EventPublisher(zmq::context_t& ctx, const std::string& endpoint,
                 const std::function<void(zmq::socket_t&)>& before_bind = {});

  // Stamps seq, and ts_us unless the caller set it, and holds the event
  // until flush(): events go out only after the loop turn that made them is
  // committed to the store.
  void publish(proto::Event e);
  // Sends what publish() held, as [type][EVENT message].
  void flush();
  // Sends only the oldest n held events (those of turns already committed,
  // while later turns are still being written).
  void flush(size_t n);
  size_t held_count() const { return held_.size(); }
  // How many of the held events have a number below `seq`.
  size_t held_before(uint64_t seq) const {
    const uint64_t first = seq_ - held_.size() + 1;
    return seq <= first ? 0 : static_cast<size_t>(std::min<uint64_t>(seq - first, held_.size()));
  }
  uint64_t last_seq() const { return seq_; }
  // After a restart: numbering goes on after the last number ever used.
  void continue_after(uint64_t last_seq) { seq_ = last_seq; }
  std::string endpoint();
  uint64_t dropped() const { return dropped_; }

 private:
  zmq::socket_t socket_;
  uint64_t seq_ = 0;
  std::deque<std::pair<std::string, std::string>> held_;  // (type, encoded EVENT)
  uint64_t dropped_ = 0;
};

int64_t wall_clock_us();

}  // namespace zf
