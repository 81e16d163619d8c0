// The key directory fuzz_zap runs its ZAP handler with, shared with
// make_seeds so that seeds can offer keys the handler admits, revokes or
// does not know. Fixed raw keys (not generated) keep runs reproducible.
#pragma once

#include <initializer_list>
#include <string>

namespace zf::fuzz {

// 32 raw bytes, all `b`: a valid CURVE public key for the handler's purposes
// (it only compares keys; no handshake runs).
inline std::string fixed_key(char b) { return std::string(32, b); }

inline const std::string kWorkerKey = fixed_key('W');    // workers/w1.pub
inline const std::string kRevokedKey = fixed_key('R');   // revoked/old.pub
inline const std::string kAdminKey = fixed_key('A');     // clients/admin/alice.pub
inline const std::string kReadOnlyKey = fixed_key('B');  // clients/readonly/bob.pub
inline const std::string kUnknownKey = fixed_key('U');   // in no list: becomes pending

// The fuzz input format: frames, each as one length byte and that many bytes
// (a frame cut short by the end of the input keeps what there is).
inline std::string frames_to_input(const std::initializer_list<std::string>& frames) {
  std::string out;
  for (const auto& f : frames) {
    out.push_back(static_cast<char>(f.size()));
    out += f.substr(0, 255);
  }
  return out;
}

}  // namespace zf::fuzz
