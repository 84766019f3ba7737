// dasgd/adaptors/eigen.hpp: which Eigen types are parameter buffers, and a
// trainer driving Eigen weights takes exactly the steps it takes on
// std::vector weights.
#include <doctest/doctest.h>

#include <dasgd/adaptors/eigen.hpp>
#include <dasgd/dasgd.hpp>

#include <random>
#include <type_traits>
#include <vector>

namespace {

using Eigen::Dynamic;

// Owning types: contiguous, element type = Scalar, host memory.
static_assert(dasgd::parameter_buffer<Eigen::MatrixXf>);
static_assert(dasgd::parameter_buffer<Eigen::VectorXd>);
static_assert(dasgd::parameter_buffer<Eigen::RowVectorXf>);
static_assert(dasgd::parameter_buffer<Eigen::Matrix<float, 3, 5, Eigen::RowMajor>>);
static_assert(dasgd::parameter_buffer<Eigen::ArrayXXf>);
static_assert(dasgd::parameter_buffer<Eigen::Array<double, Dynamic, 1>>);
static_assert(std::is_same_v<dasgd::tensor_value_t<Eigen::MatrixXd>, double>);
static_assert(std::is_same_v<dasgd::tensor_space_t<Eigen::MatrixXf>, dasgd::host_space>);

// Maps with the default (or an explicit unit inner) stride view contiguous memory.
static_assert(dasgd::parameter_buffer<Eigen::Map<Eigen::MatrixXf>>);
static_assert(dasgd::parameter_buffer<Eigen::Map<Eigen::VectorXf, Eigen::Aligned16>>);
static_assert(dasgd::parameter_buffer<Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<1>>>);
static_assert(std::is_same_v<dasgd::tensor_value_t<Eigen::Map<Eigen::MatrixXf>>, float>);
static_assert(std::is_same_v<dasgd::tensor_value_t<Eigen::Map<const Eigen::MatrixXf>>, const float>);

// Non-contiguous views and expressions are refused at compile time.
static_assert(!dasgd::parameter_buffer<Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>>>);
static_assert(!dasgd::parameter_buffer<Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<2>>>);
static_assert(!dasgd::parameter_buffer<Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<>>>);
static_assert(!dasgd::parameter_buffer<Eigen::Block<Eigen::MatrixXf>>);
static_assert(!dasgd::parameter_buffer<Eigen::Block<Eigen::VectorXf>>);  // e.g. segment()
static_assert(!dasgd::parameter_buffer<Eigen::Transpose<Eigen::MatrixXf>>);
static_assert(!dasgd::parameter_buffer<Eigen::Ref<Eigen::MatrixXf>>);
static_assert(!dasgd::parameter_buffer<decltype(Eigen::MatrixXf() + Eigen::MatrixXf())>);

// A list can be built from them, and a const list from const maps.
template <class... Ts>
concept listable = requires(Ts&... ts) { dasgd::make_tensor_list(ts...); };
static_assert(listable<Eigen::MatrixXf, Eigen::VectorXf, Eigen::Map<Eigen::MatrixXf>>);
static_assert(!listable<Eigen::MatrixXf, Eigen::Block<Eigen::MatrixXf>>);

}  // namespace

TEST_CASE("data() and size() are those of the Eigen object") {
  Eigen::MatrixXf m(3, 4);
  Eigen::Matrix<double, 2, 5, Eigen::RowMajor> fixed;
  Eigen::ArrayXXf a(6, 2);
  std::vector<float> storage(12);
  Eigen::Map<Eigen::MatrixXf> map(storage.data(), 4, 3);
  const Eigen::Map<const Eigen::MatrixXf> cmap(storage.data(), 2, 6);
  CHECK(dasgd::tensor_data(m) == m.data());
  CHECK(dasgd::tensor_size(m) == 12);
  CHECK(dasgd::tensor_data(fixed) == fixed.data());
  CHECK(dasgd::tensor_size(fixed) == 10);
  CHECK(dasgd::tensor_size(a) == 12);
  CHECK(dasgd::tensor_data(map) == storage.data());
  CHECK(dasgd::tensor_size(map) == 12);
  CHECK(dasgd::tensor_data(cmap) == storage.data());

  auto list = dasgd::make_tensor_list(m, map);
  REQUIRE(list.size() == 2);
  CHECK(list.data(0) == m.data());
  CHECK(list.extent(1) == 12);
  CHECK(list.total_elements() == 24);
  dasgd::tensor_list<const float> grads(cmap, m);
  CHECK(grads.data(0) == storage.data());
  CHECK(grads.extent(1) == 12);
}

TEST_CASE("DaSGD on Eigen weights is bit-identical to DaSGD on std::vector weights") {
  // Two workers fit a least-squares problem; gradients come from Eigen in
  // both runs, only the container the trainer sees differs.
  constexpr int workers = 2, rows = 5, cols = 3, steps = 23;
  std::mt19937 rng(4);
  std::normal_distribution<float> normal;
  std::vector<Eigen::MatrixXf> targets(workers, Eigen::MatrixXf(rows, cols));
  for (auto& t : targets)
    for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = normal(rng);

  auto train = [&](bool eigen_params) {
    std::vector<Eigen::MatrixXf> result(workers);
    dasgd::comm::inproc_group group(workers);
    dasgd::comm::run_workers(group, [&](dasgd::comm::inproc_communicator comm) {
      const int r = comm.rank();
      Eigen::MatrixXf W = Eigen::MatrixXf::Zero(rows, cols);
      Eigen::VectorXf b = Eigen::VectorXf::Zero(rows);
      std::vector<float> W_vec(rows * cols, 0.0f), b_vec(rows, 0.0f);
      Eigen::MatrixXf gW(rows, cols);
      Eigen::VectorXf gb(rows);
      auto params = eigen_params ? dasgd::make_tensor_list(W, b) : dasgd::make_tensor_list(W_vec, b_vec);
      const dasgd::tensor_list<const float> grads(gW, gb);
      dasgd::delayed_averager trainer(params, comm, dasgd::policy::fixed_delay{4, 1},
                                      dasgd::optim::sgd{.lr = 0.1, .momentum = 0.9},
                                      dasgd::merge::mix{0.25});
      for (int k = 0; k < steps; ++k) {
        const Eigen::Map<const Eigen::MatrixXf> w_now(eigen_params ? W.data() : W_vec.data(), rows, cols);
        const Eigen::Map<const Eigen::VectorXf> b_now(eigen_params ? b.data() : b_vec.data(), rows);
        gW = w_now - targets[static_cast<std::size_t>(r)];
        gb = b_now - Eigen::VectorXf::Constant(rows, static_cast<float>(r + 1));
        trainer.step(grads);
      }
      trainer.synchronize();
      result[static_cast<std::size_t>(r)] =
          eigen_params ? W : Eigen::Map<Eigen::MatrixXf>(W_vec.data(), rows, cols);
    });
    return result;
  };
  const auto with_eigen = train(true);
  const auto with_vector = train(false);
  REQUIRE(with_eigen[0].size() == rows * cols);
  CHECK(with_eigen[0] == with_vector[0]);
  CHECK(with_eigen[1] == with_vector[1]);
  CHECK(with_eigen[0] == with_eigen[1]);  // synchronize() left the workers equal
  // The weights moved toward the mean target (not a no-op run).
  const Eigen::MatrixXf mean_target = (targets[0] + targets[1]) / 2.0f;
  CHECK((with_eigen[0] - mean_target).norm() < 0.5f * mean_target.norm());
}
