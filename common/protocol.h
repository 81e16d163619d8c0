// The zforce wire protocol: one struct per message, each with its encoder and
// decoder side by side (protocol.cc). schemas/PROTOCOL.md is the spec and
// schemas/messages/*.json the machine-checkable schemas; this file follows them.
//
// Every message is one ZeroMQ frame holding a msgpack array
//     [ "ZF", major, minor, type, body ]
// The first three elements keep this layout in every version, so a peer of
// another major version can always be recognised and refused with a reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace zf::proto {

inline constexpr std::string_view kSignature = "ZF";
inline constexpr uint32_t kMajor = 1;
inline constexpr uint32_t kMinor = 1;
// The first minor version that reads BATCH: a side sends BATCH only to a
// peer whose messages carry this minor or a later one.
inline constexpr uint32_t kBatchMinor = 1;
// Messages gathered into one BATCH frame, at most (send_batched; a bigger
// message goes alone): well below kMaxMessageBytes.
inline constexpr size_t kBatchBytes = 256 * 1024;
// Larger frames are refused by the sockets themselves (ZMQ_MAXMSGSIZE).
inline constexpr int64_t kMaxMessageBytes = 4 * 1024 * 1024;

// Wire values never change meaning: never renumber or reuse one.
enum class MsgType : uint32_t {
  Ready = 1,
  Welcome = 2,
  Heartbeat = 3,
  Assign = 4,
  Started = 5,
  Finished = 6,
  Cancel = 7,
  Disconnect = 8,
  Refused = 9,
  FinishedAck = 10,
  Drain = 11,
  Batch = 12,
  ApiRequest = 20,
  ApiReply = 21,
  Event = 30,
};
std::string_view msg_type_name(MsgType t);

// An instance as the worker reports it after a reconnect.
struct RunningInstance {
  uint64_t instance = 0;
  uint32_t attempt = 0;
};

// worker -> master: first message on every (re)connection.
struct Ready {
  std::string name;
  uint32_t slots = 0;
  std::vector<std::string> tags;
  std::string version;  // software version, for operators
  std::vector<RunningInstance> running;
};

// master -> worker: admission, with the liveness rules the worker must follow.
struct Welcome {
  uint32_t heartbeat_ms = 0;
  uint32_t liveness = 0;
};

// Both ways; sent only when nothing else was sent for one interval.
struct Heartbeat {};

// One step of an instance, fully resolved by the master (parameters substituted).
struct StepSpec {
  std::string name;
  std::string kind;  // "run" or "builtin"
  std::vector<std::string> argv;             // kind == run
  std::string builtin;                       // kind == builtin
  std::map<std::string, std::string> args;   // builtin arguments
  std::map<std::string, std::string> env;
  std::string cwd;
  uint64_t timeout_ms = 0;  // 0 = none
};

// master -> worker: run this instance now (the master holds a slot credit for it).
struct Assign {
  uint64_t instance = 0;
  uint32_t attempt = 0;
  std::string job;
  std::map<std::string, std::string> params;
  std::vector<StepSpec> steps;
  uint64_t timeout_ms = 0;  // whole instance; 0 = none
};

// worker -> master: the instance's first step was started.
struct Started {
  uint64_t instance = 0;
  uint32_t attempt = 0;
};

// worker -> master: the instance ended. Repeated until acknowledged.
struct Finished {
  uint64_t instance = 0;
  uint32_t attempt = 0;
  std::string status;  // succeeded | failed | timed_out | cancelled
  int32_t exit_code = 0;
  uint64_t duration_ms = 0;
  int32_t failed_step = -1;  // index of the step that failed, -1 if none
  std::string error;         // why, when not the command's own exit code
  std::string output;        // bounded tail of stdout+stderr
};

// master -> worker: the result of (instance, attempt) is applied; forget it.
// `more` acknowledges further results in the same message: the master sends
// one FINISHED_ACK per worker per committed turn, not one per result.
struct FinishedAck {
  uint64_t instance = 0;
  uint32_t attempt = 0;
  std::vector<RunningInstance> more;
};

// master -> worker: stop this instance (SIGTERM, then SIGKILL after grace).
struct Cancel {
  uint64_t instance = 0;
  uint32_t attempt = 0;
};

// Either way: the sender is going away (worker drain end, master shutdown).
struct Disconnect {
  std::string reason;
};

// Either way: drain. master -> worker: take nothing new, finish what runs,
// then DISCONNECT and exit. worker -> master: I am draining (it was told to
// stop); assign me nothing more.
struct Drain {
  std::string reason;
};

// master -> peer: you are not admitted (version, name in use, not ready yet).
struct Refused {
  std::string reason;
};

// client -> master api.
struct ApiRequest {
  uint64_t req = 0;  // echoed in the reply
  std::string op;
  nlohmann::json args = nlohmann::json::object();
};

// master -> client.
struct ApiReply {
  uint64_t req = 0;
  bool ok = false;
  std::string error;
  nlohmann::json result;
};

// master <-> worker (protocol 1.1): several messages in one frame, each a
// complete encoded message, to be handled in order. Sent only to a peer of
// minor >= kBatchMinor; never nested.
struct Batch {
  std::vector<std::string> messages;
};

// master -> tap subscribers (PUB). Frame 1 is the type as topic, frame 2 this.
struct Event {
  uint64_t seq = 0;
  int64_t ts_us = 0;  // wall clock, microseconds since the Unix epoch
  std::string type;   // instance.<state>, member.joined|left|lost, ...
  std::optional<uint64_t> instance;
  std::optional<std::string> job;
  std::optional<std::string> queue;
  std::optional<std::string> member;
  std::optional<uint32_t> attempt;
  std::optional<int32_t> exit_code;
  std::optional<int32_t> slot;
  std::optional<uint32_t> trigger;  // trigger.fired: index in the job's [[triggers]]
  std::optional<std::string> detail;
};

using Message = std::variant<Ready, Welcome, Heartbeat, Assign, Started, Finished, FinishedAck,
                             Cancel, Disconnect, Refused, ApiRequest, ApiReply, Event, Drain, Batch>;

MsgType type_of(const Message& m);

std::string encode(const Message& m);
// One message without building a Message around it (which would copy it).
template <class T>
std::string encode(const T& m);

// An ASSIGN's fields, by reference: the master encodes one per dispatch from
// what the instance already holds, without copying its steps.
struct AssignView {
  uint64_t instance;
  uint32_t attempt;
  std::string_view job;
  const std::map<std::string, std::string>& params;
  const std::vector<StepSpec>& steps;
  uint64_t timeout_ms;
};
// The same bytes as encode(Assign{...}) with these fields.
std::string encode_assign(const AssignView& a);
// The same bytes as encode(Batch{...}) of these encoded messages, without
// copying them into a Batch first.
std::string encode_batch(std::span<const std::string> encoded);
// Splits encoded messages into BATCH frames of at most about max_bytes each
// (a message larger than that goes alone, as itself); one message stays as
// it is. Calls send(frame) for each, in order.
template <class Send>
void send_batched(std::span<const std::string> encoded, size_t max_bytes, Send&& send) {
  size_t begin = 0;
  while (begin < encoded.size()) {
    size_t end = begin, bytes = 0;
    while (end < encoded.size() && (end == begin || bytes + encoded[end].size() <= max_bytes))
      bytes += encoded[end++].size();
    if (end - begin == 1) send(encoded[begin]);
    else send(encode_batch(encoded.subspan(begin, end - begin)));
    begin = end;
  }
}

// Why a frame could not be decoded. VersionMismatch is well-formed enough to
// answer with a Refused; everything else is dropped and counted.
enum class DecodeFailure { Malformed, VersionMismatch };

struct DecodeError {
  DecodeFailure kind = DecodeFailure::Malformed;
  std::string reason;
  uint32_t peer_major = 0;
  uint32_t peer_minor = 0;
};

using Decoded = std::variant<Message, DecodeError>;
// `minor`, if given, is set to the sender's minor version when the frame
// decodes.
Decoded decode(const void* data, size_t size, uint32_t* minor = nullptr);
inline Decoded decode(std::string_view s, uint32_t* minor = nullptr) { return decode(s.data(), s.size(), minor); }

// Events as JSON objects (for `zforce tap --json` and tests).
nlohmann::json event_to_json(const Event& e);

// A short printable sample of untrusted bytes for log lines.
std::string sanitize_sample(const void* data, size_t size, size_t max_chars = 32);

}  // namespace zf::proto
