// A host trainer given a gradient list in device memory.
#include <dasgd/dasgd.hpp>

#include <vector>

#if DASGD_COMPILE_FAIL_CONTROL
using gradient_space = dasgd::host_space;
#else
using gradient_space = dasgd::device_space;
#endif

void train(dasgd::comm::inproc_communicator comm, const float* g1, const float* g2) {
  std::vector<float> w1(8, 0.0f), w2(4, 0.0f);
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w1, w2), comm,
                                  dasgd::policy::fixed_delay{}, dasgd::optim::sgd{.lr = 0.1},
                                  dasgd::merge::mix{});
  dasgd::tensor_list<const float, gradient_space> grads;
  grads.add(g1, 8).add(g2, 4);
  trainer.step(grads);
}
