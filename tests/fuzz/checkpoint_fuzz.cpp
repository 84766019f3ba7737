// libFuzzer entry point (clang -fsanitize=fuzzer); DASGD_FUZZ_FIX_CRC
// selects the variant that recomputes the CRCs. scripts/run-fuzz.sh builds
// and runs both.
#include "checkpoint_target.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
#if defined(DASGD_FUZZ_FIX_CRC)
  return dasgd::fuzz::load_one(data, size, true);
#else
  return dasgd::fuzz::load_one(data, size, false);
#endif
}
