// A connection to the master's api endpoint: one DEALER, one request at a
// time, each answered or timed out. Used by the zforce command-line client.
#pragma once

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "common/result.h"

namespace zf {

class ApiClient {
 public:
  ApiClient(zmq::context_t& ctx, std::string endpoint);

  // Sends op(args) and waits for its reply. An error reply from the master
  // and a missing reply both come back as an Error the user can read.
  Result<nlohmann::json> call(const std::string& op, const nlohmann::json& args,
                              std::chrono::milliseconds timeout = std::chrono::seconds(10));

 private:
  zmq::socket_t socket_;
  std::string endpoint_;
  uint64_t next_req_ = 1;
};

}  // namespace zf
