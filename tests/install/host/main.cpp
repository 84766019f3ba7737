// Downstream smoke test: two in-process workers, DaSGD, exact agreement
// after synchronize(); the trainer held as a class member (trainer_for).
#include <dasgd/dasgd.hpp>

#include <cstdio>
#include <vector>

struct worker {
  std::vector<float> w = std::vector<float>(16, 1.0f);
  dasgd::trainer_for<float, dasgd::comm::inproc_communicator> trainer;

  explicit worker(dasgd::comm::inproc_communicator comm)
      : trainer(dasgd::make_tensor_list(w), std::move(comm), {.tau = 4, .delay = 1}, {.lr = 0.1},
                {.update_proportion = 0.25}) {}
};

int main() {
  dasgd::comm::inproc_group group(2);
  std::vector<std::vector<float>> result(2);
  dasgd::comm::run_workers(group, [&](dasgd::comm::inproc_communicator comm) {
    const auto rank = static_cast<std::size_t>(comm.rank());
    worker me(std::move(comm));
    std::vector<float> g(16, 0.1f * static_cast<float>(rank + 1));
    for (int k = 0; k < 10; ++k) me.trainer.step(g);
    me.trainer.synchronize();
    result[rank] = me.w;
  });
  const bool ok = result[0] == result[1] && result[0][0] < 1.0f;
  std::printf("consumer: w[0] = %f, replicas agree: %s\n", result[0][0], ok ? "yes" : "no");
  return ok ? 0 : 1;
}
