// libFuzzer target: message bodies only. The first input byte picks one of
// the 14 message types; the rest is the msgpack body, wrapped in a valid
// envelope ["ZF", 1, 0, type, body] before decoding. Mutations thus never go
// to waste on the signature and version, which fuzz_protocol covers.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/protocol.h"
#include "tests/fuzz/protocol_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto& types = zf::fuzz::kAllTypes;
  const auto type = static_cast<uint8_t>(types[data[0] % types.size()]);
  // fixarray(5), fixstr "ZF", 1, 0, the type as a positive fixint (all < 128).
  std::string frame = {'\x95', '\xa2', 'Z', 'F', '\x01', '\x00', static_cast<char>(type)};
  frame.append(reinterpret_cast<const char*>(data + 1), size - 1);
  zf::fuzz::check_decoded(zf::proto::decode(frame));
  return 0;
}
