// The idx reader against small well-formed and malformed files written here.
#include <doctest/doctest.h>
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "idx_dataset.hpp"

namespace fs = std::filesystem;
using fashion_mnist::dataset_error;
using bytes = std::vector<std::uint8_t>;

namespace {

/// A fresh folder per test case, removed afterwards.
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("dasgd_idx_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path operator/(const std::string& name) const { return path / name; }
};

void put_be32(bytes& b, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<std::uint8_t>(v >> shift));
}

/// An idx3 image file: `count` images of rows x cols; pixel i of image n is (n * 7 + i) % 256.
bytes image_file(std::uint32_t count, std::uint32_t rows = 28, std::uint32_t cols = 28,
                 std::uint32_t magic = 2051) {
  bytes b;
  put_be32(b, magic);
  put_be32(b, count);
  put_be32(b, rows);
  put_be32(b, cols);
  for (std::uint32_t n = 0; n < count; ++n)
    for (std::uint32_t i = 0; i < rows * cols; ++i) b.push_back(static_cast<std::uint8_t>((n * 7 + i) % 256));
  return b;
}

bytes label_file(const bytes& labels, std::uint32_t magic = 2049) {
  bytes b;
  put_be32(b, magic);
  put_be32(b, static_cast<std::uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

void write_gzip(const fs::path& path, const bytes& content) {
  gzFile f = gzopen(path.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, content.data(), static_cast<unsigned>(content.size())) ==
          static_cast<int>(content.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

void write_plain(const fs::path& path, const bytes& content) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(content.data()), static_cast<std::streamsize>(content.size()));
  REQUIRE(out.good());
}

/// The first n bytes of b (a copy: shrinking with resize() trips a GCC 12
/// -Wstringop-overflow false positive under -O3 and sanitizers).
bytes first_bytes(const bytes& b, std::size_t n) {
  REQUIRE(n <= b.size());
  return bytes(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
}

bytes read_plain(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return bytes(std::istreambuf_iterator<char>(in), {});
}

/// The message of the dataset_error `f` throws (fails the test if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const dataset_error& e) {
    return e.what();
  }
  FAIL("no dataset_error was thrown");
  return {};
}

}  // namespace

TEST_CASE("a well-formed gzip'd pair loads with pixels scaled to [0, 1], one image per column") {
  temp_dir dir;
  write_gzip(dir / "img.gz", image_file(3));
  write_gzip(dir / "lab.gz", label_file({9, 0, 4}));
  const auto set = fashion_mnist::load_idx_pair(dir / "img.gz", dir / "lab.gz");
  REQUIRE(set.size() == 3);
  REQUIRE(set.images.rows() == 784);
  REQUIRE(set.images.cols() == 3);
  CHECK(set.labels == bytes{9, 0, 4});
  for (int n = 0; n < 3; ++n)
    for (int i : {0, 1, 100, 783})
      CHECK(set.images(i, n) == doctest::Approx(((n * 7 + i) % 256) / 255.0));
  CHECK(set.images.minCoeff() >= 0.0f);
  CHECK(set.images.maxCoeff() == doctest::Approx(1.0));  // pixel value 255 occurs
}

TEST_CASE("an uncompressed idx file is read as well") {
  temp_dir dir;
  write_plain(dir / "img", image_file(2));
  write_plain(dir / "lab", label_file({1, 2}));
  const auto set = fashion_mnist::load_idx_pair(dir / "img", dir / "lab");
  CHECK(set.size() == 2);
  CHECK(set.images(5, 1) == doctest::Approx(12 / 255.0));
}

TEST_CASE("a missing file names its path and the package that provides it") {
  temp_dir dir;
  const auto msg = error_of([&] { fashion_mnist::read_gzip_file(dir / "absent.gz"); });
  CHECK(msg.find("absent.gz") != std::string::npos);
  CHECK(msg.find("apt-get install dataset-fashion-mnist") != std::string::npos);
  const auto all = error_of([&] { fashion_mnist::load_fashion_mnist(dir.path); });
  CHECK(all.find("train-images-idx3-ubyte.gz") != std::string::npos);
}

TEST_CASE("a bad magic number is reported with the value found") {
  temp_dir dir;
  write_gzip(dir / "img.gz", image_file(2, 28, 28, /*magic=*/2049));
  write_gzip(dir / "lab.gz", label_file({1, 2}, /*magic=*/2051));
  const auto img = error_of([&] {
    fashion_mnist::parse_idx_images(fashion_mnist::read_gzip_file(dir / "img.gz"), "img.gz");
  });
  CHECK(img.find("bad idx magic number 2049") != std::string::npos);
  const auto lab = error_of([&] {
    fashion_mnist::parse_idx_labels(fashion_mnist::read_gzip_file(dir / "lab.gz"), "lab.gz");
  });
  CHECK(lab.find("bad idx magic number 2051") != std::string::npos);
}

TEST_CASE("images that are not 28 x 28 are rejected") {
  const auto msg = error_of([] { fashion_mnist::parse_idx_images(image_file(2, 28, 27), "x"); });
  CHECK(msg.find("28 x 27") != std::string::npos);
}

TEST_CASE("truncated headers and payloads are reported with the sizes") {
  SUBCASE("image header") {
    const bytes b = first_bytes(image_file(1), 10);
    CHECK(error_of([&] { fashion_mnist::parse_idx_images(b, "x"); }).find("truncated idx image file header") !=
          std::string::npos);
  }
  SUBCASE("label header") {
    const bytes b = first_bytes(label_file({1}), 6);
    CHECK(error_of([&] { fashion_mnist::parse_idx_labels(b, "x"); }).find("truncated idx label file header") !=
          std::string::npos);
  }
  SUBCASE("image payload") {
    const bytes full = image_file(3);
    const bytes b = first_bytes(full, full.size() - 100);
    const auto msg = error_of([&] { fashion_mnist::parse_idx_images(b, "x"); });
    CHECK(msg.find("announces 2352 bytes") != std::string::npos);
    CHECK(msg.find("only 2252") != std::string::npos);
  }
  SUBCASE("label payload") {
    const bytes full = label_file({1, 2, 3});
    const bytes b = first_bytes(full, full.size() - 1);
    CHECK(error_of([&] { fashion_mnist::parse_idx_labels(b, "x"); }).find("truncated") != std::string::npos);
  }
  SUBCASE("trailing bytes") {
    bytes b = image_file(1);
    b.push_back(0);
    CHECK(error_of([&] { fashion_mnist::parse_idx_images(b, "x"); }).find("1 unexpected bytes") !=
          std::string::npos);
  }
}

TEST_CASE("a gzip stream cut short is an error, not a short read") {
  temp_dir dir;
  write_gzip(dir / "full.gz", image_file(20));
  const bytes compressed = read_plain(dir / "full.gz");
  REQUIRE(compressed.size() > 64);
  write_plain(dir / "cut.gz", first_bytes(compressed, compressed.size() / 2));
  const auto msg = error_of([&] { fashion_mnist::read_gzip_file(dir / "cut.gz"); });
  CHECK(msg.find("corrupt or truncated gzip data") != std::string::npos);
}

TEST_CASE("labels outside the ten classes are rejected") {
  const auto msg = error_of([] { fashion_mnist::parse_idx_labels(label_file({3, 10, 2}), "x"); });
  CHECK(msg.find("label 1 is 10") != std::string::npos);
}

TEST_CASE("image and label counts must agree") {
  temp_dir dir;
  write_gzip(dir / "img.gz", image_file(3));
  write_gzip(dir / "lab.gz", label_file({1, 2, 3, 4}));
  const auto msg = error_of([&] { fashion_mnist::load_idx_pair(dir / "img.gz", dir / "lab.gz"); });
  CHECK(msg.find("holds 3 images") != std::string::npos);
  CHECK(msg.find("holds 4 labels") != std::string::npos);
}

TEST_CASE("the installed Fashion-MNIST files, when present, have the published shape") {
  const fs::path dir = fashion_mnist::default_data_dir;
  if (!fs::exists(dir / "t10k-images-idx3-ubyte.gz")) {
    MESSAGE("dataset-fashion-mnist not installed: nothing to check");
    return;
  }
  const auto data = fashion_mnist::load_fashion_mnist(dir);
  CHECK(data.train.size() == 60000);
  CHECK(data.test.size() == 10000);
  // Both sets are balanced: 6000 and 1000 images per class.
  std::vector<int> train_counts(10), test_counts(10);
  for (auto l : data.train.labels) ++train_counts[l];
  for (auto l : data.test.labels) ++test_counts[l];
  for (int c = 0; c < 10; ++c) {
    CHECK(train_counts[c] == 6000);
    CHECK(test_counts[c] == 1000);
  }
  CHECK(data.train.images.minCoeff() == 0.0f);
  CHECK(data.train.images.maxCoeff() == 1.0f);
}
