#include "client/api_client.h"

#include "common/protocol.h"
#include "common/zmq_util.h"

namespace zf {

ApiClient::ApiClient(zmq::context_t& ctx, std::string endpoint)
    : socket_(ctx, zmq::socket_type::dealer), endpoint_(std::move(endpoint)) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::maxmsgsize, proto::kMaxMessageBytes * 4);
  socket_.connect(endpoint_);
}

Result<nlohmann::json> ApiClient::call(const std::string& op, const nlohmann::json& args,
                                       std::chrono::milliseconds timeout) {
  proto::ApiRequest req;
  req.req = next_req_++;
  req.op = op;
  req.args = args;
  std::string bytes = proto::encode(req);
  try {
    socket_.send(zmq::buffer(bytes), zmq::send_flags::none);
  } catch (const zmq::error_t& e) {
    return make_error("cannot send to " + endpoint_ + ": " + e.what());
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return make_error("no answer from the master at " + endpoint_ + " within " +
                        std::to_string(timeout.count()) + " ms (is it running? set --api or ZFORCE_API)");
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, left);
    if (!(item.revents & ZMQ_POLLIN)) continue;
    zmq::message_t m;
    if (!socket_.recv(m, zmq::recv_flags::dontwait)) continue;
    auto d = proto::decode(m.data(), m.size());
    if (auto* err = std::get_if<proto::DecodeError>(&d)) return make_error("bad reply from the master: " + err->reason);
    auto* rep = std::get_if<proto::ApiReply>(&std::get<proto::Message>(d));
    if (!rep) return make_error("unexpected message from the master");
    if (rep->req != req.req && rep->req != 0) continue;  // a late reply to an earlier request
    if (!rep->ok) return make_error(rep->error);
    return rep->result;
  }
}

}  // namespace zf
