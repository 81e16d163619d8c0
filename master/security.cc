#include "master/security.h"

#include <cstring>

namespace zf {

std::optional<std::string> api_permission_error(ApiRole role, std::string_view user_id, std::string_view op) {
  if (role == ApiRole::Admin) return std::nullopt;
  if (role == ApiRole::ReadOnly && is_read_only_op(op)) return std::nullopt;
  const std::string who = user_id.empty() ? std::string("an unknown client") : printable(user_id, 64);
  if (role == ApiRole::None)
    return "permission denied: " + printable(op, 64) + " needs the admin role (this client, " + who +
           ", has no role on this master)";
  return "permission denied: " + printable(op, 64) + " needs the admin role (this client is " + who + ")";
}

std::string refusal_detail(const Refusal& r) {
  std::string s = "domain=" + (r.domain.empty() ? std::string("?") : r.domain);
  if (!r.address.empty()) s += " address=" + r.address;
  if (!r.mechanism.empty()) s += " mechanism=" + r.mechanism;
  if (!r.fingerprint.empty()) s += " fingerprint=" + r.fingerprint;
  if (r.status != 0) s += " status=" + std::to_string(r.status);
  s += " reason=" + r.reason;
  return s;
}

Result<std::unique_ptr<MasterSecurity>> MasterSecurity::create(zmq::context_t& ctx, std::optional<KeyDir> keys) {
  std::unique_ptr<MasterSecurity> s(new MasterSecurity(ctx));
  if (!keys) return s;
  if (!curve_available()) return make_error("--keys: this libzmq was built without CURVE support");
  auto zap = ZapHandler::create(ctx, std::move(*keys));
  if (!zap) return zap.error();
  s->zap_ = std::move(*zap);
  return s;
}

void MasterSecurity::secure_server(zmq::socket_t& s, std::string_view domain) {
  if (!zap_) return;
  make_curve_server(s, *zap_->server_key(), domain);
  // The monitor only adds log lines and events for handshakes that fail
  // before ZAP; without it ZAP still decides, so a failure here is not fatal.
  auto m = HandshakeMonitor::attach(ctx_, s);
  if (!m) {
    log::warn("no handshake monitor on the " + std::string(domain) + " endpoint: " + m.error().message);
    return;
  }
  monitors_.push_back({std::string(domain), std::move(*m)});
}

void MasterSecurity::add_poll_items(std::vector<zmq::pollitem_t>& items) {
  if (!zap_) return;
  items.push_back({zap_->socket().handle(), 0, ZMQ_POLLIN, 0});
  for (auto& w : monitors_) items.push_back({w.monitor->socket().handle(), 0, ZMQ_POLLIN, 0});
}

std::vector<Refusal> MasterSecurity::service() {
  if (!zap_) return {};
  zap_->drain();
  std::vector<Refusal> out = zap_->take_refusals();  // ZapHandler logged them
  for (auto& w : monitors_) {
    for (const auto& e : w.monitor->take()) {
      // Succeeded: nothing to say. Refused: ZAP said no, and already recorded it.
      if (e.kind != HandshakeEvent::Kind::ProtocolError && e.kind != HandshakeEvent::Kind::NoDetail) continue;
      ++handshakes_.failed;
      Refusal r;
      r.domain = w.domain;
      r.status = 0;  // no ZAP status: ZAP was never asked
      if (e.kind == HandshakeEvent::Kind::ProtocolError) {
        r.reason = "handshake failed before authentication: " + describe_protocol_error(e.value);
      } else {
        r.reason = "the connection ended during the handshake";
        if (e.value != 0) r.reason += std::string(" (") + std::strerror(e.value) + ")";
      }
      uint64_t suppressed = 0;
      if (log_limit_.allow(std::chrono::steady_clock::now(), suppressed)) {
        std::string line = "refused " + w.domain + " peer (address unknown: the handshake failed before the key " +
                           "was checked): " + r.reason;
        if (suppressed) line += " (" + std::to_string(suppressed) + " such failures not logged before this)";
        log::warn(line);
      }
      out.push_back(std::move(r));
    }
  }
  return out;
}

MasterSecurity::WorkerCheck MasterSecurity::check_worker(const zmq::message_t& body, std::string_view routing_id,
                                                         std::string& user_id) const {
  if (!zap_) return WorkerCheck::Admitted;
  user_id = user_id_of(body);
  if (!zap_->worker_admitted(user_id)) return WorkerCheck::NotAdmitted;
  if (user_id != routing_id) return WorkerCheck::WrongName;
  return WorkerCheck::Admitted;
}

ApiRole MasterSecurity::api_role(const zmq::message_t& body, std::string& user_id) const {
  if (!zap_) return ApiRole::Admin;
  user_id = user_id_of(body);
  return zap_->api_role(user_id);
}

}  // namespace zf
