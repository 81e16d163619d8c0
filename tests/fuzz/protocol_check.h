// What a decoded frame promises, checked by fuzz_protocol and
// fuzz_protocol_body: a failure has a reason; a decoded message prints as
// JSON the way the client prints it, re-encodes to bytes that decode to the
// same type, and re-encodes again to the very same bytes.
#pragma once

#include <array>
#include <string>
#include <variant>

#include "common/protocol.h"
#include "tests/fuzz/fuzz_check.h"

namespace zf::fuzz {

// Every message type; fuzz_protocol_body picks one by its first input byte
// (index = byte % 14), and make_seeds writes that byte in front of bodies.
inline constexpr std::array<proto::MsgType, 14> kAllTypes = {
    proto::MsgType::Ready,      proto::MsgType::Welcome,     proto::MsgType::Heartbeat,
    proto::MsgType::Assign,     proto::MsgType::Started,     proto::MsgType::Finished,
    proto::MsgType::Cancel,     proto::MsgType::Disconnect,  proto::MsgType::Refused,
    proto::MsgType::FinishedAck, proto::MsgType::Drain,      proto::MsgType::ApiRequest,
    proto::MsgType::ApiReply,   proto::MsgType::Event};

inline void check_decoded(const proto::Decoded& d) {
  using namespace zf::proto;
  if (const auto* err = std::get_if<DecodeError>(&d)) {
    FUZZ_CHECK(!err->reason.empty(), "a decode error without a reason");
    return;
  }
  const Message& m = std::get<Message>(d);
  const MsgType type = type_of(m);
  const std::string name(msg_type_name(type));
  FUZZ_CHECK(name != "UNKNOWN", "decoded a message of no known type");
  // As the client and the store print them: invalid UTF-8 replaced.
  constexpr auto kReplace = nlohmann::json::error_handler_t::replace;
  if (const auto* e = std::get_if<Event>(&m)) (void)event_to_json(*e).dump(-1, ' ', false, kReplace);
  if (const auto* r = std::get_if<ApiReply>(&m)) (void)r->result.dump(-1, ' ', false, kReplace);
  if (const auto* q = std::get_if<ApiRequest>(&m)) (void)q->args.dump(-1, ' ', false, kReplace);

  const std::string once = encode(m);
  const Decoded again = decode(once);
  if (const auto* err = std::get_if<DecodeError>(&again))
    FUZZ_CHECK(false, "our own encoding of a decoded " + name + " does not decode: " + err->reason);
  const Message& m2 = std::get<Message>(again);
  FUZZ_CHECK(type_of(m2) == type, "the type of a " + name + " changed in a round trip");
  FUZZ_CHECK(encode(m2) == once, "re-encoding a " + name + " is not stable");
}

}  // namespace zf::fuzz
