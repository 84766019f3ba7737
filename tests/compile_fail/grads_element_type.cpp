// float parameters, a gradient list of doubles.
#include <dasgd/dasgd.hpp>

#include <vector>

#if DASGD_COMPILE_FAIL_CONTROL
using gradient_element = float;
#else
using gradient_element = double;
#endif

void train(dasgd::comm::inproc_communicator comm) {
  std::vector<float> w1(8, 0.0f), w2(4, 0.0f);
  std::vector<gradient_element> g1(8, 1), g2(4, 1);
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w1, w2), comm,
                                  dasgd::policy::fixed_delay{}, dasgd::optim::sgd{.lr = 0.1},
                                  dasgd::merge::mix{});
  const dasgd::tensor_list<const gradient_element> grads(g1, g2);
  trainer.step(grads);
}
