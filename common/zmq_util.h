// Small helpers around cppzmq used by every executable: receiving a whole
// multipart message without blocking, and sending one with ROUTER_MANDATORY
// errors turned into a Status instead of an exception.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "common/result.h"

namespace zf {

// Receives every frame of one message if one is waiting; false if none is.
// A part larger than the socket's ZMQ_MAXMSGSIZE never arrives (the peer is
// disconnected by libzmq instead).
// At most kMaxFramesKept + 1 frames are kept: a message with more than
// kMaxFramesKept frames (no zforce message has more than 3) reaches the
// caller with kMaxFramesKept + 1 frames, which no caller accepts.
inline constexpr size_t kMaxFramesKept = 8;
bool recv_multipart(zmq::socket_t& s, std::vector<zmq::message_t>& parts);

// Sends frames as one message. Fails (no exception) when the peer is unknown
// or gone (ROUTER_MANDATORY) or the send would block.
Status send_multipart(zmq::socket_t& s, const std::vector<std::string_view>& frames);

// zmq::poll's contract (each item a socket or a descriptor, revents set,
// returns how many items have events; a negative timeout waits for ever),
// with fewer system calls. zmq_poll polls every descriptor twice when
// nothing is ready (once without waiting, then waiting) and asks each socket
// for ZMQ_EVENTS on both passes, which costs libzmq a poll and a getpid each:
// about a dozen system calls per wait for the master's loop. Here each
// socket is asked once, and only if nothing is ready, one poll() waits on
// the sockets' ZMQ_FDs and the descriptors together. Asking ZMQ_EVENTS
// before that poll is what makes it safe: ZMQ_FD is edge-triggered, and a
// send may have consumed the wake-up of a message that now waits unseen.
// On EINTR it returns what it found so far (the callers loop).
int poll_items(zmq::pollitem_t* items, size_t count, std::chrono::milliseconds timeout);

// The endpoint a socket actually bound (resolves "tcp://127.0.0.1:*").
std::string last_endpoint(zmq::socket_t& s);

inline std::string_view view(const zmq::message_t& m) {
  return std::string_view(static_cast<const char*>(m.data()), m.size());
}

}  // namespace zf
