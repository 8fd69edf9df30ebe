#!/usr/bin/env bash
# Builds loradex and its test binary with the `cuda` feature on a machine that has no CUDA
# toolkit and no GPU (as the development machine here), for running on one that has both.
#
#   scripts/cuda-build.sh [OUT_DIR]    (default: .gpu)
#
# The toolkit comes from NVIDIA's PyPI wheels (CUDA 13.0: nvcc, headers, cuBLAS, cuRAND, NVRTC).
# candle's cudarc links the driver library dynamically; the driver is not on PyPI, so a stub
# libcuda.so.1 exporting the driver API's names stands in at link time (the real one is used
# at run time). Writes OUT_DIR/bins.tar.xz (stripped `loradex` + `deps/all-*`, unpacked on the
# GPU machine under /tmp/cuda-target/release, the path the test binary expects) and copies the
# PEFT fixtures to OUT_DIR/fixtures. On the GPU machine:
#
#   mkdir -p /tmp/cuda-target/release && tar -xJf .gpu/bins.tar.xz -C /tmp/cuda-target/release
#   LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib LORADEX_FIXTURES=$PWD/.gpu/fixtures \
#     LORADEX_TEST_DEVICE=cuda /tmp/cuda-target/release/deps/all-*
#
# (the test binary also expects the checkout at the path it was built from.)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu}
cu=/tmp/cuda13
root=$cu/x/nvidia/cu13
py=$(command -v python3)
if [ ! -x "$root/bin/nvcc" ]; then
  mkdir -p "$cu/whl"
  for p in "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
           "nvidia-cublas==13.0.*" "nvidia-curand" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
           "nvidia-cuda-cccl==13.0.*"; do
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$cu/whl" "$p"
  done
  for w in "$cu"/whl/*.whl; do unzip -q -o "$w" -d "$cu/x"; done
fi
(cd "$root/lib" && for l in cublas cublasLt nvrtc cudart; do ln -sf "lib$l.so.13" "lib$l.so"; done && ln -sf libcurand.so.10 libcurand.so)
if [ ! -f "$root/lib/stubs/libcuda.so" ]; then
  mkdir -p "$root/lib/stubs"
  # the stub lists cudarc's driver functions: its source must be in the registry first
  cargo fetch --locked -q
  sys=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -1)
  grep -o 'fn cu[A-Za-z0-9_]*(' "$sys" | sort -u | sed 's/fn \(.*\)(/void \1(void){}/' > "$cu/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$cu/stub.c"
fi
export PATH=$root/bin:$PATH CUDA_HOME=$root CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=/tmp/cuda-target CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true
cargo test --release --no-default-features --features cuda --no-run
test_bin=$(ls -t "$CARGO_TARGET_DIR"/release/deps/all-* | grep -v '\.d$' | head -1)
stage=$(mktemp -d)
mkdir -p "$stage/deps" "$out"
cp "$CARGO_TARGET_DIR/release/loradex" "$stage/"
cp "$test_bin" "$stage/deps/"
tar -C "$stage" -cf - loradex deps | xz -T0 -6 > "$out/bins.tar.xz"
rm -rf "$stage" "$out/fixtures"
cp -r ../shared/fixtures/peft "$out/fixtures" && chmod -R u+w "$out/fixtures"
ls -la "$out"
