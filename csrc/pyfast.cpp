// The one TORCH_LIBRARY block of pyfast: every operator schema lives here, so `grep m.def csrc/pyfast.cpp` lists
// the whole op surface. Kernels register per device in csrc/<op>/<op>_{cpu,cuda}.cpp; fake (meta) kernels and
// autograd are registered from Python in pyfast/ops/<op>.py, except lif_fwd's autograd (csrc/lif/lif_autograd.cpp,
// C++ for the host time of a GPU step). The ops with no derivative of their own (the backward ops among them) get
// torch's not-implemented autograd kernel at the end of this file.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY(pyfast, m) {
  // LIF / IF spiking neuron (csrc/lif/lif.h has the maths). x: [T, *]; k = 1/tau and v_th: float32 with 1 or
  // N = x[0].numel() elements. Returns spikes [T, *], h_seq [T, *] (the charged membrane, saved for backward;
  // shape [0] when store_h is false) and the final membrane v_last [*].
  m.def(
      "lif_fwd(Tensor x, Tensor? v0, Tensor k, Tensor v_th, float? v_reset, bool decay_input, str surrogate, "
      "float alpha, bool detach_reset, bool store_h) -> (Tensor spikes, Tensor h_seq, Tensor v_last)");
  // BPTT backward of lif_fwd. x is read only for grad_k with decay_input. grad_k / grad_v_th have the shapes of
  // k / v_th, or shape [0] when not requested.
  m.def(
      "lif_bwd(Tensor grad_spikes, Tensor? grad_v_last, Tensor h_seq, Tensor? x, Tensor? v0, Tensor k, Tensor v_th, "
      "float? v_reset, bool decay_input, str surrogate, float alpha, bool detach_reset, bool need_grad_k, "
      "bool need_grad_v_th) -> (Tensor grad_x, Tensor grad_v0, Tensor grad_k, Tensor grad_v_th)");

  // Weighted convolution (csrc/wconv/wconv.h has the maths): the density-weight op W~ = W * Phi, Phi the outer
  // product of the per-axis alpha = [den, 1, reversed(den)]. weight: [C_out, C_in/groups, K...] with 1-3 odd kernel
  // axes; den: 1-D, one den per axis concatenated (sum (K_a-1)/2 values) or one shared by every axis of a
  // hypercubic kernel ((K-1)/2 values). Returns W~ (weight's shape and dtype, contiguous). The convolution itself is
  // ATen's, on W~.
  m.def("wconv_weight_fwd(Tensor weight, Tensor den) -> Tensor");
  // Backward of wconv_weight_fwd: grad_weight = grad * Phi; grad_den from the mirrored per-tap sums of grad * weight
  // (weight is read only for grad_den). Outputs not requested have shape [0].
  m.def(
      "wconv_weight_bwd(Tensor grad, Tensor? weight, Tensor den, bool need_grad_weight, bool need_grad_den) -> "
      "(Tensor grad_weight, Tensor grad_den)");

  // Mesa group-wise 8-bit activation storage (csrc/mesa/mesa.h has the maths). x is grouped as [outer, G, inner]
  // around axis `dim` with G = clip_val.numel() (one group per head for [B, H, N, D] and dim=1, G channel chunks
  // for [..., C] and dim=-1). clip_val / shift: float32 running range and minimum [G]; initialized: one bool (false:
  // the batch statistics replace the estimates); seed: one int64 for the counter-based stochastic rounding. The
  // updated estimates are returned (clip_val_out, shift_out), never written into the inputs: the op is functional.
  // q: uint8 codes of x's shape in [0, levels - 1].
  m.def(
      "mesa_quantize(Tensor x, Tensor clip_val, Tensor shift, Tensor initialized, Tensor seed, int dim, int levels, "
      "float ema_decay, bool update, bool stochastic) -> (Tensor q, Tensor clip_val_out, Tensor shift_out)");
  // x_hat = q / s + shift with s = (levels - 1) / clip_val per group, in dtype.
  m.def("mesa_dequantize(Tensor q, Tensor clip_val, Tensor shift, int dim, int levels, ScalarType dtype) -> Tensor");

  // Gated class-attention (GCAB; csrc/gated/gated.h has the maths): one query (the task token x[:, 0]) per head over
  // all N+1 tokens of x [B, N+1, C], gate m [C] on the q/k/v inputs, the q/k outputs and the projection's input and
  // output. wq, wk, wv, wp: [C, C] (out x in); biases [C] or None (no b_k: softmax cancels it). Returns y [B, C] in
  // x's dtype and attn [B, H, N+1] (float32; float64 for float64 x), which the backward reads.
  m.def(
      "gated_cattn_fwd(Tensor x, Tensor gate, Tensor wq, Tensor? bq, Tensor wk, Tensor wv, Tensor? bv, Tensor wp, "
      "Tensor? bp, int num_heads) -> (Tensor out, Tensor attn)");
  // Backward of gated_cattn_fwd: [grad_x, grad_gate, grad_wq, grad_bq, grad_wk, grad_wv, grad_bv, grad_wp, grad_bp]
  // in the inputs' dtypes (an absent bias's gradient has shape [0]).
  m.def(
      "gated_cattn_bwd(Tensor grad_out, Tensor x, Tensor gate, Tensor wq, Tensor? bq, Tensor wk, Tensor wv, "
      "Tensor? bv, Tensor wp, Tensor? bp, Tensor attn, int num_heads) -> Tensor[]");
  // HAT gradient routing in place, one call for every gated parameter: grads[i] (a weight [out, in], or a bias [out]
  // when masks_in[i] is empty) *= 1 - outer(masks_out[i], masks_in[i]); emb_grads[j] *= (s_max / s)
  // (cosh(clamp(s e, -clamp, clamp)) + 1) / (cosh(e) + 1) with e = embs[j].
  m.def(
      "gated_route(Tensor(a!)[] grads, Tensor[] masks_out, Tensor[] masks_in, Tensor(b!)[] emb_grads, "
      "Tensor[] embs, float s, float s_max, float clamp) -> ()");

  // Fourier-KArAt basis contraction (csrc/karat/karat.h has the maths): z[b, h, k, p] = sum_{q, m=1..G}
  // a[h, p, q, m] cos(m A) + b[h, p, q, m] sin(m A) with A = scale * q k^T, never materialising the basis.
  // q, k: [B, H, N, D]; a, b: [H, r, N, G]. Returns z [B, H, N, r] in q's dtype (float32 arithmetic for half types).
  m.def("karat_fwd(Tensor q, Tensor k, Tensor a, Tensor b, float scale) -> Tensor z");
  // Backward of karat_fwd, recomputing A and the basis tile by tile from q and k (nothing else is saved). With
  // recompute_z it also returns z (one more GEMM per tile), so that attention built on z need not save it; otherwise
  // z is an empty tensor.
  m.def(
      "karat_bwd(Tensor grad_z, Tensor q, Tensor k, Tensor a, Tensor b, float scale, bool recompute_z=False) -> "
      "(Tensor grad_q, Tensor grad_k, Tensor grad_a, Tensor grad_b, Tensor z)");
  // Fourier-KArAt attention, out = (z + c0) (W^T V): the basis contraction above over the harmonic slots m = 1..G of
  // a, b [H, r, N, M] (slot 0 is the m = 0 constant term c0 = sum_q a[..., q, 0] when constant_term), and the learned
  // row operator W [H, N, r], without forming the N x N attention matrix. q, k, v: [B, H, N, D]; out: q's shape and
  // dtype. One kernel for every device (csrc/karat/karat_attention.cpp): batched GEMMs around karat_fwd.
  m.def(
      "karat_attention(Tensor q, Tensor k, Tensor v, Tensor a, Tensor b, Tensor W, float scale, bool constant_term) "
      "-> Tensor");
  // karat_attention's forward for its autograd: out and z [B, H, N, r], the basis contraction of the harmonic slots
  // (karat_fwd's output), which backward needs.
  m.def(
      "karat_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor a, Tensor b, Tensor W, float scale, "
      "bool constant_term) -> (Tensor out, Tensor z)");
  // Backward of karat_attention from q, k, v and karat_attention_fwd's z (W^T V is recomputed): gradients of every
  // input, each in that input's dtype and shape.
  m.def(
      "karat_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor a, Tensor b, Tensor W, Tensor z, "
      "float scale, bool constant_term) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_a, "
      "Tensor grad_b, Tensor grad_W)");

  // CRReLU (csrc/crrelu/crrelu.h has the maths): y = max(0, x) + eps x exp(-x^2/2). eps: floating, one value
  // (shared) or x.size(dim) values (per channel along `dim`; dim is ignored for a shared eps). y has x's shape and
  // dtype (contiguous).
  m.def("crrelu_fwd(Tensor x, Tensor eps, int dim) -> Tensor");
  // Backward of crrelu_fwd from x (recomputes exp): grad_x = grad (1[x > 0] + eps (1 - x^2) e), grad_eps =
  // sum grad x e per eps value (eps's shape and dtype). Outputs not requested have shape [0].
  m.def(
      "crrelu_bwd(Tensor grad, Tensor x, Tensor eps, int dim, bool need_grad_x, bool need_grad_eps) -> "
      "(Tensor grad_x, Tensor grad_eps)");

  // Ghost batch norm (csrc/ghost_bn/ghost_bn.h has the maths). x: [N, C, *], cut into G = ceil(N / ghost_batch_size)
  // ghost batches (the last may be smaller). weight / bias: [C] or absent. Returns y (x's shape and dtype) and the
  // per-ghost mean, biased variance and invstd = 1 / sqrt(var + eps), each [G, C] in float32 (float64 for float64
  // x). The running statistics are updated from them by the caller (pyfast/ops/ghost_bn.py, closed form).
  m.def(
      "ghost_bn_fwd(Tensor x, Tensor? weight, Tensor? bias, int ghost_batch_size, float eps) -> "
      "(Tensor y, Tensor mean, Tensor var, Tensor invstd)");
  // Backward of ghost_bn_fwd from x and the saved mean / invstd: grad_x (x's dtype), grad_weight and grad_bias
  // ([C], float32 or float64). Outputs not requested have shape [0].
  m.def(
      "ghost_bn_bwd(Tensor grad, Tensor x, Tensor mean, Tensor invstd, Tensor? weight, int ghost_batch_size, "
      "bool need_grad_x, bool need_grad_weight, bool need_grad_bias) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");

  // Multi-sample dropout head with averaged cross-entropy (csrc/msdrop/msdrop.h has the maths). h: [B, D], weight:
  // [C, D] (h's dtype), bias: [C] or absent, target: [B] int64, seed: one int64 (the counter-based masks of all
  // num_samples samples derive from it; the backward regenerates them). Returns loss = mean over samples and batch of
  // the cross-entropy (0-d, h's dtype), logits [num_samples, B, C] and lse [num_samples B] (float32, float64 for
  // float64 h; saved for backward).
  m.def(
      "msdrop_fwd(Tensor h, Tensor weight, Tensor? bias, Tensor target, Tensor seed, int num_samples, float p) -> "
      "(Tensor loss, Tensor logits, Tensor lse)");
  // Backward of msdrop_fwd: grad_h [B, D], grad_weight [C, D], grad_bias [C]; shape [0] when not requested.
  m.def(
      "msdrop_bwd(Tensor grad_loss, Tensor logits, Tensor lse, Tensor h, Tensor weight, Tensor target, Tensor seed, "
      "int num_samples, float p, bool need_grad_h, bool need_grad_weight, bool need_grad_bias) -> "
      "(Tensor grad_h, Tensor grad_weight, Tensor grad_bias)");

  // Plackett-Luce distillation (csrc/pld/pld.h has the maths and the ranking's tie rule). student, teacher: [B, C] of
  // one floating dtype; labels: int64 [B] in [0, C); tau_t > 0. Returns the per-row loss [B] and teacher_lse =
  // log sum exp(teacher / tau_t) [B] (float32; float64 for float64 inputs) and the ranking perm [B, C] (int32: the
  // label, then the other classes by descending teacher logit), both saved for backward. CUDA: C <= 1024.
  m.def("pld_fwd(Tensor student, Tensor teacher, Tensor labels, float tau_t) -> (Tensor loss, Tensor perm, "
        "Tensor teacher_lse)");
  // Backward of pld_fwd from the saved ranking and teacher_lse (the sort is not redone): grad_student and
  // grad_teacher ([B, C] in the inputs' dtype; shape [0] when not requested). grad_loss: [B].
  m.def(
      "pld_bwd(Tensor grad_loss, Tensor student, Tensor teacher, Tensor perm, Tensor teacher_lse, float tau_t, "
      "bool need_grad_student, bool need_grad_teacher) -> (Tensor grad_student, Tensor grad_teacher)");
}

// The backward ops (and the other ops autograd never differentiates: karat_attention_fwd, which karat_attention's
// autograd calls below the autograd key, and Mesa's quantize / dequantize) are not differentiable. Without a kernel at
// the Autograd key, torch's default for a C++ custom op only warns and then treats the op as constant: a double
// backward (create_graph=True, e.g. a gradient penalty) through pyfast::lif_bwd gave second derivatives of zero, and
// through karat_attention_bwd a wrong sum, silently. This kernel runs the op and, when an input requires grad, gives
// its outputs a grad_fn that raises "derivative for pyfast::<op> is not implemented" if anything backpropagates
// through it; the Triton twins (torch.library.custom_op) raise the same way. gated_route (in place, on gradients)
// is left out.
TORCH_LIBRARY_IMPL(pyfast, Autograd, m) {
  for (const char* op : {"lif_bwd", "wconv_weight_bwd", "mesa_quantize", "mesa_dequantize", "gated_cattn_bwd",
                         "karat_bwd", "karat_attention_fwd", "karat_attention_bwd", "crrelu_bwd", "ghost_bn_bwd",
                         "msdrop_bwd", "pld_bwd"})
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
}
