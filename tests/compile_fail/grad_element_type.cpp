// float parameters, a double gradient for the single-tensor step().
#include <dasgd/dasgd.hpp>

#include <vector>

#if DASGD_COMPILE_FAIL_CONTROL
using gradient_element = float;
#else
using gradient_element = double;
#endif

void train(dasgd::comm::inproc_communicator comm) {
  std::vector<float> w(8, 0.0f);
  std::vector<gradient_element> g(8, 1);
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), comm, dasgd::policy::fixed_delay{},
                                  dasgd::optim::sgd{.lr = 0.1}, dasgd::merge::mix{});
  trainer.step(g);
}
