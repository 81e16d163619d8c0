// Small helpers around cppzmq used by every executable: receiving a whole
// multipart message without blocking, and sending one with ROUTER_MANDATORY
// errors turned into a Status instead of an exception.
#pragma once

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

// The endpoint a socket actually bound (resolves "tcp://127.0.0.1:*").
std::string last_endpoint(zmq::socket_t& s);

inline std::string_view view(const zmq::message_t& m) {
  return std::string_view(static_cast<const char*>(m.data()), m.size());
}

}  // namespace zf
