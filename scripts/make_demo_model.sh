#!/usr/bin/env bash
# Reproduce the demo model shipped in fullduplex/assets/demo, from nothing, on CPU (2 cores: under an hour).
#
#   scripts/make_demo_model.sh [OUT]          # default OUT: runs/demo
#
# Steps (each a fullduplex command; see docs/demo.md):
#   1. synthesise English dialogues with espeak-ng          fullduplex data synth      (train + held-out)
#   2. train a tokenizer on the dialogue scripts            fullduplex tokenizer train
#   3. train the demo codec on the dialogues' speech        fullduplex train examples/demo/codec.yaml
#   4. encode the dialogues into training shards            fullduplex data prepare
#   5. train the demo LM from random weights                fullduplex train examples/demo/lm.yaml
#   6. export and pack (float16)                            fullduplex export + scripts/demo_tools.py pack
#   7. evaluate: text loss, generate on the held-out user channels, turn-taking, onsets, codec STOI/PESQ
#   8. copy the packed model into fullduplex/assets/demo    (skipped with DEMO_INSTALL=0)
#
# Sizes (environment): DEMO_DIALOGUES (train, default 160), DEMO_VALID_DIALOGUES (8), DEMO_VOCAB (400),
# DEMO_CODEC_STEPS (1600), DEMO_LM_STEPS (1200), DEMO_THREADS (torch threads, default 1: on a shared or 2-core machine one thread is faster). A step that already
# finished (its output exists) is skipped, so an interrupted run resumes; training steps resume from their
# checkpoints. Needs espeak-ng (apt install espeak-ng).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FULLDUPLEX_EXTRAS="${FULLDUPLEX_EXTRAS:-train,eval}"
source "$ROOT/scripts/setup.sh"
OUT="$(mkdir -p "${1:-$ROOT/runs/demo}" && cd "${1:-$ROOT/runs/demo}" && pwd)"
N_TRAIN="${DEMO_DIALOGUES:-160}"
N_VALID="${DEMO_VALID_DIALOGUES:-8}"
VOCAB="${DEMO_VOCAB:-400}"
CODEC_STEPS="${DEMO_CODEC_STEPS:-1600}"
LM_STEPS="${DEMO_LM_STEPS:-1200}"
export OMP_NUM_THREADS="${DEMO_THREADS:-1}"
START=$(date +%s)
stamp() { echo "==> [$(( ($(date +%s) - START) / 60 )) min] $*"; }

command -v espeak-ng >/dev/null || { echo "error: espeak-ng is needed (apt install espeak-ng)" >&2; exit 1; }

stamp "1/8 synthesising $N_TRAIN training and $N_VALID held-out dialogues"
mkdir -p "$OUT/corpus"
[ -f "$OUT/corpus/train/manifest.jsonl" ] || fullduplex data synth --lang en --dialogues "$N_TRAIN" --seed 1 --output "$OUT/corpus/train"
[ -f "$OUT/corpus/valid/manifest.jsonl" ] || fullduplex data synth --lang en --dialogues "$N_VALID" --seed 2 --output "$OUT/corpus/valid"

stamp "2/8 training a $VOCAB-piece tokenizer on the scripts"
python "$ROOT/scripts/demo_tools.py" text "$OUT/corpus/train/manifest.jsonl" --output "$OUT/corpus/train.txt"
[ -f "$OUT/tokenizer/tokenizer.model" ] || fullduplex tokenizer train --corpus "$OUT/corpus/train.txt" --vocab-size "$VOCAB" --output "$OUT/tokenizer"

stamp "3/8 training the codec ($CODEC_STEPS steps)"
[ -f "$OUT/codec/mimi.safetensors" ] || fullduplex train "$ROOT/examples/demo/codec.yaml" \
    -o "data.train=[$OUT/corpus/train]" -o "data.valid=[$OUT/corpus/valid]" \
    -o "optim.max_steps=$CODEC_STEPS" -o "run.output=$OUT/codec"
CODEC=(--mimi-weight "$OUT/codec/mimi.safetensors" --mimi-config "$OUT/codec/mimi_config.json")

stamp "4/8 encoding the dialogues into training shards"
mkdir -p "$OUT/shards"
for split in train valid; do
    [ -f "$OUT/shards/$split/index.json" ] || fullduplex data prepare "$OUT/corpus/$split/manifest.jsonl" \
        --tokenizer "$OUT/tokenizer/tokenizer.model" "${CODEC[@]}" --both-sides --output "$OUT/shards/$split" --quiet
done

stamp "5/8 training the LM ($LM_STEPS steps)"
[ -f "$OUT/lm/best.json" ] && [ -d "$OUT/lm/checkpoints/step_$(printf %06d "$LM_STEPS")" ] || \
    fullduplex train "$ROOT/examples/demo/lm.yaml" \
    -o "model.tokenizer=$OUT/tokenizer/tokenizer.model" -o "data.train=[$OUT/shards/train]" \
    -o "data.valid=[$OUT/shards/valid]" -o "optim.max_steps=$LM_STEPS" -o "run.output=$OUT/lm"

stamp "6/8 exporting and packing the model (float16)"
fullduplex export "$OUT/lm" --output "$OUT/lm-export" --overwrite  # a rerun replaces its own earlier export
python "$ROOT/scripts/demo_tools.py" pack --lm "$OUT/lm-export" --codec "$OUT/codec" --output "$OUT/model" \
    --user-sample "$OUT/corpus/valid/en-00000.wav"
MODEL=(--moshi-weight "$OUT/model" --mimi-weight "$OUT/model/mimi.safetensors" --mimi-config "$OUT/model/config.json"
       --tokenizer "$OUT/model/tokenizer.model")

stamp "7/8 evaluating on the held-out dialogues"
EVAL="$OUT/eval"
mkdir -p "$EVAL"
python "$ROOT/scripts/demo_tools.py" text-loss --model "$OUT/model" --valid "$OUT/shards/valid" \
    --train "$OUT/shards/train" --output "$EVAL/text_loss.json"
python "$ROOT/scripts/demo_tools.py" channels "$OUT/corpus/valid/manifest.jsonl" --output "$EVAL/channels"
fullduplex generate --input "$EVAL"/channels/*.user.wav --output "$EVAL/generated" --transcript "$EVAL/transcripts" --overwrite \
    "${MODEL[@]}" --quiet
fullduplex eval turns "$EVAL/generated" --output "$EVAL/turns-generated" --overwrite --quiet
fullduplex eval turns "$OUT/corpus/valid" --output "$EVAL/turns-truth" --overwrite --quiet
python "$ROOT/scripts/demo_tools.py" onsets --generated "$EVAL/generated" --truth "$OUT/corpus/valid" \
    --output "$EVAL/onsets.json"
fullduplex eval codec "$EVAL"/channels/*.left.wav --mimi-weight "$OUT/model/mimi.safetensors" \
    --mimi-config "$OUT/model/config.json" --output "$EVAL/codec" --overwrite --quiet

if [ "${DEMO_INSTALL:-1}" = "1" ]; then
    stamp "8/8 copying the model into $ROOT/fullduplex/assets/demo"
    rm -rf "$ROOT/fullduplex/assets/demo"
    mkdir -p "$ROOT/fullduplex/assets"
    cp -r "$OUT/model" "$ROOT/fullduplex/assets/demo"
fi
stamp "done in $(( ($(date +%s) - START) / 60 )) min; the model: $OUT/model; reports: $EVAL"
echo "  text loss:           $EVAL/text_loss.json"
echo "  turn-taking:         $EVAL/turns-generated/report.md (truth: $EVAL/turns-truth/report.md)"
echo "  speech onsets:       $EVAL/onsets.json"
echo "  codec STOI/PESQ:     $EVAL/codec/report.md"
