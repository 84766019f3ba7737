// Downstream smoke test: two in-process workers, DaSGD, exact agreement
// after synchronize().
#include <dasgd/dasgd.hpp>

#include <cstdio>
#include <vector>

int main() {
  dasgd::comm::inproc_group group(2);
  std::vector<std::vector<float>> result(2);
  dasgd::comm::run_workers(group, [&](dasgd::comm::inproc_communicator comm) {
    std::vector<float> w(16, 1.0f), g(16, 0.1f * static_cast<float>(comm.rank() + 1));
    dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), comm, dasgd::policy::fixed_delay{4, 1},
                                    dasgd::optim::sgd{.lr = 0.1}, dasgd::merge::mix{0.25});
    for (int k = 0; k < 10; ++k) trainer.step(g);
    trainer.synchronize();
    result[static_cast<std::size_t>(comm.rank())] = w;
  });
  const bool ok = result[0] == result[1] && result[0][0] < 1.0f;
  std::printf("consumer: w[0] = %f, replicas agree: %s\n", result[0][0], ok ? "yes" : "no");
  return ok ? 0 : 1;
}
