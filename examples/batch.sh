#!/usr/bin/env bash
# Make every prompt of the two example files, then variations of the first results, and list what was made.
# Re-running resumes: --skip-existing keeps whatever an interrupted run already wrote.
#
#   examples/batch.sh [OUT_DIR] [more dalle options, e.g. --device cpu --quiet]
#
# The model is $DALLE_MODEL, by default `shapes` (shipped in weights/shapes/, no download).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-outputs/examples}"
shift $(( $# > 0 ? 1 : 0 ))
model="${DALLE_MODEL:-shapes}"
mkdir -p "$out"

# 1. A plain prompt file, one prompt per line. The paths of the new images are printed on stdout.
dalle gen -m "$model" -f "$here/prompts.txt" -o "$out/plain" --seed 1 --skip-existing "$@"

# 2. A JSONL file: each line sets its own seed, count and settings. --json prints one record per image; keep them
#    (records can be fed back with `dalle gen -f records.jsonl` to make the same images again) and summarize with jq.
dalle gen -m "$model" -f "$here/prompts.jsonl" -o "$out/jsonl" --skip-existing --grid --json "$@" \
    >> "$out/records.jsonl"
if command -v jq > /dev/null; then
    jq -r '[.index, .seed, .prompt, .path] | @tsv' "$out/records.jsonl"
else
    cat "$out/records.jsonl"
fi

# 3. Two variations of the first image from step 1.
made=("$out"/plain/*.png)
dalle vary "${made[0]}" -m "$model" -n 2 --seed 1 -o "$out/vary" --skip-existing "$@"
