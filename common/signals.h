// Turns SIGINT and SIGTERM into a readable fd (signalfd) that an event loop
// polls like a socket. Must be called before any thread is started (libzmq's
// I/O threads included) so that every thread inherits the blocked mask and
// the signals are only ever seen through the fd. SIGPIPE is ignored.
#pragma once

#include "common/result.h"

namespace zf {

Result<int> block_stop_signals_into_fd();
// Reads and discards what is pending on the fd; returns the signal number.
int consume_signal(int fd);

}  // namespace zf
