// A host trainer given one gradient tensor that lives on a device.
#include <dasgd/dasgd.hpp>

#include <vector>

#if DASGD_COMPILE_FAIL_CONTROL
using gradient_space = dasgd::host_space;
#else
using gradient_space = dasgd::device_space;
#endif

void train(dasgd::comm::inproc_communicator comm, const float* grad) {
  std::vector<float> w(8, 0.0f);
  dasgd::delayed_averager trainer(dasgd::make_tensor_list(w), comm, dasgd::policy::fixed_delay{},
                                  dasgd::optim::sgd{.lr = 0.1}, dasgd::merge::mix{});
  trainer.step(dasgd::raw_buffer<const float, gradient_space>{grad, 8});
}
