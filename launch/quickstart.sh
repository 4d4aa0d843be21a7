#!/usr/bin/env bash
# The main job: set up .venv if needed, prepare the embedded corpus, train tiny TAPA, RoPE and NoPE
# models on the same budget (CPU), and compare held-out perplexity at 1x, 2x, 4x and 8x the training
# length. Writes runs/quickstart/{results.json,ppl_vs_length.png,table.md}. Extra key=value arguments
# override the training config (e.g. train.steps=100 for a smoke run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/launch/setup_env.sh"
cd "$root"
python tools/compare_encodings.py --config configs/quickstart.yaml --encodings tapa,rope,nope \
    --multiples 1,2,4,8 --max-tokens 24000 --out runs/quickstart "$@"
