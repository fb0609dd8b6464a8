#!/usr/bin/env bash
# The first command, from a fresh clone: set up, then talk to the small demo model bundled with fullduplex.
#
#   scripts/demo.sh [OUT]      the demo model answers a recorded user (fullduplex/assets/demo/user.wav, or
#                              USER_WAV=your.wav) frame by frame, as live; then its turn-taking is measured.
#                              Prints where the stereo file, the transcript and the turn-taking plot went.
#   scripts/demo.sh --serve    start the real-time server with the demo model; prints the address to open
#                              (extra options go to `fullduplex serve`, e.g. --port 9000).
#
# No model hub is needed: the demo model (a 6M-parameter LM, a small codec and a tokenizer; docs/demo.md) was
# trained on CPU on synthetic espeak-ng dialogues by scripts/make_demo_model.sh. It shows every part of the system
# working, not a real conversation partner. A released model: add --hf-repo kyutai/moshiko-pytorch-bf16 to the
# commands below (a GPU is advised).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FULLDUPLEX_EXTRAS="${FULLDUPLEX_EXTRAS:-eval}"  # the turn-taking measure uses the eval extra (VAD, plots)
source "$ROOT/scripts/setup.sh"

if [ "${1:-}" = "--serve" ]; then
    shift
    PORT=8998
    args=("$@")
    for ((i = 0; i < ${#args[@]}; i++)); do
        [ "${args[$i]}" = "--port" ] && PORT="${args[$((i + 1))]:-$PORT}"
    done
    echo "==> starting the server with the demo model: open http://localhost:$PORT/ in a browser (Ctrl-C stops it)"
    exec fullduplex serve --device cpu "$@"
fi

OUT="${1:-$ROOT/demo_out}"
USER_WAV="${USER_WAV:-$ROOT/fullduplex/assets/demo/user.wav}"
mkdir -p "$OUT"
echo "==> the demo model answers $USER_WAV"
fullduplex generate --input "$USER_WAV" --output "$OUT/conversation.wav" --transcript "$OUT/transcript.json" \
    --device cpu
echo "==> measuring turn-taking of the conversation (voice activity per channel)"
fullduplex eval turns "$OUT/conversation.wav" --output "$OUT/turns" --overwrite --quiet > /dev/null
echo
echo "Done. Files are in $OUT:"
echo "  conversation (stereo; left: the model, right: the user): $OUT/conversation.wav"
echo "  the model's words with times:                           $OUT/transcript.json"
echo "  turn-taking plot:                                       $OUT/turns/timeline-conversation.png"
echo "  turn-taking statistics:                                 $OUT/turns/report.md"
echo "Next: scripts/demo.sh --serve (talk to it in a browser); a released model: add --hf-repo kyutai/moshiko-pytorch-bf16"
