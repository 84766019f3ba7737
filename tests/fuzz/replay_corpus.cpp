// Replays the committed fuzz corpus (and any files given) through both
// variants of the checkpoint fuzz target: a regression test that needs no
// fuzzer, run by ctest in every build (also under the sanitizers).
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

#include "checkpoint_target.hpp"

int main(int argc, char** argv) {
  std::size_t n = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path p(argv[i]);
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p)) files.push_back(e.path());
    } else {
      files.push_back(p);
    }
    for (const auto& f : files) {
      std::ifstream is(f, std::ios::binary);
      const std::vector<char> bytes((std::istreambuf_iterator<char>(is)), std::istreambuf_iterator<char>());
      const auto* d = reinterpret_cast<const std::uint8_t*>(bytes.data());
      dasgd::fuzz::load_one(d, bytes.size(), false);
      dasgd::fuzz::load_one(d, bytes.size(), true);
      ++n;
    }
  }
  std::cout << "replayed " << n << " inputs through both fuzz variants\n";
  return n == 0 ? 1 : 0;
}
