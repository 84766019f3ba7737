// libtorch adaptor: the parameters of a torch::nn::Module (or any list of
// torch::Tensor) as a dasgd parameter list, and their gradients re-read and
// checked at every step.
//
//   auto model = std::make_shared<Net>();
//   dasgd::torch_parameters<float> params(*model);     // names, pointers, checks
//   dasgd::delayed_averager trainer(params.list(), comm, policy, optim, merge);
//   dasgd::torch_broadcast_parameters(trainer, params);  // equal start (like DDP)
//   for (...) {
//     model->zero_grad();                 // set_to_none or not: both are fine
//     loss(model->forward(x), y).backward();
//     dasgd::torch_step(trainer, params);  // replaces optimizer.step()
//   }
//
// What is checked, each failure naming the parameter (module.named_parameters()):
//  - at construction (config_error): the dtype is T's (float -> kFloat,
//    double -> kDouble, and with dasgd's 16-bit types, __half -> kHalf and
//    __nv_bfloat16 -> kBFloat16: same IEEE layouts), every tensor is on one
//    device of the list's memory space (host_space: CPU; device_space: one
//    CUDA device), strided, contiguous, requires_grad, and no two overlap;
//  - at every gradients() / torch_step(): every parameter still uses the
//    memory recorded at construction (state_error when it was re-created or
//    moved, e.g. module->to(device) after construction); every gradient is
//    defined (state_error after zero_grad(set_to_none=true) without a
//    backward()), of the parameter's dtype, device, shape, strided and
//    contiguous. The persistent gradient list is re-bound to the current
//    p.grad() tensors (no allocation): libtorch may give a parameter a new
//    gradient tensor at any step, and set_to_none does so at every step.
// The adaptor holds a reference to each parameter's storage, so even memory
// a parameter has left behind stays valid until the next check reports it:
// dasgd never reads or writes freed memory.
//
// Autograd: dasgd writes the parameters' memory directly, as
// torch::optim::SGD's in-place updates under torch::NoGradGuard do. The
// helpers below run the trainer under a NoGradGuard and then bump each
// parameter's version counter, so a graph recorded before the update and
// backpropagated after it fails with autograd's usual "modified by an
// inplace operation" error instead of using stale values. Calling
// trainer.step(params.gradients()) yourself skips that: call
// params.mark_updated() afterwards.
//
// CUDA tensors: use torch_parameters<T, dasgd::device_space> with a
// cuda_backend on torch's current stream (dasgd/adaptors/torch_cuda.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/utils.h>

#include "../core/error.hpp"
#include "../core/precision.hpp"
#include "../core/tensor.hpp"
#include "../core/tensor_list.hpp"
#include "../core/trainer_options.hpp"

namespace dasgd {

namespace detail {

template <class T>
struct torch_scalar_type_of {};
template <>
struct torch_scalar_type_of<float> {
  static constexpr c10::ScalarType value = c10::ScalarType::Float;
};
template <>
struct torch_scalar_type_of<double> {
  static constexpr c10::ScalarType value = c10::ScalarType::Double;
};
#if defined(DASGD_HAS_CUDA_TYPES)
// c10::Half and __half are both one IEEE binary16 in 16 bits, c10::BFloat16
// and __nv_bfloat16 the upper half of a binary32: the memory is the same.
static_assert(sizeof(c10::Half) == sizeof(__half) && sizeof(c10::BFloat16) == sizeof(__nv_bfloat16));
template <>
struct torch_scalar_type_of<__half> {
  static constexpr c10::ScalarType value = c10::ScalarType::Half;
};
template <>
struct torch_scalar_type_of<__nv_bfloat16> {
  static constexpr c10::ScalarType value = c10::ScalarType::BFloat16;
};
#endif

template <class Space>
struct torch_device_of {};
template <>
struct torch_device_of<host_space> {
  static constexpr c10::DeviceType value = c10::DeviceType::CPU;
  static constexpr const char* hint =
      "; a torch_parameters<T, dasgd::host_space> needs CPU tensors (CUDA tensors: "
      "torch_parameters<T, dasgd::device_space> with a cuda_backend)";
};
template <>
struct torch_device_of<device_space> {
  static constexpr c10::DeviceType value = c10::DeviceType::CUDA;
  static constexpr const char* hint =
      "; a torch_parameters<T, dasgd::device_space> needs CUDA tensors (CPU tensors: "
      "torch_parameters<T> with the host backend)";
};

inline std::string torch_shape(const at::Tensor& t) {
  std::string s = "[";
  for (std::size_t i = 0; i < t.sizes().size(); ++i)
    s += (i ? ", " : "") + std::to_string(t.sizes()[i]);
  return s + "]";
}

}  // namespace detail

/// The torch dtype of dasgd storage type T (float, double; __half and
/// __nv_bfloat16 where dasgd's 16-bit types are enabled).
template <class T>
inline constexpr c10::ScalarType torch_scalar_type_v = detail::torch_scalar_type_of<T>::value;

/// A model's parameters for dasgd: the tensor_list the trainer is built
/// over, and each step's gradients, re-read and checked (see the top of
/// this file). T is the storage type; all parameters must have its dtype.
template <class T, class Space = host_space>
  requires storage_type<T>
class torch_parameters {
 public:
  using value_type = T;
  using memory_space = Space;
  using params_type = tensor_list<T, Space>;
  using grads_type = tensor_list<const T, Space>;

  /// Every parameter of `module` and its submodules, in named_parameters()
  /// order, under its dotted name ("conv1.weight").
  explicit torch_parameters(const torch::nn::Module& module) : module_(&module) {
    std::vector<at::Tensor> tensors;
    std::vector<std::string> names;
    for (const auto& item : module.named_parameters(/*recurse=*/true)) {
      names.push_back(item.key());
      tensors.push_back(item.value());
    }
    DASGD_REQUIRE(!tensors.empty(), config_error, "module '", module.name(),
                  "' has no parameters");
    init(std::move(tensors), std::move(names));
  }

  /// Given tensors (e.g. only the trainable ones), named "0", "1"... or by
  /// `names` (one per tensor).
  explicit torch_parameters(std::vector<at::Tensor> tensors, std::vector<std::string> names = {}) {
    DASGD_REQUIRE(names.empty() || names.size() == tensors.size(), config_error,
                  "torch_parameters: ", tensors.size(), " tensors but ", names.size(), " names");
    if (names.empty())
      for (std::size_t i = 0; i < tensors.size(); ++i) names.push_back(std::to_string(i));
    DASGD_REQUIRE(!tensors.empty(), config_error, "torch_parameters: no tensors given");
    init(std::move(tensors), std::move(names));
  }

  // The lists point into this object's records: no copies or moves.
  torch_parameters(const torch_parameters&) = delete;
  torch_parameters& operator=(const torch_parameters&) = delete;

  /// The parameters, for delayed_averager's constructor (it copies the list).
  const params_type& list() const noexcept { return params_; }

  /// This step's gradients: checks every parameter (check_memory()) and
  /// every gradient, and re-binds the persistent list to the current
  /// p.grad() tensors. Holds a reference to each gradient until the next
  /// call, so the list stays valid even if autograd replaces a gradient.
  const grads_type& gradients() {
    check_memory();
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      const auto& e = entries_[i];
      const at::Tensor& g = e.tensor.grad();
      DASGD_REQUIRE(g.defined(), state_error, "parameter '", e.name,
                    "' has no gradient (zero_grad(set_to_none=true) or no backward() this step); "
                    "run backward() before the step, or give it zeros");
      DASGD_REQUIRE(g.scalar_type() == e.dtype, config_error, "the gradient of parameter '",
                    e.name, "' has dtype ", c10::toString(g.scalar_type()), " but the parameter has ",
                    c10::toString(e.dtype));
      DASGD_REQUIRE(g.device() == device_, config_error, "the gradient of parameter '", e.name,
                    "' is on ", g.device().str(), " but the parameter is on ", device_.str());
      DASGD_REQUIRE(g.layout() == c10::kStrided, config_error, "the gradient of parameter '",
                    e.name, "' is not a dense tensor (layout ", g.layout(),
                    "; sparse gradients, e.g. Embedding(sparse=true), are not supported)");
      DASGD_REQUIRE(g.numel() == e.numel && g.sizes() == e.tensor.sizes(), size_mismatch_error,
                    "the gradient of parameter '", e.name, "' has shape ", detail::torch_shape(g),
                    " but the parameter has ", detail::torch_shape(e.tensor));
      DASGD_REQUIRE(g.is_contiguous(), config_error, "the gradient of parameter '", e.name,
                    "' is not contiguous (strides ", g.strides(),
                    "); dasgd reads each gradient as one contiguous block");
      grad_refs_[i] = g;  // a handle: no allocation
      grads_.rebind(i, static_cast<const T*>(g.data_ptr()), static_cast<std::size_t>(e.numel));
    }
    return grads_;
  }

  /// Throws state_error unless every parameter still uses the memory (data
  /// pointer, element count, dtype, device) recorded at construction. A
  /// parameter that moved (module->to(), set_data(), a changed dtype) or
  /// was resized would otherwise leave the trainer updating memory the
  /// model no longer uses. Allocation-free; gradients() calls it.
  void check_memory() const {
    for (const auto& e : entries_) {
      const at::Tensor& p = e.tensor;
      const bool same = p.defined() && p.data_ptr() == e.data && p.numel() == e.numel &&
                        p.scalar_type() == e.dtype && p.device() == device_;
      if (!same)
        DASGD_THROW(state_error, "parameter '", e.name,
                    "' no longer uses the memory dasgd was built over (it was ",
                    c10::toString(e.dtype), " on ", device_.str(), " at ", e.data, ", ", e.numel,
                    " elements; it is now ", describe(p),
                    "): it was moved or re-created (module->to(), set_data(), a new dtype) after "
                    "the torch_parameters and the trainer were constructed; construct both after "
                    "the model is on its device and in its dtype");
    }
  }

  /// check_memory(), and, for a list built from a module, that the module
  /// still has exactly the recorded parameters (none replaced by another
  /// tensor, added or removed). Re-reads named_parameters(), which
  /// allocates: call it after changing the model, not every step. The
  /// helpers below call it around synchronize() and broadcast_parameters().
  void check_parameters() const {
    check_memory();
    if (module_ == nullptr) return;
    const auto now = module_->named_parameters(/*recurse=*/true);
    DASGD_REQUIRE(now.size() == entries_.size(), state_error, "the module now has ", now.size(),
                  " parameters but dasgd was built over ", entries_.size(),
                  "; construct the torch_parameters and the trainer after the model is complete");
    std::size_t i = 0;
    for (const auto& item : now) {
      const auto& e = entries_[i++];
      DASGD_REQUIRE(item.key() == e.name && item.value().unsafeGetTensorImpl() ==
                                                e.tensor.unsafeGetTensorImpl(),
                    state_error, "the module's parameter '", item.key(),
                    "' is not the tensor dasgd was built over (it was '", e.name,
                    "'): a registered parameter was replaced; construct the torch_parameters "
                    "and the trainer after the model is complete");
    }
  }

  /// Bumps every parameter's autograd version counter (the trainer wrote
  /// them in place). The helpers below call it after each trainer call.
  void mark_updated() {
    for (auto& e : entries_) e.tensor.unsafeGetTensorImpl()->bump_version();
  }

  std::size_t size() const noexcept { return entries_.size(); }
  const std::string& name(std::size_t i) const { return entries_.at(i).name; }
  const at::Tensor& tensor(std::size_t i) const { return entries_.at(i).tensor; }
  /// The device every parameter is on.
  const c10::Device& device() const noexcept { return device_; }

 private:
  struct entry {
    std::string name;
    at::Tensor tensor;     ///< the parameter itself (same TensorImpl as the module's)
    c10::Storage storage;  ///< keeps the recorded memory alive
    void* data = nullptr;
    std::int64_t numel = 0;
    c10::ScalarType dtype = c10::ScalarType::Undefined;
  };

  static std::string describe(const at::Tensor& p) {
    if (!p.defined()) return "undefined";
    return detail::concat(c10::toString(p.scalar_type()), " on ", p.device().str(), " at ",
                          p.data_ptr(), ", ", p.numel(), " elements");
  }

  void init(std::vector<at::Tensor> tensors, std::vector<std::string> names) {
    using dev = detail::torch_device_of<Space>;
    constexpr c10::ScalarType want = torch_scalar_type_v<T>;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const at::Tensor& p = tensors[i];
      const std::string& n = names[i];
      DASGD_REQUIRE(p.defined(), config_error, "parameter '", n, "' is an undefined tensor");
      DASGD_REQUIRE(p.scalar_type() == want, config_error, "parameter '", n, "' has dtype ",
                    c10::toString(p.scalar_type()), " but torch_parameters<", type_id<T>::name,
                    "> needs ", c10::toString(want),
                    " (convert the model first, e.g. module->to(torch::k", c10::toString(want),
                    "), or use the matching storage type)");
      DASGD_REQUIRE(p.device().type() == dev::value, config_error, "parameter '", n, "' is on ",
                    p.device().str(), dev::hint);
      if (i == 0) device_ = p.device();
      DASGD_REQUIRE(p.device() == device_, config_error, "parameter '", n, "' is on ",
                    p.device().str(), " but parameter '", names[0], "' is on ", device_.str(),
                    "; all parameters of one trainer must be on one device");
      DASGD_REQUIRE(p.layout() == c10::kStrided, config_error, "parameter '", n,
                    "' is not a dense tensor (layout ", p.layout(), ")");
      DASGD_REQUIRE(p.is_contiguous(), config_error, "parameter '", n,
                    "' is not contiguous (shape ", detail::torch_shape(p), ", strides ", p.strides(),
                    "); dasgd updates each parameter as one contiguous block");
      DASGD_REQUIRE(p.requires_grad(), config_error, "parameter '", n,
                    "' does not require grad (frozen): it would never get a gradient; build the "
                    "torch_parameters from the trainable tensors only");
      DASGD_REQUIRE(!p.is_inference(), config_error, "parameter '", n,
                    "' is an inference tensor (created under InferenceMode)");
      entries_.push_back(entry{n, p, p.storage(), p.data_ptr(), p.numel(), want});
    }
    // Two names for one memory (a shared parameter registered twice, or
    // overlapping views) would be updated and averaged twice.
    std::vector<std::size_t> order(entries_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    const auto begin = [&](std::size_t i) { return reinterpret_cast<std::uintptr_t>(entries_[i].data); };
    const auto end = [&](std::size_t i) {
      return begin(i) + static_cast<std::uintptr_t>(entries_[i].numel) * sizeof(T);
    };
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return begin(a) < begin(b); });
    for (std::size_t j = 1; j < order.size(); ++j) {
      const std::size_t a = order[j - 1], b = order[j];
      if (entries_[a].numel == 0 || entries_[b].numel == 0) continue;
      DASGD_REQUIRE(end(a) <= begin(b), config_error, "parameters '", entries_[a].name, "' and '",
                    entries_[b].name,
                    "' share memory (a parameter listed twice, or overlapping views); list each "
                    "tensor once");
    }
    grad_refs_.resize(entries_.size());
    for (auto& e : entries_) {
      params_.add(static_cast<T*>(e.data), static_cast<std::size_t>(e.numel));
      // Placeholders until gradients() binds the real ones.
      grads_.add(static_cast<const T*>(e.data), static_cast<std::size_t>(e.numel));
    }
  }

  const torch::nn::Module* module_ = nullptr;
  std::vector<entry> entries_;
  std::vector<at::Tensor> grad_refs_;
  c10::Device device_{c10::DeviceType::CPU};
  params_type params_;
  grads_type grads_;
};

namespace detail {
template <class Trainer, class T, class Space>
void require_trainer_over(const Trainer& trainer, const torch_parameters<T, Space>& params) {
  const auto& mine = params.list();
  const auto& its = trainer.parameters();
  bool same = mine.size() == its.size();
  for (std::size_t i = 0; same && i < mine.size(); ++i)
    same = static_cast<const void*>(mine.data(i)) == static_cast<const void*>(its.data(i)) &&
           mine.extent(i) == its.extent(i);
  DASGD_REQUIRE(same, config_error,
                "the trainer was not built over these torch_parameters (construct it with "
                "params.list())");
}
}  // namespace detail

/// One training step, replacing optimizer.step(): checks the parameters
/// and gradients (gradients()), runs trainer.step() under a NoGradGuard
/// and bumps the parameters' version counters.
template <class Trainer, class T, class Space>
step_report torch_step(Trainer& trainer, torch_parameters<T, Space>& params) {
  detail::require_trainer_over(trainer, params);
  const auto& grads = params.gradients();
  step_report rep;
  {
    torch::NoGradGuard no_grad;
    rep = trainer.step(grads);
  }
  params.mark_updated();
  return rep;
}

/// trainer.synchronize() (every worker gets the average model, e.g. before
/// evaluation) after check_parameters(); returns its result.
template <class Trainer, class T, class Space>
bool torch_synchronize(Trainer& trainer, torch_parameters<T, Space>& params) {
  detail::require_trainer_over(trainer, params);
  params.check_parameters();
  bool merged = false;
  {
    torch::NoGradGuard no_grad;
    merged = trainer.synchronize();
  }
  params.mark_updated();
  return merged;
}

/// trainer.broadcast_parameters(root) after check_parameters(): every
/// worker starts from rank `root`'s weights (differently seeded replicas
/// become equal, as DistributedDataParallel's constructor does).
template <class Trainer, class T, class Space>
void torch_broadcast_parameters(Trainer& trainer, torch_parameters<T, Space>& params, int root = 0) {
  detail::require_trainer_over(trainer, params);
  params.check_parameters();
  {
    torch::NoGradGuard no_grad;
    trainer.broadcast_parameters(root);
  }
  params.mark_updated();
}

}  // namespace dasgd
