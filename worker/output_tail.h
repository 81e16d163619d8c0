// The last bytes a step wrote, for the FINISHED report and for operators who
// want to see why a step failed. A step may write gigabytes; the worker keeps
// a fixed amount per step so its memory does not depend on what jobs print.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace zf {

// Keeps the last `capacity` bytes of everything appended, and counts all of
// them. Memory grows with the output up to `capacity` and never beyond.
// The tail may begin in the middle of a line or of a UTF-8 sequence.
// Owns its buffer; single-threaded (owned by the worker loop, like the
// ChildProcess it is filled from).
class OutputTail {
 public:
  explicit OutputTail(std::size_t capacity);

  void append(const char* data, std::size_t size);

  // The kept bytes, oldest first.
  std::string str() const;
  // Every byte ever appended, kept or not.
  std::uint64_t total() const { return total_; }
  // True once bytes have been dropped from the front.
  bool truncated() const { return total_ > capacity_; }
  std::size_t capacity() const { return capacity_; }

 private:
  std::size_t capacity_;
  // Grows up to capacity_; once full it is a ring whose oldest byte is at
  // head_. Before that head_ is 0.
  std::string buf_;
  std::size_t head_ = 0;
  std::uint64_t total_ = 0;
};

}  // namespace zf
