#!/usr/bin/env bash
# Run the TF-free runtime in throwaway device-like environments (`make test-edge`).
#
#   scripts/test_edge.sh [ARTIFACTS_DIR]        (default: artifacts)
#
# Builds two venvs under .edge-envs/ with scripts/edge_envs.py (reused while their requirements
# are unchanged; FRESH=1 rebuilds):
#   tflite-runtime: numpy<2 + tflite-runtime==2.14.0 + Pillow   (a Raspberry Pi OS-like image)
#   litert-onnx:    numpy + ai-edge-litert==2.3.0 + onnxruntime==1.31.1 + Pillow
# then copies runtime/, the artifacts and scripts/device_cases.py to a temp dir outside the repo
# and, in each env, checks that TensorFlow is absent, runs the README's `python -m runtime check
# artifacts` as is (it must exit 0 with only tflite-runtime installed: ONNX rows are skipped),
# `check` per format, `detect` per backbone precision and the device cases (scripts/device_cases.py).
# Exit 0 when every step passed, 1 otherwise, 2 on bad usage.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARTIFACTS="${1:-artifacts}"
PYTHON_BOOT="${PYTHON_BOOT:-python3}"
START=$SECONDS

if [[ ! -f "$ARTIFACTS/manifest.json" ]]; then
    echo "error: $ARTIFACTS/manifest.json not found; expected an artifacts directory (run \`make export\`)" >&2
    exit 2
fi
ARTIFACTS="$(cd "$ARTIFACTS" && pwd)"

# The envs' requirements and how they are built: scripts/edge_envs.py (one place).
# The formats each env can run (check them all; detect with every backbone precision of them).
declare -A FORMATS=([tflite-runtime]="tflite" [litert-onnx]="tflite onnx")
declare -A BACKEND=([tflite-runtime]="tflite_runtime" [litert-onnx]="ai_edge_litert")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/roiedge-edge.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cp -r "$REPO/runtime" "$WORK/runtime"
find "$WORK/runtime" -name __pycache__ -prune -exec rm -rf {} +
cp -r "$ARTIFACTS" "$WORK/artifacts"
cp "$REPO/scripts/device_cases.py" "$WORK/device_cases.py"
cp "$REPO/scripts/device_stream_check.py" "$WORK/device_stream_check.py"
echo "== device copy: $WORK (runtime/ + artifacts/ only)"

FAILED=()
step() {  # step NAME CMD... : run a command, record failure
    local name="$1"
    shift
    echo "-- $name"
    if ! "$@"; then
        echo "!! FAILED: $name"
        FAILED+=("$name")
    fi
}

for name in tflite-runtime litert-onnx; do
    env_start=$SECONDS
    if ! py="$("$PYTHON_BOOT" "$REPO/scripts/edge_envs.py" "$name")"; then
        FAILED+=("build env $name")
        continue
    fi
    cd "$WORK" || exit 1
    unset PYTHONPATH
    out="$WORK/out-$name"
    mkdir -p "$out"
    step "[$name] packages" "$py" -m pip list --format=freeze --disable-pip-version-check
    step "[$name] no tensorflow/keras installed" "$py" -c "
import importlib.util, sys
present = [m for m in ('tensorflow', 'keras', 'tf_keras') if importlib.util.find_spec(m)]
sys.exit(f'unexpected packages in a device env: {present}' if present else 0)"
    step "[$name] README check (no flags)" "$py" -m runtime check artifacts
    if [[ "$name" == tflite-runtime ]]; then
        step "[$name] onnxruntime absent, ONNX rows skipped" bash -c "
            ! '$py' -c 'import onnxruntime' 2>/dev/null &&
            '$py' -m runtime check artifacts | grep -q 'skipped (onnxruntime not installed)'"
        step "[$name] check --require-all fails on skips" bash -c "
            ! '$py' -m runtime check artifacts --require-all >/dev/null 2>&1"
        step "[$name] bench (ONNX skipped)" bash -c "
            '$py' -m runtime bench artifacts --runs 2 --warmup 0 --only backbone_rpn/tflite/int8 \
                backbone_rpn/onnx/float32 | grep -q 'skipped (onnxruntime not installed)'"
    fi
    # shellcheck disable=SC2086
    step "[$name] check (${FORMATS[$name]})" "$py" -m runtime check artifacts \
        --formats ${FORMATS[$name]} --tflite-backend "${BACKEND[$name]}" --json "$out/check.json"
    step "[$name] golden image" "$py" -c "
import numpy as np
from PIL import Image
from runtime.check import load_golden
from runtime.manifest import read_manifest
x = load_golden('artifacts', read_manifest('artifacts'), 'backbone_rpn')['input_0']
image = np.clip(x.reshape(-1, *x.shape[-3:])[0], 0, 255).astype(np.uint8)
Image.fromarray(image).save('$out/scene.png')"
    # Every backbone artifact of a format this env runs, as a [format:]precision pipeline.
    # shellcheck disable=SC2086
    pipelines="$("$py" -c "
from runtime.manifest import read_manifest
formats = '${FORMATS[$name]}'.split()
print(' '.join(f'{e.format}:{e.precision}' for e in read_manifest('artifacts').artifacts
               if e.model == 'backbone_rpn' and e.format in formats))")"
    for pipeline in $pipelines; do
        fmt="${pipeline%%:*}"
        precision="${pipeline#*:}"
        backend=()
        [[ "$fmt" == tflite ]] && backend=(--backend "${BACKEND[$name]}")
        step "[$name] detect $pipeline" "$py" -m runtime detect --artifacts artifacts \
            --format "$fmt" --precision "$precision" "${backend[@]}" --out "$out/$fmt-$precision" \
            "$out/scene.png"
    done
    step "[$name] python -m runtime loaded no TF" "$py" -c "
import sys
import numpy as np
from runtime.detector import Detector
Detector('artifacts', precision='int8', backend='${BACKEND[$name]}').detect(np.zeros((8, 8, 3), np.uint8))
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'models', 'export'))
sys.exit(f'loaded {bad}' if bad else 0)"
    step "[$name] device cases" "$py" device_cases.py artifacts
    step "[$name] stream --video (int8): frames in order, = detect, mp4 frame count" \
        "$py" device_stream_check.py artifacts --precision int8 --backend "${BACKEND[$name]}"
    echo "== env $name: $((SECONDS - env_start)) s"
done

echo "== test-edge took $((SECONDS - START)) s"
if ((${#FAILED[@]})); then
    printf '== FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "== test-edge: all steps passed"
