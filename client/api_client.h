// A connection to the master's api endpoint: one DEALER, one request at a
// time, each answered or timed out. Used by the zforce command-line client.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "common/curve_keys.h"
#include "common/handshake_monitor.h"
#include "common/result.h"

namespace zf {

// CURVE for a client (docs/security.md): its key pair and the master's public key.
struct ClientKeys {
  KeyPair key;
  std::string master_key;  // Z85, from master.pub
};

// Sets up `s` as a CURVE client when `keys` is set (call before connect).
void apply_client_keys(zmq::socket_t& s, const std::optional<ClientKeys>& keys);

// What to tell the user about a handshake event of a client socket connected
// to `endpoint`: the error for a refusal or a failure the client cannot get
// past (the session is over), nullopt for anything else.
std::optional<std::string> client_handshake_error(const HandshakeEvent& e, const std::optional<ClientKeys>& keys,
                                                  const std::string& endpoint);

class ApiClient {
 public:
  ApiClient(zmq::context_t& ctx, std::string endpoint, std::optional<ClientKeys> keys = std::nullopt);

  // Sends op(args) and waits for its reply. An error reply from the master,
  // a refused handshake and a missing reply all come back as an Error the
  // user can read.
  Result<nlohmann::json> call(const std::string& op, const nlohmann::json& args,
                              std::chrono::milliseconds timeout = std::chrono::seconds(10));

 private:
  // Reads the monitor; sets refusal_ when the master refused us.
  void read_handshake_events();

  zmq::socket_t socket_;
  std::string endpoint_;
  std::optional<ClientKeys> keys_;
  std::unique_ptr<HandshakeMonitor> monitor_;
  std::optional<std::string> refusal_;  // sticky: libzmq does not retry a refused handshake
  uint64_t handshakes_cut_ = 0;         // connections that ended during the handshake
  uint64_t next_req_ = 1;
};

}  // namespace zf
