// Multi-sample dropout head with averaged cross-entropy (Inoue 2019): the maths shared by the CPU and CUDA kernels
// (torch-free). The GEMMs are ATen's (MKL / cuBLAS), called from msdrop_host.h, and on the CPU forward from
// msdrop_cpu.cpp, which runs the forward per block of rows of X.
//
// h: [B, D] features, W: [C, D], b: [C], y: [B] class indices, M dropout samples, drop probability p < 1.
//   mask     keep(k, i, d) = [hash(seed, (k B + i) D + d) >> 8 >= ceil(p 2^24)],  s = 1 / (1 - p)
//   forward  X_k = h * keep_k * s                       [M B, D] (one matrix: the M masked copies stacked)
//            logits = X W^T + b                         [M B, C] (one GEMM for all samples, or one per block of
//                                                        rows; b added in the cross-entropy pass over each row)
//            lse_r = log sum_c exp(logits_rc),  loss = (1 / (M B)) sum_r (lse_r - logits_r,y_r)
//   backward G = (softmax(logits) - onehot(y)) dloss / (M B)          [M B, C]
//            dW = G^T X (X regenerated from h and the seed: no mask is stored),  db = sum_r G_r
//            dh = sum_k keep_k * s * (G W)_k
// hash: murmur3's 32-bit finaliser of (index xor key), key mixed from the 64-bit seed; the same integer maths in
// the reference, the Triton kernels and here, so every backend drops exactly the same units.
#pragma once

#include "common/dtype.h"

#include <cstdint>

namespace pyfast {
namespace msdrop {

using DType = ::pyfast::DType;

PYFAST_HD uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

PYFAST_HD uint32_t key_of(int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return fmix32(static_cast<uint32_t>(s) ^ fmix32(static_cast<uint32_t>(s >> 32) ^ 0x9e3779b9u));
}

// 1 if unit `index` of the stacked [M, B, D] masks is kept, else 0.
PYFAST_HD uint32_t keep(uint32_t key, uint32_t index, uint32_t threshold) {
  return (fmix32(index ^ key) >> 8) >= threshold ? 1u : 0u;
}

struct MaskArgs {
  const void* in;        // h [B, D] (make_x) or G W [M B, D] (masked_sum)
  void* out;             // X [M B, D] (make_x) or dh [B, D] (masked_sum)
  const int64_t* seed;   // one int64 on the device of h
  int64_t M, B, D;
  uint32_t threshold;    // ceil(p 2^24)
  double scale;          // 1 / (1 - p)
};

struct CeArgs {
  void* logits;           // [R, C], R = M B (h's dtype): X W^T on entry, + bias on exit
  const void* bias;       // [C] in h's dtype, or nullptr
  const int64_t* target;  // [B]; row r uses target[r % B]
  void* lse;              // [R] in A
  void* loss_rows;        // [R] double: lse - logit of the target
  int64_t R, C, B;
};

struct GradArgs {
  const void* logits;     // [R, C]
  const void* lse;        // [R] in A
  const int64_t* target;  // [B]
  const void* grad_loss;  // one value in A
  void* G;                // [R, C] (h's dtype)
  int64_t R, C, B;
};

}  // namespace msdrop
}  // namespace pyfast
