#include "client/api_client.h"

#include "common/protocol.h"
#include "common/zmq_util.h"

namespace zf {

namespace {
// What a keyless client is told when the master wants keys.
constexpr const char* kKeysAdvice =
    "requires keys and this client has none: pass --key NAME.key and --master-key master.pub (or set ZFORCE_KEY "
    "and ZFORCE_MASTER_KEY)";
}  // namespace

void apply_client_keys(zmq::socket_t& s, const std::optional<ClientKeys>& keys) {
  if (keys) make_curve_client(s, keys->key, keys->master_key);
}

std::optional<std::string> client_handshake_error(const HandshakeEvent& e, const std::optional<ClientKeys>& keys,
                                                  const std::string& endpoint) {
  switch (e.kind) {
    case HandshakeEvent::Kind::Refused: {
      std::string fp = keys ? fingerprint(keys->key.public_key) : std::string("none");
      if (e.value == 400)
        return "the master refused this client's key (" + fp + ") at " + endpoint +
               ": it is not in the master's clients/admin or clients/readonly (ask its operator to add your NAME.pub)";
      return "the master refused this client's key (" + fp + ") at " + endpoint + " (ZAP status " +
             std::to_string(e.value) + ": it could not check the key; see the master's log)";
    }
    case HandshakeEvent::Kind::ProtocolError:
      if (is_mechanism_mismatch(e.value)) {
        if (!keys) return "the master at " + endpoint + " " + kKeysAdvice;
        return "the master at " + endpoint +
               " does not use keys (it runs without --keys): drop --key and --master-key (and ZFORCE_KEY, "
               "ZFORCE_MASTER_KEY)";
      }
      return "the handshake with the master at " + endpoint + " failed: " + describe_protocol_error(e.value);
    case HandshakeEvent::Kind::Succeeded:
    case HandshakeEvent::Kind::NoDetail: break;
  }
  return std::nullopt;
}

ApiClient::ApiClient(zmq::context_t& ctx, std::string endpoint, std::optional<ClientKeys> keys)
    : socket_(ctx, zmq::socket_type::dealer), endpoint_(std::move(endpoint)), keys_(std::move(keys)) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::maxmsgsize, proto::kMaxMessageBytes * 4);
  apply_client_keys(socket_, keys_);
  // A refused handshake shows only here; without the monitor a refused
  // client would wait for its whole --timeout.
  auto m = HandshakeMonitor::attach(ctx, socket_);
  if (m) monitor_ = std::move(*m);
  socket_.connect(endpoint_);
}

void ApiClient::read_handshake_events() {
  if (!monitor_) return;
  for (const auto& e : monitor_->take()) {
    if (e.kind == HandshakeEvent::Kind::NoDetail) ++handshakes_cut_;
    if (auto why = client_handshake_error(e, keys_, endpoint_); why && !refusal_) refusal_ = *why;
  }
}

Result<nlohmann::json> ApiClient::call(const std::string& op, const nlohmann::json& args,
                                       std::chrono::milliseconds timeout) {
  read_handshake_events();
  if (refusal_) return make_error(*refusal_);
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
    if (left.count() <= 0) {
      std::string msg = "no answer from the master at " + endpoint_ + " within " + std::to_string(timeout.count()) +
                        " ms (is it running? set --api or ZFORCE_API";
      // A keyed master that closes a keyless client's connection before
      // the client has read its greeting leaves no mechanism mismatch to
      // report (seen once under load in the suite): only cut handshakes.
      if (handshakes_cut_ > 0 && !keys_)
        msg += "; " + std::to_string(handshakes_cut_) +
               " connection(s) ended during the handshake: the master probably " + kKeysAdvice;
      else if (handshakes_cut_ > 0)
        msg += "; " + std::to_string(handshakes_cut_) +
               " connection(s) ended during the handshake: does the master use keys, and is --master-key its "
               "master.pub?";
      else if (keys_)
        msg += "; this client uses keys: is --master-key the master's master.pub?";
      return make_error(msg + ")");
    }
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0},
                               {monitor_ ? monitor_->socket().handle() : nullptr, -1,
                                static_cast<short>(monitor_ ? ZMQ_POLLIN : 0), 0}};
    zmq::poll(items, 2, left);
    if (items[1].revents & ZMQ_POLLIN) {
      read_handshake_events();
      if (refusal_) return make_error(*refusal_);
    }
    if (!(items[0].revents & ZMQ_POLLIN)) continue;
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
