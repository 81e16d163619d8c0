#include "worker/output_tail.h"

#include <algorithm>
#include <cstring>

namespace zf {

OutputTail::OutputTail(std::size_t capacity) : capacity_(capacity) {}

void OutputTail::append(const char* data, std::size_t size) {
  total_ += size;
  if (capacity_ == 0 || size == 0) return;

  // A chunk at least as large as the buffer replaces it outright, so the
  // cost stays proportional to what is kept rather than what was written.
  if (size >= capacity_) {
    buf_.assign(data + (size - capacity_), capacity_);
    head_ = 0;
    return;
  }

  if (buf_.size() < capacity_) {
    const std::size_t take = std::min(capacity_ - buf_.size(), size);
    buf_.append(data, take);
    data += take;
    size -= take;
    if (size == 0) return;
  }

  const std::size_t first = std::min(size, capacity_ - head_);
  std::memcpy(buf_.data() + head_, data, first);
  std::memcpy(buf_.data(), data + first, size - first);
  head_ = (head_ + size) % capacity_;
}

std::string OutputTail::str() const {
  if (head_ == 0) return buf_;
  std::string out;
  out.reserve(buf_.size());
  out.append(buf_, head_, std::string::npos);
  out.append(buf_, 0, head_);
  return out;
}

}  // namespace zf
