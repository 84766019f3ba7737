// The cases of the update benchmark and their byte accounting.
//
// A case is (layout, precision, mode, optimizer):
//   layout     flat_<N>M (one tensor of N * 2^20 elements), resnet50 (161
//              tensors) or gpt2_small (148 tensors), see model_shapes.hpp
//   precision  fp32, fp64 (host only); bf16, fp16: 16-bit storage with an
//              fp32 master copy (GPU only); bf16_nomaster, fp16_nomaster:
//              16-bit storage updated directly, fp32 optimizer state
//   mode       step (plain local step), step_snapshot (+ snapshot write),
//              step_mix (+ merge w = p*w + (1-p)*avg), step_additive
//              (+ merge w = w + avg - snap)
//   optimizer  sgdm (SGD, momentum 0.9: one state) or adamw (two states)
//
// Byte accounting: the bytes the fused pass must move per element, counting
// each stream once per read and once per write (docs/design.md section 2). Let s
// be the storage size and c the compute (state, master) size in bytes:
//   streams             without master           with fp32 master
//   weights             read s + write s          write s (master is the source)
//   master              -                         read c + write c
//   gradient            read s                    read s
//   each state          read c + write c          read c + write c
//   snapshot (mode)     write s                   write s
//   mix: average        read s                    read s
//   additive: avg+snap  read 2s                   read 2s
// fp32 SGD-momentum step: 4+4+4 + 4+4 = 20 B; + snapshot 24 B; mix 24 B;
// additive 28 B; AdamW adds 8 B. bf16 with master, SGD-momentum step:
// 2 (g) + 2 (w) + 8 (master) + 8 (momentum) = 20 B.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <dasgd/core/error.hpp>
#include <dasgd/core/merge_rule.hpp>
#include <dasgd/kernels/stage.hpp>

#include "model_shapes.hpp"

namespace dasgd::bench {

// ---- layouts -----------------------------------------------------------------

struct layout {
  std::string name;
  std::vector<std::size_t> extents;
  std::size_t elements() const { return total_elements(extents); }
  std::size_t tensors() const { return extents.size(); }
};

inline constexpr std::size_t resnet50_tensor_count = 161;
inline constexpr std::size_t resnet50_parameter_count = 25'557'032;
inline constexpr std::size_t gpt2_small_tensor_count = 148;
inline constexpr std::size_t gpt2_small_parameter_count = 124'439'808;

/// Throws unless the generated model lists have their published sizes.
inline void check_model_totals() {
  const auto r = resnet50_parameters();
  const auto g = gpt2_small_parameters();
  DASGD_REQUIRE(r.size() == resnet50_tensor_count &&
                    total_elements(extents_of(r)) == resnet50_parameter_count,
                state_error, "ResNet-50 list has ", r.size(), " tensors and ",
                total_elements(extents_of(r)), " parameters, expected ", resnet50_tensor_count,
                " and ", resnet50_parameter_count);
  DASGD_REQUIRE(g.size() == gpt2_small_tensor_count &&
                    total_elements(extents_of(g)) == gpt2_small_parameter_count,
                state_error, "GPT-2 small list has ", g.size(), " tensors and ",
                total_elements(extents_of(g)), " parameters, expected ", gpt2_small_tensor_count,
                " and ", gpt2_small_parameter_count);
}

/// "flat_16M" -> one tensor of 16 * 2^20 elements; "flat_512K" -> 512 * 2^10;
/// "resnet50", "gpt2_small" -> the model lists.
inline layout make_layout(const std::string& name) {
  if (name == "resnet50") return {name, extents_of(resnet50_parameters())};
  if (name == "gpt2_small") return {name, extents_of(gpt2_small_parameters())};
  constexpr std::string_view prefix = "flat_";
  if (name.size() > prefix.size() + 1 && name.compare(0, prefix.size(), prefix) == 0) {
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - 1);
    const char unit = name.back();
    const bool numeric = !digits.empty() && digits.size() < 7 &&
                         digits.find_first_not_of("0123456789") == std::string::npos;
    if (numeric && (unit == 'M' || unit == 'K')) {
      const std::size_t n = std::stoull(digits) << (unit == 'M' ? 20 : 10);
      if (n > 0) return {name, {n}};
    }
  }
  DASGD_THROW(config_error, "unknown layout '", name,
              "' (expected flat_<N>M, flat_<N>K, resnet50 or gpt2_small)");
}

// ---- precisions --------------------------------------------------------------

enum class precision_key { fp32, fp64, bf16, fp16, bf16_nomaster, fp16_nomaster };

struct precision_info {
  precision_key key;
  const char* name;
  std::size_t storage_bytes;
  std::size_t compute_bytes;
  bool master;
  bool host;  ///< runs in host mode
  bool gpu;   ///< runs in GPU mode
};

inline constexpr precision_info precisions[] = {
    {precision_key::fp32, "fp32", 4, 4, false, true, true},
    {precision_key::fp64, "fp64", 8, 8, false, true, false},
    {precision_key::bf16, "bf16", 2, 4, true, false, true},
    {precision_key::fp16, "fp16", 2, 4, true, false, true},
    {precision_key::bf16_nomaster, "bf16_nomaster", 2, 4, false, false, true},
    {precision_key::fp16_nomaster, "fp16_nomaster", 2, 4, false, false, true},
};

inline const precision_info& precision_by_name(const std::string& name) {
  for (const auto& p : precisions)
    if (name == p.name) return p;
  DASGD_THROW(config_error, "unknown precision '", name,
              "' (expected fp32, fp64, bf16, fp16, bf16_nomaster or fp16_nomaster)");
}

// ---- modes -------------------------------------------------------------------

enum class pass_mode { step, step_snapshot, step_mix, step_additive };

struct mode_info {
  pass_mode key;
  const char* name;
  kernels::stage stages;
  merge_coefficients merge;
};

/// Mix uses the paper's p = 0.25; the coefficients do not change the traffic.
inline constexpr mode_info modes[] = {
    {pass_mode::step, "step", kernels::plain_step, {1.0, 0.0, 0.0}},
    {pass_mode::step_snapshot, "step_snapshot", kernels::step_and_snapshot, {1.0, 0.0, 0.0}},
    {pass_mode::step_mix, "step_mix", kernels::step_and_mix, {0.25, 0.75, 0.0}},
    {pass_mode::step_additive, "step_additive", kernels::step_and_correct, {1.0, 1.0, -1.0}},
};

inline const mode_info& mode_by_name(const std::string& name) {
  for (const auto& m : modes)
    if (name == m.name) return m;
  DASGD_THROW(config_error, "unknown mode '", name,
              "' (expected step, step_snapshot, step_mix or step_additive)");
}

// ---- optimizers --------------------------------------------------------------

enum class optimizer_key { sgdm, adamw };

struct optimizer_info {
  optimizer_key key;
  const char* name;
  int state_count;
};

inline constexpr optimizer_info optimizers[] = {
    {optimizer_key::sgdm, "sgdm", 1},
    {optimizer_key::adamw, "adamw", 2},
};

inline const optimizer_info& optimizer_by_name(const std::string& name) {
  for (const auto& o : optimizers)
    if (name == o.name) return o;
  DASGD_THROW(config_error, "unknown optimizer '", name, "' (expected sgdm or adamw)");
}

// ---- byte accounting -----------------------------------------------------------

/// The streams one fused pass touches, per element, grouped by how they are
/// accessed. Host mode builds its STREAM-like baseline from the same counts,
/// so both loops move exactly the same bytes over the same buffers.
struct stream_counts {
  int storage_read_write = 0;  ///< weights (without master)
  int storage_read = 0;        ///< gradient, average, snapshot (additive)
  int storage_write = 0;       ///< weights (with master), snapshot (snapshot mode)
  int compute_read_write = 0;  ///< optimizer states, master

  std::size_t bytes_per_element(std::size_t storage_bytes, std::size_t compute_bytes) const {
    return storage_bytes * static_cast<std::size_t>(2 * storage_read_write + storage_read +
                                                    storage_write) +
           compute_bytes * static_cast<std::size_t>(2 * compute_read_write);
  }
};

inline stream_counts count_streams(const mode_info& mode, const optimizer_info& opt, bool master) {
  using kernels::has;
  using kernels::stage;
  stream_counts c;
  if (master) {
    c.storage_write = 1;
    c.compute_read_write = 1;
  } else {
    c.storage_read_write = 1;
  }
  c.storage_read = 1;  // gradient
  c.compute_read_write += opt.state_count;
  if (has(mode.stages, stage::write_snapshot)) c.storage_write += 1;
  if (has(mode.stages, stage::merge)) c.storage_read += 1;
  if (has(mode.stages, stage::merge_snapshot)) c.storage_read += 1;
  return c;
}

// ---- cases -------------------------------------------------------------------

struct bench_case {
  const layout* shape;
  const precision_info* precision;
  const mode_info* mode;
  const optimizer_info* optimizer;

  stream_counts streams() const { return count_streams(*mode, *optimizer, precision->master); }
  std::size_t bytes_per_element() const {
    return streams().bytes_per_element(precision->storage_bytes, precision->compute_bytes);
  }
  /// Bytes one pass must move (tensor elements only; arena padding excluded).
  std::size_t bytes() const { return bytes_per_element() * shape->elements(); }
  std::string key() const {
    return shape->name + "/" + precision->name + "/" + mode->name + "/" + optimizer->name;
  }
};

}  // namespace dasgd::bench
