// MPI return codes as dasgd exceptions. Every MPI call dasgd makes goes
// through DASGD_MPI_CHECK (on a communicator whose error handler is
// MPI_ERRORS_RETURN), so a failure becomes a comm_error naming the call and
// MPI's own description instead of an abort.
#pragma once

#include "mpi_header.hpp"

#include <string>

#include "../../core/error.hpp"

namespace dasgd::comm::detail {

/// MPI's description of an error code, with the code and its class.
inline std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return ::dasgd::detail::concat("unknown MPI error code ", code);
  int error_class = code;
  MPI_Error_class(code, &error_class);
  return ::dasgd::detail::concat(std::string(text, static_cast<std::size_t>(length)),
                                 " (MPI error code ", code, ", class ", error_class, ")");
}

/// The comm_error a failed MPI call becomes.
inline comm_error mpi_failure(int code, const char* call, const char* file, int line) {
  return comm_error(::dasgd::detail::concat(call, " failed: ", mpi_error_text(code)), file, line);
}

inline void mpi_check(int code, const char* call, const char* file, int line) {
  if (code != MPI_SUCCESS) throw mpi_failure(code, call, file, line);
}

/// Name of an MPI thread support level, for messages.
inline const char* mpi_thread_level_name(int level) {
  if (level == MPI_THREAD_SINGLE) return "MPI_THREAD_SINGLE";
  if (level == MPI_THREAD_FUNNELED) return "MPI_THREAD_FUNNELED";
  if (level == MPI_THREAD_SERIALIZED) return "MPI_THREAD_SERIALIZED";
  if (level == MPI_THREAD_MULTIPLE) return "MPI_THREAD_MULTIPLE";
  return "an unknown MPI thread level";
}

inline bool mpi_is_initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag != 0;
}

inline bool mpi_is_finalized() {
  int flag = 0;
  MPI_Finalized(&flag);
  return flag != 0;
}

}  // namespace dasgd::comm::detail

/// Calls fn(args...) and throws comm_error naming `fn` if it fails.
#define DASGD_MPI_CHECK(fn, ...) \
  ::dasgd::comm::detail::mpi_check(fn(__VA_ARGS__), #fn, __FILE__, __LINE__)
