// The NCCL communicator and the Thrust adaptor under the host compiler:
// they are plain C++ over the CUDA runtime and NCCL, usable from .cpp
// files. Checks that need no device.
#include <doctest/doctest.h>

#include <dasgd/adaptors/thrust.hpp>
#include <dasgd/kernels/cuda/parameter_arena.hpp>

#include <chrono>
#include <string>
#include <type_traits>

#if defined(DASGD_HAS_NCCL)
#include <dasgd/comm/nccl.hpp>

static_assert(dasgd::communicator<dasgd::comm::nccl_communicator, float>);
static_assert(dasgd::communicator<dasgd::comm::nccl_communicator, double>);
static_assert(dasgd::communicator<dasgd::comm::nccl_communicator, __half>);
static_assert(dasgd::communicator<dasgd::comm::nccl_communicator, __nv_bfloat16>);
static_assert(std::is_same_v<dasgd::comm_memory_space_t<dasgd::comm::nccl_communicator>,
                             dasgd::device_space>);
static_assert(dasgd::comm::detail::nccl_type<__nv_bfloat16>() == ncclBfloat16);
static_assert(dasgd::comm::detail::nccl_type<__half>() == ncclFloat16);
static_assert(dasgd::comm::detail::nccl_type<double>() == ncclFloat64);
// Requests are move-only: dropping one waits until its collective is issued.
static_assert(std::is_nothrow_move_constructible_v<dasgd::comm::nccl_request>);
static_assert(!std::is_copy_constructible_v<dasgd::comm::nccl_request>);

TEST_CASE("nccl_communicator rejects a null communicator before touching the device") {
  try {
    dasgd::comm::nccl_communicator c(nullptr, nullptr);
    FAIL("no exception");
  } catch (const dasgd::config_error& e) {
    CHECK(std::string(e.what()).find("ncclComm_t is null") != std::string::npos);
  }
}

TEST_CASE("nccl_communicator::bootstrap and split check their arguments before any NCCL call") {
  bool called = false;
  auto bcast = [&](void*, std::size_t) { called = true; };
  CHECK_THROWS_AS(dasgd::comm::nccl_communicator::bootstrap(2, 2, bcast, nullptr), dasgd::config_error);
  CHECK_THROWS_AS(dasgd::comm::nccl_communicator::bootstrap(-1, 2, bcast, nullptr), dasgd::config_error);
  dasgd::comm::nccl_options o;
  o.timeout = std::chrono::milliseconds(0);
  CHECK_THROWS_AS(dasgd::comm::nccl_communicator::bootstrap(0, 1, bcast, nullptr, o), dasgd::config_error);
  CHECK_FALSE(called);
  CHECK_THROWS_AS(dasgd::comm::nccl_communicator::split(nullptr, nullptr), dasgd::config_error);
}
#endif

static_assert(dasgd::parameter_buffer<thrust::device_vector<float>>);
static_assert(dasgd::parameter_buffer<thrust::host_vector<__half>>);
static_assert(std::is_same_v<dasgd::tensor_space_t<thrust::device_vector<float>>, dasgd::device_space>);
static_assert(std::is_same_v<dasgd::tensor_space_t<thrust::host_vector<float>>, dasgd::host_space>);
static_assert(std::is_same_v<dasgd::tensor_value_t<thrust::device_vector<__nv_bfloat16>>, __nv_bfloat16>);

TEST_CASE("thrust host_vector and device pointers are parameter buffers") {
  thrust::host_vector<float> h(5, 1.0f);
  auto list = dasgd::make_tensor_list(h);
  CHECK(list.size() == 1);
  CHECK(list.data(0) == thrust::raw_pointer_cast(h.data()));
  CHECK(list.extent(0) == 5);
  float fake[3] = {};
  const auto v = dasgd::device_view(thrust::device_ptr<float>(fake), 3);
  CHECK(v.ptr == fake);
  CHECK(v.count == 3);
  dasgd::tensor_list<float, dasgd::device_space> dl;
  auto vv = v;
  dl.add(vv);
  CHECK(dl.total_elements() == 3);
}
