#!/usr/bin/env bash
# Build the ComfyUI the integration tests run the pack in, offline and CPU-only:
#   bash tests/comfyui/setup.sh <ComfyUI source: a tree, a .tar.gz of one, or a git dir>
# into .comfyui/ (override with ICM_COMFY_ROOT): a ComfyUI copy + its venv (made by the headless toolkit's
# setup_comfy.sh, ../shared/comfy_e2e by default, override with COMFY_E2E), this pack's requirements installed with
# ComfyUI's Python (as a user does), and the random narrow SD2 test checkpoint. Writes .comfyui/env; then
#   . .comfyui/env && python -m pytest -q
# runs every test, the ComfyUI and browser ones included (they need Chromium: apt-get install -y chromium).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -eq 1 ] || { echo "usage: bash tests/comfyui/setup.sh <ComfyUI source tree, .tar.gz or git dir>" >&2; exit 2; }
SRC="$1"
TOOLKIT="${COMFY_E2E:-../shared/comfy_e2e}"
ROOT="${ICM_COMFY_ROOT:-$PWD/.comfyui}"
TORCH_SPEC="${COMFY_TORCH:-torch==2.13.0}"
[ -f "$TOOLKIT/setup_comfy.sh" ] || { echo "error: no headless toolkit at $TOOLKIT (set COMFY_E2E)" >&2; exit 2; }
[ -e "$SRC" ] || { echo "error: ComfyUI source $SRC does not exist" >&2; exit 2; }
mkdir -p "$ROOT"
ROOT="$(cd "$ROOT" && pwd)"
export COMFY_E2E_ROOT="$ROOT" COMFY_TORCH="$TORCH_SPEC"

start=$SECONDS
bash "$TOOLKIT/setup_comfy.sh" --src "$SRC"
echo "[pack] pip install -r requirements.txt with ComfyUI's Python (constraint $TORCH_SPEC)"
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
echo "$TORCH_SPEC" > "$constraint"
"$ROOT/venv/bin/pip" install -q -r requirements.txt -c "$constraint" 2>&1 | { grep -v '^WARNING: Location' || true; }

CHECKPOINT="$ROOT/models/checkpoints/sd2_rand_narrow_kl.safetensors"
if [ ! -s "$CHECKPOINT" ]; then
  echo "[models] random narrow SD2 checkpoint (KL VAE) -> $CHECKPOINT"
  "$ROOT/venv/bin/python" "$TOOLKIT/make_random_sd2_checkpoint.py" --unet narrow --vae kl --clip-dtype fp8 \
    --dtype fp32 --out "$CHECKPOINT"
fi
cat > "$ROOT/env" <<EOF
export COMFYUI_PATH="$ROOT/comfy" COMFY_PYTHON="$ROOT/venv/bin/python" COMFY_E2E="$(cd "$TOOLKIT" && pwd)"
export ICM_TEST_SD2_CHECKPOINT="$CHECKPOINT"
EOF
echo "ComfyUI for the tests ready in $((SECONDS - start)) s; now: . $ROOT/env && python -m pytest -q"
