// A pyfast op called through the dispatcher from C++ (autograd kernels, compositions of ops): the typed handle of op
// Name, looked up once and cached, e.g. `dispatched<"pyfast::karat_fwd", Sig>().call(...)`. Going through the
// dispatcher (not a direct function call) lets the call reach the right device kernel and, under torch.compile, the
// op's fake kernel.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cstddef>

namespace pyfast {

// A string literal as a template argument (C++20).
template <std::size_t N>
struct OpName {
  char value[N];
  constexpr OpName(const char (&name)[N]) { std::copy_n(name, N, value); }  // NOLINT: implicit by design
};

template <OpName Name, class Sig>
const c10::TypedOperatorHandle<Sig>& dispatched() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Name.value, "").template typed<Sig>();
  return op;
}

}  // namespace pyfast
