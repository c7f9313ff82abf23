#!/usr/bin/env bash
# Regenerates examples/data/speech_sample/ (synthetic English speech rich in rare words, for contextual-biasing
# tests and demos) from scripts/speech_sample_sentences.tsv with espeak-ng and sox.
#
# Usage: bash scripts/make_speech_sample.sh   (from any directory)
#
# Deterministic: utterance i (1-based, in file order) gets voice/speed/pitch by cycling the lists below, every 5th
# utterance goes to test.tsv, and sox runs with -R (repeatable) and -D (no dither), so the same espeak-ng and sox
# versions give byte-identical files.
set -euo pipefail
export LC_ALL=C

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sentences="$repo_root/scripts/speech_sample_sentences.tsv"
out="$repo_root/examples/data/speech_sample"

# Cycle lengths 7, 4 and 5 are pairwise coprime, so the 140 combinations all occur before any repeats.
voices=(en-us en-gb en-gb-scotland en-us+f3 en+m3 en+f2 en-029)
speeds=(140 155 170 185)
pitches=(30 40 50 60 70)
test_every=5
min_seconds=2
max_seconds=8

if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null || ! command -v soxi >/dev/null; then
    sudo=""
    if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update
    $sudo apt-get install -y espeak-ng sox
fi

die() {
    echo "make_speech_sample.sh: $*" >&2
    exit 1
}

# Build next to the target and swap at the end, so a failed run leaves the previous sample intact.
stage="$(mktemp -d "$out.tmp.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/audio"

header="id	audio_path	text	keywords"
echo "$header" >"$stage/train.tsv"
echo "$header" >"$stage/test.tsv"
: >"$stage/metadata.jsonl"

declare -A seen_ids seen_texts
index=0
line_number=0
while IFS= read -r line || [[ -n "$line" ]]; do
    line_number=$((line_number + 1))
    if [[ $line_number == 1 ]]; then
        [[ "$line" == "id	text	keywords" ]] || die "$sentences: bad header: $line"
        continue
    fi
    [[ -z "$line" ]] && continue
    IFS=$'\t' read -r id text keywords extra <<<"$line"
    where="$sentences:$line_number"
    [[ -n "$id" && -n "$text" && -n "$keywords" && -z "${extra:-}" ]] || die "$where: need id<TAB>text<TAB>keywords"
    [[ "$id" =~ ^[a-z]+_[0-9]{4}$ ]] || die "$where: bad id $id"
    # JSON is written by hand below, so refuse the characters that would need escaping; digits would be read
    # aloud in a way the transcript cannot match.
    [[ "$text$keywords" != *[\"\\]* ]] || die "$where: quotes and backslashes are not allowed"
    [[ "$text" != *[0-9]* ]] || die "$where: write numbers as words"
    [[ -z "${seen_ids[$id]:-}" ]] || die "$where: duplicate id $id"
    [[ -z "${seen_texts[$text]:-}" ]] || die "$where: duplicate text"
    seen_ids[$id]=1
    seen_texts[$text]=1
    read -ra words <<<"$text"
    ((${#words[@]} >= 6 && ${#words[@]} <= 18)) || die "$where: ${#words[@]} words, want 6-18"

    IFS='|' read -ra keyword_list <<<"$keywords"
    ((${#keyword_list[@]} >= 1 && ${#keyword_list[@]} <= 4)) || die "$where: want 1-4 keywords"
    keywords_json=""
    for keyword in "${keyword_list[@]}"; do
        [[ -n "$keyword" && "$text" == *"$keyword"* ]] || die "$where: keyword '$keyword' not in text"
        keywords_json+="${keywords_json:+, }\"$keyword\""
    done

    voice="${voices[index % ${#voices[@]}]}"
    speed="${speeds[index % ${#speeds[@]}]}"
    pitch="${pitches[index % ${#pitches[@]}]}"
    index=$((index + 1))

    audio_path="audio/$id.flac"
    espeak-ng -v "$voice" -s "$speed" -p "$pitch" -w "$stage/$id.wav" "$text"
    # Normalize to -3 dBFS because resampling espeak's full-scale output clips; trim leading/trailing silence
    # (espeak pads the end), then keep a short, fixed pad on both sides.
    sox -R -D "$stage/$id.wav" -r 16000 -c 1 -b 16 -C 8 "$stage/$audio_path" \
        gain -n -3 silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse pad 0.1 0.1
    rm "$stage/$id.wav"
    seconds="$(soxi -D "$stage/$audio_path")"
    awk -v s="$seconds" -v lo="$min_seconds" -v hi="$max_seconds" 'BEGIN { exit !(s >= lo && s <= hi) }' \
        || die "$where: $id lasts $seconds s, want $min_seconds-$max_seconds s (change the sentence)"
    echo "$id $voice -s $speed -p $pitch ${seconds}s"

    echo "{\"id\": \"$id\", \"audio_path\": \"$audio_path\", \"text\": \"$text\", \"keywords\": [$keywords_json]}" \
        >>"$stage/metadata.jsonl"
    split="train"
    if ((index % test_every == 0)); then split="test"; fi
    printf '%s\t%s\t%s\t%s\n' "$id" "$audio_path" "$text" "$keywords" >>"$stage/$split.tsv"
done <"$sentences"

cat >"$stage/README.md" <<EOF
# Speech sample

$index short English utterances read by espeak-ng, made for tests and demos of contextual biasing: every sentence
holds rare names, places or technical terms, listed as its \`keywords\`.

- \`audio/<id>.flac\`: 16 kHz, mono, 16-bit FLAC, leading/trailing silence trimmed, ${min_seconds}-${max_seconds} s each.
- \`metadata.jsonl\`: one object per utterance: \`id\`, \`audio_path\` (relative to this folder), \`text\`,
  \`keywords\` (list of strings, each a verbatim substring of \`text\`).
- \`train.tsv\` / \`test.tsv\`: the same rows as \`id, audio_path, text, keywords\` (keywords joined by \`|\`);
  every ${test_every}th utterance is in the test split.

## How it was made

\`scripts/make_speech_sample.sh\` reads \`scripts/speech_sample_sentences.tsv\` and synthesizes utterance *i* with
espeak-ng, cycling voice, speed (\`-s\`, words per minute) and pitch (\`-p\`) by *i*:

- voices: ${voices[*]}
- speeds: ${speeds[*]}
- pitches: ${pitches[*]}

then sox peak-normalizes the 22.05 kHz wav to -3 dBFS, trims leading/trailing silence and writes 16 kHz mono
FLAC. Made with espeak-ng $(espeak-ng --version | awk '{print $4}') and sox $(sox --version | awk '{print $NF}').

Regenerate (installs espeak-ng and sox with apt-get if missing):

\`\`\`bash
bash scripts/make_speech_sample.sh
\`\`\`

## License

Synthesized speech from sentences written for this repository: free to use for any purpose, no attribution needed.
EOF

rm -rf "$out"
mv "$stage" "$out"
trap - EXIT
chmod 755 "$out"
echo "Wrote $index utterances to $out ($(du -sh "$out" | cut -f1))"
