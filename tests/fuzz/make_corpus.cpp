// Writes the seed corpus: genuine checkpoints of the fuzz target's trainer
// at several points of its schedule (with and without an average in
// flight), a truncated and a junk file. Run: make_corpus <folder>.
#include <fstream>
#include <sstream>
#include <string>

#include "checkpoint_target.hpp"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream os(dir + "/" + name, std::ios::binary);
    os << bytes;
  };
  for (int steps : {0, 2, 4, 5, 8}) {  // 4 and 8: launched at 3 / 7, in flight
    dasgd::fuzz::target_trainer t;
    for (int k = 0; k < steps; ++k) t.step();
    std::ostringstream os;
    t.tr.save(os);
    write("steps" + std::to_string(steps) + ".ckpt", os.str());
    if (steps == 5) write("truncated.ckpt", os.str().substr(0, os.str().size() / 2));
  }
  write("junk.bin", "DASGDCKP\x02\x00\x00\x00garbage that is not a header");
  return 0;
}
