#!/usr/bin/env bash
# Builds the core and the native test programs for 64-bit ARM and runs them:
# natively on an ARM host; elsewhere cross-compiled with Debian's
# g++-aarch64-linux-gnu and run under qemu-aarch64, once as a CPU with every
# extension (-cpu max: fp16, dotprod, i8mm, bf16, fhm), once as a Cortex-A76
# (fp16, dotprod) and once as a plain ARMv8.0 core (cortex-a53), so the fast
# paths, the partial sets and the fallbacks all execute.
set -euo pipefail
cd "$(dirname "$0")/.."
CMAKE=${CMAKE:-cmake}
BUILD=build/arm

run_tests() {  # runner prefix..., then each test program
  local failed=0
  for test in "$BUILD"/test_*; do
    echo "== ${test##*/} $*"
    "$@" "$test" || failed=1
  done
  return $failed
}

case "$(uname -m)" in
  aarch64|arm64)
    "$CMAKE" -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOCKETML_BUILD_TESTS=ON > /dev/null
    "$CMAKE" --build "$BUILD"
    run_tests env
    exit
    ;;
esac

if ! command -v aarch64-linux-gnu-g++ > /dev/null || ! command -v qemu-aarch64 > /dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "installing the aarch64 cross compiler and qemu-user (Debian packages)"
    apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user > /dev/null
  else
    echo "test-arm needs g++-aarch64-linux-gnu and qemu-user: apt-get install g++-aarch64-linux-gnu qemu-user" >&2
    exit 1
  fi
fi

"$CMAKE" -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOCKETML_BUILD_TESTS=ON \
  -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake > /dev/null
"$CMAKE" --build "$BUILD"
# test_runtime checks that detection finds exactly these extensions on each
# model, so each run provably takes the paths it is meant to cover. The
# Cortex-A76 in between has FP16 and DotProd but no FHM, I8MM or BF16: int8
# dispatch picks SDOT (as on an M1), and fp16 attention falls back to widening
# although the CPU has FP16, because FMLAL needs FHM.
status=0
run_tests env POCKETML_EXPECT_ARM_FEATURES="fp16 dotprod i8mm bf16 fhm" \
  qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max || status=1
run_tests env POCKETML_EXPECT_ARM_FEATURES="fp16 dotprod" \
  qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a76 || status=1
run_tests env POCKETML_EXPECT_ARM_FEATURES="" qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a53 || status=1
exit $status
