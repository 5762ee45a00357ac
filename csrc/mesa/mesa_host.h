// Host-side argument checking and output allocation shared by the CPU and CUDA registrations of mesa_quantize /
// mesa_dequantize. The Python layer (pyfast/ops/mesa.py) validates first with friendlier messages; these checks
// guard direct torch.ops.pyfast.* callers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <tuple>

#include "common/host.h"
#include "mesa/mesa.h"

namespace pyfast {
namespace mesa {

inline int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  TORCH_CHECK_VALUE(ndim >= 1, op, ": the tensor must have at least one dimension");
  TORCH_CHECK_VALUE(dim >= -ndim && dim < ndim, op, ": dim must be in [", -ndim, ", ", ndim - 1, "], got ", dim);
  return dim < 0 ? dim + ndim : dim;
}

// (outer, G, inner) of the grouped view; checks that G divides x.size(dim).
inline std::tuple<int64_t, int64_t, int64_t> group_shape(const at::Tensor& x, int64_t dim, int64_t groups,
                                                         const char* op) {
  const int64_t d = wrap_dim(dim, x.dim(), op);
  TORCH_CHECK_VALUE(groups >= 1 && x.size(d) % groups == 0, op, ": the number of groups (clip_val.numel() = ", groups,
                    ") must divide x.size(", dim, ") = ", x.size(d));
  int64_t outer = 1, inner = x.size(d) / groups;
  for (int64_t i = 0; i < d; ++i) outer *= x.size(i);
  for (int64_t i = d + 1; i < x.dim(); ++i) inner *= x.size(i);
  return {outer, groups, inner};
}

inline void check_state(const at::Tensor& t, const char* name, const at::Tensor& x, const char* op) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but the input is on ",
                    x.device());
}

inline void check_levels(int64_t levels, const char* op) {
  TORCH_CHECK_VALUE(levels >= 2 && levels <= 256, op, ": levels must be in 2..256, got ", levels);
}

template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_host(const at::Tensor& x_in, const at::Tensor& clip_in,
                                                             const at::Tensor& shift_in, const at::Tensor& init_in,
                                                             const at::Tensor& seed_in, int64_t dim, int64_t levels,
                                                             double ema_decay, bool update, bool stochastic,
                                                             Launch&& launch) {
  const char* op = "mesa_quantize";
  const DType dtype = dtype_of(x_in.scalar_type());
  check_state(clip_in, "clip_val", x_in, op);
  check_state(shift_in, "shift", x_in, op);
  TORCH_CHECK_VALUE(shift_in.numel() == clip_in.numel(), op, ": shift must have clip_val's ", clip_in.numel(),
                    " elements, got ", shift_in.numel());
  TORCH_CHECK_TYPE(init_in.scalar_type() == at::kBool && init_in.numel() == 1, op,
                   ": initialized must be one bool, got ", init_in.scalar_type(), " with ", init_in.numel(),
                   " elements");
  TORCH_CHECK_TYPE(seed_in.scalar_type() == at::kLong && seed_in.numel() == 1, op, ": seed must be one int64, got ",
                   seed_in.scalar_type(), " with ", seed_in.numel(), " elements");
  TORCH_CHECK_VALUE(init_in.device() == x_in.device() && seed_in.device() == x_in.device(), op,
                    ": initialized and seed must be on the input's device ", x_in.device());
  check_levels(levels, op);
  TORCH_CHECK_VALUE(std::isfinite(ema_decay) && ema_decay >= 0.0 && ema_decay <= 1.0, op,
                    ": ema_decay must be in [0, 1], got ", ema_decay);
  const auto [outer, groups, inner] = group_shape(x_in, dim, clip_in.numel(), op);
  const at::Tensor x = x_in.contiguous(), clip = clip_in.contiguous(), shift = shift_in.contiguous();
  const at::Tensor init = init_in.contiguous(), seed = seed_in.contiguous();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kByte));
  at::Tensor clip_out = at::empty(clip_in.sizes(), clip.options());
  at::Tensor shift_out = at::empty(shift_in.sizes(), shift.options());
  QuantArgs a{};
  a.x = x.const_data_ptr();
  a.q = q.mutable_data_ptr<uint8_t>();
  a.clip = clip.const_data_ptr<float>();
  a.shift = shift.const_data_ptr<float>();
  a.initialized = init.const_data_ptr<bool>();
  a.seed = seed.const_data_ptr<int64_t>();
  a.clip_out = clip_out.mutable_data_ptr<float>();
  a.shift_out = shift_out.mutable_data_ptr<float>();
  a.outer = outer;
  a.groups = groups;
  a.inner = inner;
  a.cfg.lam = static_cast<float>(ema_decay);
  a.cfg.one_minus = static_cast<float>(1.0 - ema_decay);
  a.cfg.lm1 = static_cast<float>(levels - 1);
  a.cfg.update = update;
  a.cfg.stochastic = stochastic;
  launch(a, dtype);  // also with no elements: the estimates are still written (kept: no finite value)
  return {q, clip_out, shift_out};
}

template <class Launch>
at::Tensor dequantize_host(const at::Tensor& q_in, const at::Tensor& clip_in, const at::Tensor& shift_in, int64_t dim,
                           int64_t levels, c10::ScalarType out_dtype, Launch&& launch) {
  const char* op = "mesa_dequantize";
  TORCH_CHECK_TYPE(q_in.scalar_type() == at::kByte, op, ": q must be uint8, got ", q_in.scalar_type());
  const DType dtype = dtype_of(out_dtype);
  check_state(clip_in, "clip_val", q_in, op);
  check_state(shift_in, "shift", q_in, op);
  TORCH_CHECK_VALUE(shift_in.numel() == clip_in.numel(), op, ": shift must have clip_val's ", clip_in.numel(),
                    " elements, got ", shift_in.numel());
  check_levels(levels, op);
  const auto [outer, groups, inner] = group_shape(q_in, dim, clip_in.numel(), op);
  const at::Tensor q = q_in.contiguous(), clip = clip_in.contiguous(), shift = shift_in.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));
  DequantArgs a{};
  a.q = q.const_data_ptr<uint8_t>();
  a.clip = clip.const_data_ptr<float>();
  a.shift = shift.const_data_ptr<float>();
  a.out = out.mutable_data_ptr();
  a.outer = outer;
  a.groups = groups;
  a.inner = inner;
  a.lm1 = static_cast<float>(levels - 1);
  a.max_code = static_cast<uint8_t>(levels - 1);
  if (q.numel() > 0) launch(a, dtype);
  return out;
}

}  // namespace mesa
}  // namespace pyfast
