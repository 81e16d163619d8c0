// The master's ZAP handler (ZeroMQ RFC 27): decides who may complete a
// CURVE handshake on the workers, api and events endpoints.
//
// libzmq sends one ZAP request per handshake to inproc://zeromq.zap.01 in the
// socket's context and holds the handshake until the reply. The handler binds
// a ROUTER there and answers from the master's event loop: poll socket(),
// call drain() when it is readable. No thread of its own.
//
// Bind order matters: create the handler BEFORE binding any CURVE server
// socket in the context. CURVE with no handler bound admits anyone who knows
// the server's public key (libzmq 4.3 without ZAP_ENFORCE_DOMAIN).
//
// Decisions (keyed mode), by the server socket's ZAP domain:
//   "workers": a key in DIR/workers           -> 200, User-Id = NAME
//              a key in DIR/revoked           -> 400 "revoked"
//              any other key                  -> 400, recorded as pending
//   "api", "events": a key in clients/admin    -> 200, User-Id = "admin:NAME"
//                    a key in clients/readonly -> 200, User-Id = "readonly:NAME"
//                    any other key             -> 400
//   any other domain, or the NULL/PLAIN mechanism -> 400
//   a request that is not valid RFC 27         -> 500 (never a crash)
// Open mode (no keys; the master binds loopback only unless --insecure):
// every request -> 200, User-Id = "local".
//
// ZAP runs only at the handshake. A revoked worker keeps an established
// connection, so the master must check worker_admitted()/api_role() on every
// message it receives (User-Id from user_id_of()) and drop the peer when the
// check fails.
//
// Thread contract: owned and used by the master's event-loop thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "common/curve_keys.h"
#include "common/log.h"
#include "common/result.h"

namespace zf {

inline constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
inline constexpr std::string_view kZapDomainWorkers = "workers";
inline constexpr std::string_view kZapDomainApi = "api";
inline constexpr std::string_view kZapDomainEvents = "events";

enum class ApiRole { None, ReadOnly, Admin };
const char* role_name(ApiRole role);  // "none", "readonly", "admin"

// True for api operations a read-only client may call (listing, showing,
// waiting, stats). Everything else, unknown operations included, needs admin.
bool is_read_only_op(std::string_view op);

// The "User-Id" property libzmq attached to a received frame (zmq_msg_gets);
// "" when there is none (NULL mechanism without a ZAP domain, inproc peers).
// Read it from a body frame: the routing-id frame a ROUTER adds carries none.
std::string user_id_of(const zmq::message_t& frame);

// Untrusted text (a ZAP field, an op name a client sent) shown back in a log
// line or a reason: at most `max` characters, non-printable ones as '?'.
std::string printable(std::string_view s, size_t max = 32);

// An unknown worker key that tried to join.
struct PendingWorker {
  std::string public_key;  // Z85
  std::string fingerprint;
  std::string address;     // peer address of the latest attempt ("" if not seen since the master started)
  std::chrono::system_clock::time_point first_seen;
  std::chrono::system_clock::time_point last_seen;
  uint64_t attempts = 0;   // handshakes since the master started
};

// One refused handshake, for the master to publish as `security.refused`.
struct Refusal {
  std::string domain;
  std::string address;      // peer address from the ZAP request ("" if malformed)
  std::string mechanism;    // "CURVE", "NULL", ... ("" if malformed)
  std::string fingerprint;  // of the offered key, "" without one
  std::string reason;       // in words for the operator
  int status = 400;         // ZAP status code sent: 400 refused, 500 malformed request
};

struct ZapCounters {
  uint64_t admitted = 0;
  uint64_t refused = 0;    // 400 replies
  uint64_t malformed = 0;  // 500 replies
  uint64_t refusals_dropped = 0;  // refusals not queued because the queue was full
};

class ZapHandler {
 public:
  using Clock = std::function<std::chrono::system_clock::time_point()>;

  static constexpr size_t kMaxPending = 100;    // distinct unknown worker keys kept
  static constexpr size_t kMaxRefusals = 1000;  // queued for take_refusals()

  // Keyed mode: decisions from `keys` (see common/curve_keys.h for the layout);
  // approve/remove/pending files are written under keys.dir. Fails if another
  // handler is already bound in `ctx`.
  static Result<std::unique_ptr<ZapHandler>> create(zmq::context_t& ctx, KeyDir keys, Clock clock = {});
  // Open mode (no keys): admits everything with User-Id "local".
  static Result<std::unique_ptr<ZapHandler>> create_open(zmq::context_t& ctx, Clock clock = {});

  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  // The ROUTER bound to kZapEndpoint; poll it for ZMQ_POLLIN.
  zmq::socket_t& socket() { return socket_; }
  // Answers one waiting request; false if none was waiting. Never blocks.
  bool handle_one();
  // Answers every waiting request; returns how many.
  size_t drain();

  bool keyed() const { return keyed_; }
  // The master's own key pair (for make_curve_server); nullptr in open mode.
  const KeyPair* server_key() const { return keyed_ ? &server_ : nullptr; }

  // Admits a pending worker key as worker `name`: writes DIR/workers/NAME.pub
  // and deletes DIR/pending/FP.pub. `key` picks the pending key by fingerprint
  // (a prefix will do) or by its Z85 text; it may be empty when exactly one key
  // is pending, or when `name` was removed earlier (re-admits its revoked key).
  // The worker gets in on its next handshake.
  Result<NamedKey> approve(std::string_view name, std::string_view key = {});
  // Revokes worker `name`: moves DIR/workers/NAME.pub to DIR/revoked/NAME.pub.
  // Further handshakes with its key are refused (and not listed as pending);
  // worker_admitted(name) turns false at once, so the master drops the
  // connection it already has.
  Result<NamedKey> remove(std::string_view name);
  // Pending keys, oldest first.
  std::vector<PendingWorker> pending() const;
  // Admitted workers, by name.
  std::vector<NamedKey> workers() const;

  // Refusals since the last call, oldest first (at most kMaxRefusals are kept).
  std::vector<Refusal> take_refusals();
  const ZapCounters& counters() const { return counters_; }

  // Per-message checks for the master (User-Id from user_id_of()).
  // Open mode: true / ApiRole::Admin for any User-Id.
  bool worker_admitted(std::string_view user_id) const;
  ApiRole api_role(std::string_view user_id) const;

 private:
  ZapHandler(zmq::context_t& ctx, Clock clock);

  struct Decision {
    int status = 400;
    std::string user_id;
    std::string reason;
  };
  Decision decide(std::string_view domain, std::string_view mechanism, std::string_view raw_key,
                  std::string_view address);
  Decision decide_worker(const std::string& key, std::string_view address);
  void note_pending(const std::string& key, std::string_view address);
  void refuse(Refusal r);
  void reply(const std::vector<zmq::message_t>& envelope, std::string_view request_id, const Decision& d);

  zmq::socket_t socket_;
  Clock clock_;
  bool keyed_ = false;
  std::filesystem::path dir_;
  KeyPair server_;
  std::map<std::string, std::string, std::less<>> worker_by_key_;   // Z85 key -> name
  std::map<std::string, std::string, std::less<>> key_by_worker_;   // name -> Z85 key
  std::map<std::string, std::string, std::less<>> admin_by_key_;
  std::map<std::string, std::string, std::less<>> readonly_by_key_;
  std::map<std::string, std::string, std::less<>> admin_names_;     // name -> key
  std::map<std::string, std::string, std::less<>> readonly_names_;
  std::map<std::string, std::string, std::less<>> revoked_by_key_;  // key -> name
  std::map<std::string, PendingWorker, std::less<>> pending_;       // key -> record
  std::deque<Refusal> refusals_;
  ZapCounters counters_;
  log::RateLimit log_limit_{10, std::chrono::seconds(10)};
};

}  // namespace zf
