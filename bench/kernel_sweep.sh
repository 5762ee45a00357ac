#!/usr/bin/env bash
# Builds bench/kernel_sweep.cu (what it times: see there) with the nvcc flags setup.py gives the extension's kernels.
#
#   bash bench/kernel_sweep.sh OUT_BINARY [ARCH]      ARCH: an nvcc -arch value, default native (the visible GPU)
#
# nvcc: $CUDA_HOME/bin/nvcc, else /usr/local/cuda/bin/nvcc, else the one on PATH.
set -eu -o pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT_BINARY [ARCH]" >&2
    exit 2
fi
OUT=$(realpath -m "$1")
cd "$(dirname "$0")/.."
NVCC=${CUDA_HOME:+$CUDA_HOME/bin/nvcc}
[ -x "${NVCC:-}" ] || NVCC=/usr/local/cuda/bin/nvcc
[ -x "$NVCC" ] || NVCC=$(command -v nvcc) || { echo "$0: no nvcc (set CUDA_HOME)" >&2; exit 1; }
exec "$NVCC" -O3 -std=c++20 -arch="${2:-native}" --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ \
    -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    -DPYFAST_KERNEL_SWEEP -Icsrc bench/kernel_sweep.cu csrc/lif/lif_kernel.cu csrc/karat/karat_kernel.cu -o "$OUT"
