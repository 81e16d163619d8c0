// The event tap: a PUB socket on which every state change is published with a
// sequence number, so subscribers can tell when they missed something.
// Owned by the master loop (single-threaded).
#pragma once

#include <cstdint>
#include <string>

#include <zmq.hpp>

#include "common/protocol.h"

namespace zf {

class EventPublisher {
 public:
  EventPublisher(zmq::context_t& ctx, const std::string& endpoint);

  // Stamps seq and ts_us, then publishes as [type][EVENT message].
  void publish(proto::Event e);
  uint64_t last_seq() const { return seq_; }
  std::string endpoint();
  uint64_t dropped() const { return dropped_; }

 private:
  zmq::socket_t socket_;
  uint64_t seq_ = 0;
  uint64_t dropped_ = 0;
};

int64_t wall_clock_us();

}  // namespace zf
