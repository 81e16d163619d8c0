// Handshake outcomes of one ZeroMQ socket, read from zmq_socket_monitor.
//
// This is how a worker or a client learns that the master refused its key
// (libzmq reports a refused CURVE handshake only as a monitor event: the
// session ends, the queued message is dropped, nothing is received), and how
// the master learns of handshakes that failed before its ZAP handler was
// asked (a peer without keys, a wrong master.pub, replayed or forged bytes).
//
// Attach before connect/bind: events of a connection made earlier are lost.
// Poll socket() for ZMQ_POLLIN, then take(). Destroy the monitor before the
// monitored socket (declare it after): its destructor stops the monitoring
// first. libzmq's I/O thread sends each event to the monitor's PAIR with a
// blocking send; with the PAIR gone and the socket still monitored, the next
// event (a reconnect's handshake) blocked that thread for good, and with it
// every socket of the context: a worker that had lost the master never got
// through to it again.
//
// Thread contract: the monitor and its socket belong to the thread that owns
// the monitored socket.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "common/result.h"

namespace zf {

struct HandshakeEvent {
  enum class Kind {
    Succeeded,      // the handshake completed (and ZAP, if any, admitted the peer)
    Refused,        // ZAP refused the peer: value = ZAP status (400, 500)
    ProtocolError,  // value = ZMQ_PROTOCOL_ERROR_* (mechanism mismatch, bad crypto, ...)
    NoDetail,       // the connection ended during the handshake: value = errno
  };
  Kind kind = Kind::NoDetail;
  int value = 0;
  std::string endpoint;  // as libzmq reports it (the bound endpoint on a server socket)
};

// In words, for log lines and error messages ("mechanism mismatch: ...").
std::string describe_protocol_error(int code);
// True for ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: one side has keys and the other has none.
bool is_mechanism_mismatch(int code);

class HandshakeMonitor {
 public:
  // Starts monitoring `s` (handshake events only) over a fresh inproc endpoint of `ctx`.
  static Result<std::unique_ptr<HandshakeMonitor>> attach(zmq::context_t& ctx, zmq::socket_t& s);

  ~HandshakeMonitor();
  HandshakeMonitor(const HandshakeMonitor&) = delete;
  HandshakeMonitor& operator=(const HandshakeMonitor&) = delete;

  // The PAIR socket the events arrive on; poll it for ZMQ_POLLIN.
  zmq::socket_t& socket() { return pair_; }
  // Events waiting now, oldest first, at most `max`. Never blocks.
  std::vector<HandshakeEvent> take(size_t max = 1000);

 private:
  explicit HandshakeMonitor(zmq::context_t& ctx);
  zmq::socket_t pair_;
  zmq::socket_t* monitored_ = nullptr;  // must outlive this
};

}  // namespace zf
