#!/usr/bin/env bash
# Builds a libFuzzer binary over lorafuse's readers (GGUF / GGUF LoRA, JSON / MLX config,
# safetensors) with swiftc -sanitize=fuzzer,address and runs it for a while.
#   scripts/fuzz.sh [SECONDS]   (default 60); corpus in .build/fuzz/corpus, crashes in .build/fuzz/
# The seeded mutation test (Tests/LoRAFuseTests/Formats/FuzzTests.swift) runs in the normal suite;
# this is the open-ended version. Needs the Linux toolchain's libclang_rt.fuzzer.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
out=.build/fuzz
mkdir -p "$out/corpus"
# The library without the files that need Yams (fusion plans), plus the fuzz entry point.
mapfile -t srcs < <(find Sources/LoRAFuse -name '*.swift' | grep -v -e FusionPlan.swift | sort)
swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name LoRAFuseFuzz \
    -I Sources/CBLAS -I Sources/CLAPACKE "${srcs[@]}" Fuzz/ReaderFuzz.swift -o "$out/reader-fuzz"
# Seeds: the committed fixtures, each prefixed with the selector byte of its reader.
i=0
for f in Tests/LoRAFuseTests/Fixtures/gguf/*.gguf Tests/LoRAFuseTests/Fixtures/interop/*.gguf; do
    { printf '\x00'; cat "$f"; } > "$out/corpus/seed-gguf-$i"; i=$((i + 1))
done
for f in $(find Tests/LoRAFuseTests/Fixtures -name adapter_config.json | head -8); do
    { printf '\x01'; cat "$f"; } > "$out/corpus/seed-json-$i"; i=$((i + 1))
done
for f in $(find Tests/LoRAFuseTests/Fixtures -name '*.safetensors' -size -64k | head -8); do
    { printf '\x02'; cat "$f"; } > "$out/corpus/seed-st-$i"; i=$((i + 1))
done
"$out/reader-fuzz" -max_total_time="$secs" -max_len=65536 -timeout=5 -artifact_prefix="$out/" "$out/corpus"
