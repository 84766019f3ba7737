// Writing a file so that a crash never leaves a half-written one behind: a
// temporary file in the same folder, flushed and fsync'ed, renamed over the
// target (atomic on POSIX file systems), then the folder fsync'ed so the
// rename itself is durable.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <ostream>
#include <random>
#include <string>

#include <fcntl.h>
#include <unistd.h>

#include "error.hpp"

namespace dasgd::detail {

inline std::string errno_text() { return std::strerror(errno); }

inline void fsync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  DASGD_REQUIRE(fd >= 0, checkpoint_error, "cannot open '", path, "' to fsync it: ", errno_text());
  const int rc = ::fsync(fd);
  const std::string why = rc != 0 ? errno_text() : std::string();
  ::close(fd);
  DASGD_REQUIRE(rc == 0, checkpoint_error, "fsync of '", path, "' failed: ", why);
}

/// Calls write(stream) on a temporary file next to `path`, then makes it
/// `path` atomically. On any failure the temporary file is removed and
/// `path` is left as it was.
template <class Write>
void write_file_atomically(const std::string& path, Write&& write) {
  DASGD_REQUIRE(!path.empty(), checkpoint_error, "checkpoint file name is empty");
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::random_device rd;
  const std::string tmp = concat(path, ".tmp-", ::getpid(), "-", rd());
  try {
    {
      std::ofstream os(tmp, std::ios::binary | std::ios::trunc);
      DASGD_REQUIRE(os.is_open(), checkpoint_error, "cannot create '", tmp, "': ", errno_text());
      write(static_cast<std::ostream&>(os));
      os.flush();
      DASGD_REQUIRE(os.good(), checkpoint_error, "writing '", tmp, "' failed");
      os.close();
      DASGD_REQUIRE(!os.fail(), checkpoint_error, "closing '", tmp, "' failed");
    }
    fsync_path(tmp, false);
    DASGD_REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0, checkpoint_error, "renaming '",
                  tmp, "' to '", path, "' failed: ", errno_text());
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  fsync_path(dir, true);
}

}  // namespace dasgd::detail
