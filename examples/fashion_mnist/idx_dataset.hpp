// Reader for the idx files of (Fashion-)MNIST, gzip'd or plain.
//
// idx format: a big-endian header, then raw unsigned bytes.
//   images: magic 2051, count, rows, cols, then count * rows * cols pixels
//   labels: magic 2049, count, then count labels
// Every way a file can be wrong (missing, not gzip, bad magic, wrong image
// size, truncated or trailing data, a label out of range, image and label
// counts that differ) raises dataset_error naming the file and the value.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <Eigen/Core>

#include <dasgd/core/error.hpp>

namespace fashion_mnist {

/// A dataset file is missing or malformed.
class dataset_error : public dasgd::error {
  using dasgd::error::error;
};

inline constexpr int image_side = 28;
inline constexpr int image_pixels = image_side * image_side;
inline constexpr int class_count = 10;

/// Where Debian's dataset-fashion-mnist package installs the files.
inline const char* const default_data_dir = "/usr/share/datasets/fashion-mnist";

/// Images as columns (image_pixels x count, values in [0, 1]) and their labels.
struct labelled_images {
  Eigen::MatrixXf images;
  std::vector<std::uint8_t> labels;
  std::size_t size() const { return labels.size(); }
};

/// The whole decompressed content of a gzip (or plain) file.
std::vector<std::uint8_t> read_gzip_file(const std::filesystem::path& path);

/// Parses an idx3 image file (28 x 28 images) into columns scaled to [0, 1].
Eigen::MatrixXf parse_idx_images(const std::vector<std::uint8_t>& bytes, const std::string& name);

/// Parses an idx1 label file; every label must be < class_count.
std::vector<std::uint8_t> parse_idx_labels(const std::vector<std::uint8_t>& bytes,
                                           const std::string& name);

/// Reads an image file and a label file and checks that their counts agree.
labelled_images load_idx_pair(const std::filesystem::path& images_path,
                              const std::filesystem::path& labels_path);

struct fashion_mnist_data {
  labelled_images train;
  labelled_images test;
};

/// Loads train-* and t10k-*-idx?-ubyte.gz from `dir`.
fashion_mnist_data load_fashion_mnist(const std::filesystem::path& dir);

}  // namespace fashion_mnist
