#!/usr/bin/env bash
# The README's device install on an emulated arm64 Debian bookworm (Raspberry Pi OS's base), then
# `python -m runtime check artifacts` must exit 0 (ONNX rows skipped: onnxruntime not installed).
#
#   scripts/test_arm64.sh [ARTIFACTS_DIR]      (default: artifacts; needs root for apt-get)
#
# Uses qemu-user (no binfmt_misc needed): debootstrap --foreign unpacks an arm64 bookworm with
# Python 3.11, the aarch64 wheels of numpy<2, tflite-runtime 2.14.0 and Pillow are installed with
# pip --platform into a plain directory, and the arm64 python3.11 runs under qemu-aarch64-static
# with only runtime/ and the artifacts copied next to it. Cached under .arm64/ (FRESH=1 rebuilds).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARTIFACTS="$(cd "${1:-artifacts}" && pwd)"
CACHE="$REPO/.arm64"
ROOT="$CACHE/rootfs"
SITE="$CACHE/site"
PY="${PYTHON:-python3}"

[[ -f "$ARTIFACTS/manifest.json" ]] || { echo "error: $ARTIFACTS/manifest.json not found" >&2; exit 2; }
[[ "${FRESH:-0}" == 1 ]] && rm -rf "$CACHE"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get install -y -qq qemu-user-static debootstrap >/dev/null
fi
mkdir -p "$CACHE"
if [[ ! -x "$ROOT/usr/bin/python3.11" ]]; then
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,libpython3.11 \
        bookworm "$ROOT" http://deb.debian.org/debian >"$CACHE/debootstrap.log"
    # --foreign only downloads the included packages; unpack them (no arm64 chroot needed).
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
fi
if [[ ! -d "$SITE/tflite_runtime" ]]; then
    "$PY" -m pip install --quiet --disable-pip-version-check --target "$SITE" --only-binary=:all: \
        --implementation cp --python-version 311 --platform manylinux_2_34_aarch64 \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 "numpy<2" tflite-runtime==2.14.0 pillow==11.3.0
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/roiedge-arm64.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cp -r "$REPO/runtime" "$WORK/runtime"
find "$WORK/runtime" -name __pycache__ -prune -exec rm -rf {} +
cp -r "$ARTIFACTS" "$WORK/artifacts"
cd "$WORK"
run() { env -i PATH=/usr/bin:/bin PYTHONPATH="$SITE" qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" "$@"; }
run -c "import platform, sys; print('== arm64 python', platform.machine(), sys.version.split()[0])"
run -m runtime check artifacts
echo "== arm64: python -m runtime check artifacts exited 0"
