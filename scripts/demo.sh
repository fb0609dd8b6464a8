#!/usr/bin/env bash
# The main job, from nothing: set up, then encode and decode the bundled speech sample with Mimi.
#
# No model hub is needed: the codec checkpoint is built here with random weights in the released format
# (the same way the tests build theirs), so the decoded audio is noise-like but every step is the real one.
# With a real checkpoint, run instead:
#   fullduplex codec encode speech.wav speech.codes.safetensors --hf-repo kyutai/moshiko-pytorch-bf16
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
OUT="${1:-$ROOT/demo_out}"
mkdir -p "$OUT"
CKPT="$OUT/mimi-random-weights.safetensors"
if [ ! -f "$CKPT" ]; then
    echo "==> building a random-weight Mimi checkpoint (released architecture and format)"
    python "$ROOT/scripts/make_random_mimi.py" "$CKPT"
fi
echo "==> encoding tests/assets/speech_en.wav"
fullduplex codec encode "$ROOT/tests/assets/speech_en.wav" "$OUT/speech_en.codes.safetensors" --mimi-weight "$CKPT" --device cpu
echo "==> decoding the codes back to audio"
fullduplex codec decode "$OUT/speech_en.codes.safetensors" "$OUT/speech_en.decoded.wav" --mimi-weight "$CKPT" --device cpu
echo
echo "Done. Files are in $OUT:"
echo "  codes:   $OUT/speech_en.codes.safetensors"
echo "  audio:   $OUT/speech_en.decoded.wav"
echo "  codec:   $CKPT (random weights)"
