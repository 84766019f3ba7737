#include "idx_dataset.hpp"

#include <zlib.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>

namespace fashion_mnist {

namespace {

constexpr std::uint32_t images_magic = 2051;  // 0x00000803: unsigned byte, 3 dimensions
constexpr std::uint32_t labels_magic = 2049;  // 0x00000801: unsigned byte, 1 dimension

std::uint32_t read_be32(const std::vector<std::uint8_t>& bytes, std::size_t at) {
  return (std::uint32_t{bytes[at]} << 24) | (std::uint32_t{bytes[at + 1]} << 16) |
         (std::uint32_t{bytes[at + 2]} << 8) | std::uint32_t{bytes[at + 3]};
}

void require_header(const std::vector<std::uint8_t>& bytes, std::size_t header_bytes,
                    std::uint32_t magic, const char* kind, const std::string& name) {
  DASGD_REQUIRE(bytes.size() >= header_bytes, dataset_error, name, ": truncated idx ", kind,
                " header (", bytes.size(), " bytes, need ", header_bytes, ")");
  const std::uint32_t got = read_be32(bytes, 0);
  DASGD_REQUIRE(got == magic, dataset_error, name, ": bad idx magic number ", got,
                " (expected ", magic, " for ", kind, "); is this the right file?");
}

void require_payload(const std::vector<std::uint8_t>& bytes, std::size_t header_bytes,
                     std::uint64_t payload, const char* what, const std::string& name) {
  const std::uint64_t have = bytes.size() - header_bytes;
  DASGD_REQUIRE(have >= payload, dataset_error, name, ": truncated: the header announces ",
                payload, " bytes of ", what, " but only ", have, " are present");
  DASGD_REQUIRE(have == payload, dataset_error, name, ": ", have - payload,
                " unexpected bytes after the ", payload, " bytes of ", what);
}

struct gz_closer {
  void operator()(gzFile f) const { gzclose(f); }
};

}  // namespace

std::vector<std::uint8_t> read_gzip_file(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::error_code ec;
  DASGD_REQUIRE(std::filesystem::is_regular_file(path, ec), dataset_error, name,
                ": file not found. Install the Fashion-MNIST files with "
                "`apt-get install dataset-fashion-mnist` (they go to ",
                default_data_dir, ") or point --data-dir at a folder holding them");
  // gzread also passes a file that is not compressed through unchanged.
  std::unique_ptr<gzFile_s, gz_closer> file(gzopen(name.c_str(), "rb"));
  DASGD_REQUIRE(file != nullptr, dataset_error, name, ": cannot open: ", std::strerror(errno));
  std::vector<std::uint8_t> out;
  std::array<std::uint8_t, 1 << 16> chunk{};
  for (;;) {
    const int n = gzread(file.get(), chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int code = 0;
      const char* msg = gzerror(file.get(), &code);
      DASGD_THROW(dataset_error, name, ": corrupt or truncated gzip data: ", msg);
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  // A gzip stream cut short reads as a clean end of file with a pending error.
  int code = 0;
  const char* msg = gzerror(file.get(), &code);
  DASGD_REQUIRE(code == Z_OK || code == Z_STREAM_END, dataset_error, name,
                ": corrupt or truncated gzip data: ", msg);
  return out;
}

Eigen::MatrixXf parse_idx_images(const std::vector<std::uint8_t>& bytes, const std::string& name) {
  constexpr std::size_t header = 16;
  require_header(bytes, header, images_magic, "image file", name);
  const std::uint32_t count = read_be32(bytes, 4);
  const std::uint32_t rows = read_be32(bytes, 8);
  const std::uint32_t cols = read_be32(bytes, 12);
  DASGD_REQUIRE(rows == image_side && cols == image_side, dataset_error, name, ": images are ",
                rows, " x ", cols, ", expected ", image_side, " x ", image_side);
  DASGD_REQUIRE(count > 0, dataset_error, name, ": holds no images");
  require_payload(bytes, header, std::uint64_t{count} * image_pixels, "pixels", name);

  Eigen::MatrixXf images(image_pixels, static_cast<Eigen::Index>(count));
  const std::uint8_t* pixels = bytes.data() + header;
  for (Eigen::Index i = 0; i < images.size(); ++i)
    images.data()[i] = static_cast<float>(pixels[i]) * (1.0f / 255.0f);
  return images;
}

std::vector<std::uint8_t> parse_idx_labels(const std::vector<std::uint8_t>& bytes,
                                           const std::string& name) {
  constexpr std::size_t header = 8;
  require_header(bytes, header, labels_magic, "label file", name);
  const std::uint32_t count = read_be32(bytes, 4);
  DASGD_REQUIRE(count > 0, dataset_error, name, ": holds no labels");
  require_payload(bytes, header, count, "labels", name);
  std::vector<std::uint8_t> labels(bytes.begin() + header, bytes.end());
  for (std::size_t i = 0; i < labels.size(); ++i) {
    DASGD_REQUIRE(labels[i] < class_count, dataset_error, name, ": label ", i, " is ",
                  int{labels[i]}, ", outside [0, ", class_count, ")");
  }
  return labels;
}

labelled_images load_idx_pair(const std::filesystem::path& images_path,
                              const std::filesystem::path& labels_path) {
  labelled_images out;
  out.images = parse_idx_images(read_gzip_file(images_path), images_path.string());
  out.labels = parse_idx_labels(read_gzip_file(labels_path), labels_path.string());
  DASGD_REQUIRE(static_cast<std::size_t>(out.images.cols()) == out.labels.size(), dataset_error,
                images_path.string(), " holds ", out.images.cols(), " images but ",
                labels_path.string(), " holds ", out.labels.size(), " labels");
  return out;
}

fashion_mnist_data load_fashion_mnist(const std::filesystem::path& dir) {
  fashion_mnist_data data;
  data.train = load_idx_pair(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz");
  data.test = load_idx_pair(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz");
  return data;
}

}  // namespace fashion_mnist
