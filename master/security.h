// The master's side of docs/security.md, wired into its sockets: the ZAP
// handler, CURVE on the workers, api and events endpoints, a handshake
// monitor on each of them, and the per-message checks (worker admitted,
// api role).
//
// Keyed mode (`zforce-master --keys DIR`): everything above. Open mode (no
// keys): nothing is set up, the sockets keep the NULL mechanism and every
// check passes (everyone is admin), as before keys existed.
//
// Thread contract: owned and used by the master's event-loop thread only.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "common/curve_keys.h"
#include "common/handshake_monitor.h"
#include "common/log.h"
#include "common/result.h"
#include "master/zap_handler.h"

namespace zf {

// Why `role` may not call `op` ("permission denied: run needs the admin role
// (this client is readonly:bob)"), or nullopt when it may.
std::optional<std::string> api_permission_error(ApiRole role, std::string_view user_id, std::string_view op);

// The `detail` of a `security.refused` event:
// "domain=api address=127.0.0.1 fingerprint=604a0c01ed7658b2 reason=...".
// Fields the refusal does not know are left out.
std::string refusal_detail(const Refusal& r);

struct HandshakeCounters {
  uint64_t failed = 0;  // handshakes that failed before ZAP was asked (see the monitor)
};

class MasterSecurity {
 public:
  // Keyed mode when `keys` is set: binds the ZAP handler in `ctx`, so this
  // must run before any socket of `ctx` is bound. Open mode otherwise.
  static Result<std::unique_ptr<MasterSecurity>> create(zmq::context_t& ctx, std::optional<KeyDir> keys);

  MasterSecurity(const MasterSecurity&) = delete;
  MasterSecurity& operator=(const MasterSecurity&) = delete;

  bool keyed() const { return zap_ != nullptr; }
  // nullptr in open mode.
  ZapHandler* zap() { return zap_.get(); }
  const ZapHandler* zap() const { return zap_.get(); }

  // Call before binding `s`: CURVE server with ZAP domain `domain`, and a
  // handshake monitor. Open mode: nothing. Throws zmq::error_t only for a
  // bug (the keys were checked when loaded).
  void secure_server(zmq::socket_t& s, std::string_view domain);

  // Appends one poll item per socket to watch (the ZAP handler, the monitors).
  void add_poll_items(std::vector<zmq::pollitem_t>& items);
  // Answers the waiting ZAP requests and reads the monitors. Returns every
  // refused handshake since the last call, each already logged (at a bounded
  // rate), for the master to publish. Never blocks.
  std::vector<Refusal> service();

  // The sender of a frame received on the workers endpoint, by its User-Id:
  // admitted, and under its own name (User-Id == routing id)?
  enum class WorkerCheck { Admitted, NotAdmitted, WrongName };
  WorkerCheck check_worker(const zmq::message_t& body, std::string_view routing_id, std::string& user_id) const;
  // The role of the sender of a frame received on the api endpoint.
  ApiRole api_role(const zmq::message_t& body, std::string& user_id) const;

  const HandshakeCounters& handshake_counters() const { return handshakes_; }

 private:
  explicit MasterSecurity(zmq::context_t& ctx) : ctx_(ctx) {}

  struct Watched {
    std::string domain;
    std::unique_ptr<HandshakeMonitor> monitor;
  };
  zmq::context_t& ctx_;
  std::unique_ptr<ZapHandler> zap_;
  std::vector<Watched> monitors_;
  HandshakeCounters handshakes_;
  log::RateLimit log_limit_{10, std::chrono::seconds(10)};
};

}  // namespace zf
