// A parameter list that mixes float and double tensors.
#include <dasgd/dasgd.hpp>

#include <vector>

#if DASGD_COMPILE_FAIL_CONTROL
using second_element = float;
#else
using second_element = double;
#endif

auto parameters(std::vector<float>& a, std::vector<second_element>& b) {
  return dasgd::make_tensor_list(a, b);
}
