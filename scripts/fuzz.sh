#!/usr/bin/env bash
# Builds a libFuzzer binary over lorafuse's readers with swiftc -sanitize=fuzzer,address and runs
# each reader as its own target for SECONDS (default 60), niced:
#   scripts/fuzz.sh [--out FILE] [SECONDS] [TARGET...]
#   targets: gguf (GGUF + GGUF LoRA), json (JSON + MLX config), safetensors, request (the
#   server's chat/completion body parser); default all four.
# Per target: corpus in .build/fuzz/corpus-TARGET (seeded from the committed fixtures, kept between
# runs; delete it to start from the seeds), log in .build/fuzz/TARGET.log, crash/timeout/oom inputs as .build/fuzz/TARGET-crash-*.
# A summary (command, machine, and per target executions, exec/s, corpus, cov/ft, crashes, hangs)
# goes to FILE (default .build/fuzz/summary.md); the README's figures come from
#   scripts/fuzz.sh --out Benchmarks/results/fuzz-DATE.md 120
# Exits 1 if any target found a crash, hang or OOM. The seeded mutation test
# (Tests/LoRAFuseTests/Formats/FuzzTests.swift) runs in the normal suite; this is the open-ended
# version. Needs the Linux toolchain's libclang_rt.fuzzer. FUZZ_NICE (default 10) sets the niceness.
set -euo pipefail
cd "$(dirname "$0")/.."
invocation="scripts/fuzz.sh $*"
summary=.build/fuzz/summary.md
if [[ "${1:-}" == "--out" ]]; then summary="$2"; shift 2; fi
secs="${1:-60}"
[[ $# -gt 0 ]] && shift
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(gguf json safetensors request)
niceness="${FUZZ_NICE:-10}"
out=.build/fuzz
mkdir -p "$out" "$(dirname "$summary")"

# The library without the files that need Yams (fusion plans), plus the fuzz entry point.
mapfile -t srcs < <(find Sources/LoRAFuse -name '*.swift' | grep -v -e FusionPlan.swift | sort)
# Rebuilt only when a source is newer than the binary (a build takes minutes on 2 cores); the
# linker's many "Cannot export local symbol" warnings go to build.log, shown only on failure.
# The CQuant C target (quantized kernels) is compiled here as SwiftPM would, with a module map
# for `import CQuant`; its objects are linked in.
build_note="reused (no source newer than it)"
if [[ ! -x "$out/reader-fuzz" || -n "$(find "${srcs[@]}" Sources/CQuant Fuzz/ReaderFuzz.swift -newer "$out/reader-fuzz" | head -1)" ]]; then
    build_start=$(date +%s)
    mkdir -p "$out/cquant"
    here="$(pwd)"
    printf 'module CQuant {\n  header "%s/Sources/CQuant/include/cquant.h"\n  header "%s/Sources/CQuant/include/cquant_dequant.h"\n  export *\n}\n' \
        "$here" "$here" > "$out/cquant/module.modulemap"
    objs=()
    for c in Sources/CQuant/*.c; do
        o="$out/cquant/$(basename "$c" .c).o"
        nice -n "$niceness" clang -O2 -fPIC -I Sources/CQuant/include -c "$c" -o "$o" >> "$out/build.log" 2>&1 || { cat "$out/build.log" >&2; exit 1; }
        objs+=("$o")
    done
    if ! nice -n "$niceness" swiftc -O -sanitize=fuzzer,address -parse-as-library -module-name LoRAFuseFuzz \
        -I Sources/CBLAS -I Sources/CLAPACKE -I "$out/cquant" "${srcs[@]}" Fuzz/ReaderFuzz.swift "${objs[@]}" -lm \
        -o "$out/reader-fuzz" > "$out/build.log" 2>&1; then
        grep -v 'Cannot export local symbol' "$out/build.log" >&2; exit 1
    fi
    build_note="built in $(( $(date +%s) - build_start )) s"
fi

# Seeds: the committed fixtures, each prefixed with the selector byte of its reader (the byte is
# skipped when LORAFUSE_FUZZ_READER pins the reader, and picks it when the binary is run bare).
seed() { # target selector-byte files...
    local dir="$out/corpus-$1" byte="$2" i=0; shift 2
    mkdir -p "$dir"
    for f in "$@"; do { printf "$byte"; cat "$f"; } > "$dir/seed-$i"; i=$((i + 1)); done
}
seed gguf '\x00' Tests/LoRAFuseTests/Fixtures/gguf/*.gguf Tests/LoRAFuseTests/Fixtures/interop/*.gguf
mapfile -t json_seeds < <(find Tests/LoRAFuseTests/Fixtures -name adapter_config.json | sort | head -8)
seed json '\x01' "${json_seeds[@]}"
mapfile -t st_seeds < <(find Tests/LoRAFuseTests/Fixtures -name '*.safetensors' -size -64k | sort | head -8)
seed safetensors '\x02' "${st_seeds[@]}"
# Request bodies: what OpenAI's clients and lorafuse's own fields look like.
reqdir="$out/request-seeds"
mkdir -p "$reqdir"
printf '%s' '{"model":"alpha","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":8,"temperature":0.7,"top_p":0.9,"seed":3,"stop":["a","b"],"stream":true,"stream_options":{"include_usage":true}}' > "$reqdir/chat.json"
printf '%s' '{"model":"tiny","prompt":["abc"],"max_completion_tokens":4,"top_k":5,"presence_penalty":0.5,"frequency_penalty":-1,"n":1,"logprobs":false,"adapters":[{"name":"alpha","weight":0.5},{"name":"beta"}],"merge":{"method":"ties","density":0.5,"rank":4}}' > "$reqdir/completion.json"
printf '%s' '{"model":"m","messages":[{"role":"developer","content":null}],"seed":18446744073709551615,"tools":[],"adapters":null}' > "$reqdir/edge.json"
seed request '\x03' "$reqdir"/*.json

# The safetensors target writes each input to a scratch file (the reader maps files): on tmpfs
# that runs about 6x faster than on /tmp's disk.
scratch=/tmp/
[[ -d /dev/shm && -w /dev/shm ]] && scratch=/dev/shm/
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
{
    echo "# Fuzzing lorafuse's readers"
    echo
    echo "Written by scripts/fuzz.sh, run as \`$invocation\`, $(date -u +%Y-%m-%dT%H:%MZ)."
    echo
    echo "- machine: $(nproc) cores, $cpu, $(free -g | awk '/^Mem:/ {print $2}') GB RAM, $(uname -sr); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- code: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$( [[ -n "$(git status --porcelain -- Sources Fuzz 2>/dev/null)" ]] && echo ' with uncommitted changes in Sources/ or Fuzz/')"
    echo "- toolchain: $(swiftc --version 2>&1 | head -1)"
    echo "- binary: \`swiftc -O -sanitize=fuzzer,address\` over Sources/LoRAFuse (without FusionPlan.swift) + Fuzz/ReaderFuzz.swift, CQuant's C files by \`clang -O2\`, $build_note"
    echo "- each target: \`TMPDIR=$scratch LORAFUSE_FUZZ_READER=TARGET nice -n $niceness .build/fuzz/reader-fuzz -max_total_time=$secs -max_len=65536 -timeout=5 -print_final_stats=1 -artifact_prefix=.build/fuzz/TARGET- .build/fuzz/corpus-TARGET\`"
    echo "- seeds: the committed fixtures (gguf: Fixtures/gguf/*.gguf and interop/*.gguf; json: the first 8 adapter_config.json; safetensors: the first 8 *.safetensors under 64 KB); request: 3 bodies written by the script"
    echo
    echo "| target | readers | seconds | executions | exec/s | corpus at start | final corpus (inputs/bytes) | cov | ft | crashes | hangs (>5 s) | OOMs | peak RSS |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$summary.tmp"

status=0
for t in "${targets[@]}"; do
    case "$t" in
        gguf) readers="GGUFFile, floats of 8 tensors, GGUFLoRA.read" ;;
        json) readers="JSONValue.parse, MLXAdapter.parseConfig" ;;
        safetensors) readers="SafetensorsFile, matrix of 8 tensors" ;;
        request) readers="RequestParser.parse as chat and as completion" ;;
        *) echo "unknown target $t (gguf, json, safetensors, request)" >&2; exit 2 ;;
    esac
    rm -f "$out/$t"-crash-* "$out/$t"-timeout-* "$out/$t"-oom-* "$out/$t"-leak-*
    log="$out/$t.log"
    start=$(date +%s)
    set +e
    TMPDIR="$scratch" LORAFUSE_FUZZ_READER="$t" nice -n "$niceness" "$out/reader-fuzz" -max_total_time="$secs" \
        -max_len=65536 -timeout=5 -print_final_stats=1 -artifact_prefix="$out/$t-" "$out/corpus-$t" > "$log" 2>&1 &
    pid=$!
    wait $pid
    rc=$?
    set -e
    rm -f "${scratch}lorafuse-fuzz-$pid.safetensors"   # the harness's scratch file (named by its pid)
    elapsed=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    seeds=$(grep -m1 -o 'INITED.*' "$log" | grep -o 'corp: [0-9]*' | grep -o '[0-9]*' || true)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)
    corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' <<<"$last" | sed 's/corp: //' || true)
    crashes=$(find "$out" -maxdepth 1 \( -name "$t-crash-*" -o -name "$t-leak-*" \) | wc -l)
    hangs=$(find "$out" -maxdepth 1 -name "$t-timeout-*" | wc -l)
    ooms=$(find "$out" -maxdepth 1 -name "$t-oom-*" | wc -l)
    echo "| $t | $readers | $elapsed | ${execs:-?} | ${rate:-?} | ${seeds:-?} | ${corp:-?} | ${cov:-?} | ${ft:-?} | $crashes | $hangs | $ooms | ${rss:-?} MB |" >> "$summary.tmp"
    if [[ $rc -ne 0 || $crashes -gt 0 || $hangs -gt 0 || $ooms -gt 0 ]]; then
        status=1
        echo "$t: libFuzzer exited $rc; see $log and $out/$t-*" >&2
    fi
done
{
    echo
    echo "cov = code edges reached, ft = libFuzzer's features (edge × hit-count buckets); both are"
    echo "libFuzzer's own counts at the end of the run. Executions and exec/s are libFuzzer's"
    echo "\`stat::number_of_executed_units\` and \`stat::average_exec_per_sec\`; the machine is shared,"
    echo "so exec/s varies with its load (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))."
} >> "$summary.tmp"
mv "$summary.tmp" "$summary"
cat "$summary"
exit $status
