#include "common/handshake_monitor.h"

#include <atomic>
#include <cstdio>
#include <cstring>

#include <zmq.h>

namespace zf {

std::string describe_protocol_error(int code) {
  switch (code) {
    case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
      return "security mechanism mismatch: one side uses CURVE keys and the other has none";
    case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
      return "cryptographic check failed: a wrong master.pub, or replayed or forged handshake bytes";
    case ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: return "CURVE key exchange failed";
    case ZMQ_PROTOCOL_ERROR_ZMTP_UNSPECIFIED:
      // libzmq 4.3 reports a CURVE INITIATE whose cookie belongs to another
      // connection (replayed handshake bytes) this way.
      return "handshake rejected (protocol error without detail: replayed or forged handshake bytes look like this)";
    case ZMQ_PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND: return "unexpected handshake command";
    case ZMQ_PROTOCOL_ERROR_ZMTP_INVALID_SEQUENCE: return "invalid handshake sequence";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_HELLO: return "malformed HELLO";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_INITIATE: return "malformed INITIATE";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_WELCOME: return "malformed WELCOME";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_READY: return "malformed READY";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_ERROR: return "malformed ERROR";
    case ZMQ_PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_MESSAGE: return "malformed MESSAGE";
    case ZMQ_PROTOCOL_ERROR_ZMTP_INVALID_METADATA: return "invalid handshake metadata";
    default: break;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "handshake protocol error 0x%08x", static_cast<unsigned>(code));
  return buf;
}

bool is_mechanism_mismatch(int code) { return code == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH; }

HandshakeMonitor::HandshakeMonitor(zmq::context_t& ctx) : pair_(ctx, zmq::socket_type::pair) {}

HandshakeMonitor::~HandshakeMonitor() {
  // Stop before the PAIR closes (see the header): after this libzmq sends no
  // more events.
  if (monitored_ && monitored_->handle()) (void)zmq_socket_monitor(monitored_->handle(), nullptr, 0);
}

Result<std::unique_ptr<HandshakeMonitor>> HandshakeMonitor::attach(zmq::context_t& ctx, zmq::socket_t& s) {
  // One endpoint per monitor, never reused: a stopped monitor's endpoint may
  // still be bound for a moment after its socket closed.
  static std::atomic<uint64_t> counter{0};
  const std::string endpoint =
      "inproc://zforce-handshake-monitor-" + std::to_string(++counter) + "-" + std::to_string(reinterpret_cast<uintptr_t>(&s));
  const int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
  if (zmq_socket_monitor(s.handle(), endpoint.c_str(), events) != 0)
    return make_error(std::string("cannot monitor the socket: ") + zmq_strerror(zmq_errno()));
  std::unique_ptr<HandshakeMonitor> m(new HandshakeMonitor(ctx));
  m->monitored_ = &s;
  try {
    m->pair_.set(zmq::sockopt::linger, 0);
    m->pair_.connect(endpoint);
  } catch (const zmq::error_t& e) {
    return make_error(std::string("cannot connect the socket monitor: ") + e.what());
  }
  return m;
}

std::vector<HandshakeEvent> HandshakeMonitor::take(size_t max) {
  std::vector<HandshakeEvent> out;
  while (out.size() < max) {
    zmq::message_t head, addr;
    try {
      if (!pair_.recv(head, zmq::recv_flags::dontwait)) break;
      // The second frame (the endpoint) always follows the first.
      if (!head.more() || !pair_.recv(addr, zmq::recv_flags::none)) continue;
    } catch (const zmq::error_t&) {
      break;
    }
    if (head.size() < 6) continue;
    uint16_t id = 0;
    uint32_t value = 0;
    std::memcpy(&id, head.data(), sizeof id);
    std::memcpy(&value, static_cast<const char*>(head.data()) + 2, sizeof value);
    HandshakeEvent e;
    switch (id) {
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: e.kind = HandshakeEvent::Kind::Succeeded; break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: e.kind = HandshakeEvent::Kind::Refused; break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL: e.kind = HandshakeEvent::Kind::ProtocolError; break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL: e.kind = HandshakeEvent::Kind::NoDetail; break;
      default: continue;  // MONITOR_STOPPED and anything we did not ask for
    }
    e.value = static_cast<int>(value);
    e.endpoint.assign(static_cast<const char*>(addr.data()), addr.size());
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace zf
