// libFuzzer target: one frame as it arrives on any zforce socket, through
// proto::decode (signature, version, type, then the body for the type).
// Seeds: one valid frame per message type (make_seeds), so the fuzzer starts
// inside every body decoder.
#include <cstddef>
#include <cstdint>

#include "common/protocol.h"
#include "tests/fuzz/protocol_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  zf::fuzz::check_decoded(zf::proto::decode(data, size));
  (void)zf::proto::sanitize_sample(data, size);  // what the master logs of a bad frame
  return 0;
}
