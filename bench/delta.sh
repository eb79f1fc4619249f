#!/usr/bin/env bash
# bench/delta.sh — Sluice against rsync on the cases where the destination already holds an
# older version, plus resume after an interruption. One run, loopback, page-cache-hot files.
#
#   bench/delta.sh [--size 1G] [--no-build] [--resume-only] [--cases "insert delete"] [--no-resume]
#
# Cases (each starts from a destination holding the original file):
#   edit10    10 scattered 4 KiB edits in place
#   append    1 MiB appended
#   unchanged nothing changed
#   insert    8 KiB inserted at 1 % of the file (every later block shifts)
#   delete    100,000 bytes deleted in the middle
#   shifts100 100 small edits that shift what follows: 7-byte deletions and insertions, every
#             other one, at fixed pseudo-random offsets (a text file or a dump edited here and there)
# Tools: rsync over ssh (default delta algorithm, against an sshd this script starts on
# 127.0.0.1 and stops), `sluice copy` at the default 1 MiB blocks, at --block-size 64K, and at
# 1 MiB and 64K with --inplace (rsync's default builds a new file, like Sluice's default).
# Bytes on the wire: rsync's own "Total bytes sent" + "Total bytes received"; Sluice's UDP bytes
# both ways on the sender's QUIC connection (`wire_bytes` of `--json`).
# Resume: medians of five full `sluice copy` runs and of five second runs after a SIGKILL at 50 %,
# with and without --rehash (--resume-only: just these).
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=bench/peers.sh
. "$SCRIPT_DIR/peers.sh"

SIZE=1G
BUILD=1
DELTA=1
CASES=""
RESUME=1
while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --resume-only) DELTA=0; shift ;;
        --cases) CASES=$2; shift 2 ;;
        --no-resume) RESUME=0; shift ;;
        *) echo "usage: $0 [--size 1G] [--no-build] [--resume-only] [--cases LIST] [--no-resume]" >&2; exit 2 ;;
    esac
done
SLUICE=${SLUICE:-$REPO/target/release/sluice}
[ "$BUILD" = 1 ] && (cd "$REPO" && cargo build --release -p sluice-cli >&2)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-delta.XXXXXX")
PEER_SSH_HOST=sluice-bench
cleanup() { peer_sshd_stop; rm -rf "$WORK"; }
trap cleanup EXIT
if [ "$DELTA" = 1 ]; then
    peer_install_packages rsync openssh-server openssh-client
    peer_sshd_setup "$WORK/ssh"
    peer_sshd_start
fi

bytes=$(numfmt --from=iec "$SIZE")
mkdir -p "$WORK/src" "$WORK/orig"
head -c "$bytes" /dev/urandom > "$WORK/orig/data.bin"

echo "Command: \`bench/delta.sh --size $SIZE\`  "
echo "Kernel: \`$(uname -r)\`, nproc: $(nproc), date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
[ "$DELTA" = 1 ] && echo "| case | tool | wall s | bytes on the wire | payload bytes | vs rsync (bytes) | vs rsync (time) |"
[ "$DELTA" = 1 ] && echo "|---|---|---:|---:|---:|---:|---:|"

make_case() { # $1 case: builds $WORK/src/data.bin from the original
    cp "$WORK/orig/data.bin" "$WORK/src/data.bin"
    case $1 in
        edit10)
            for i in $(seq 0 9); do
                head -c 4096 /dev/urandom | dd of="$WORK/src/data.bin" bs=4096 \
                    seek=$(( (i * bytes / 10 + 12345) / 4096 )) conv=notrunc status=none
            done ;;
        append) head -c 1048576 /dev/urandom >> "$WORK/src/data.bin" ;;
        insert) # 8 KiB put in at 1 % of the file: every later byte shifts
            { head -c $(( bytes / 100 + 17 )) "$WORK/orig/data.bin"
              head -c 8192 /dev/urandom
              tail -c +$(( bytes / 100 + 18 )) "$WORK/orig/data.bin"; } > "$WORK/src/data.bin" ;;
        delete) # 100,000 bytes taken out in the middle
            { head -c $(( bytes / 2 + 5 )) "$WORK/orig/data.bin"
              tail -c +$(( bytes / 2 + 100006 )) "$WORK/orig/data.bin"; } > "$WORK/src/data.bin" ;;
        shifts100) # from the end back, so that each offset is the original's
            python3 - "$WORK/orig/data.bin" "$WORK/src/data.bin" <<'PY'
import random, sys
data = bytearray(open(sys.argv[1], 'rb').read())
rng = random.Random(5)
for i, at in enumerate(sorted(rng.sample(range(len(data) - 100), 100), reverse=True)):
    if i % 2:
        data[at:at] = b'INSERT!'
    else:
        del data[at:at + 7]
open(sys.argv[2], 'wb').write(data)
PY
            ;;
        unchanged) ;;
    esac
    touch -d '2020-01-01' "$WORK/src/data.bin"
    cat "$WORK/src/data.bin" > /dev/null
}

fresh_dest() { # $1 dir: holds the original version, on disk (not dirty in the page cache)
    rm -rf "$1"; mkdir -p "$1"; cp "$WORK/orig/data.bin" "$1/data.bin"; sync "$1/data.bin"
}

now() { date +%s.%N; }

cases=(edit10 append unchanged insert delete shifts100)
# shellcheck disable=SC2206
[ -n "$CASES" ] && cases=($CASES)
[ "$DELTA" = 1 ] || cases=()
for c in "${cases[@]}"; do
    make_case "$c"
    fresh_dest "$WORK/rsync"
    t0=$(now)
    stats=$(rsync --stats -e "ssh -F $PEER_SSH_CONFIG" "$WORK/src/data.bin" "$PEER_SSH_HOST:$WORK/rsync/")
    t1=$(now)
    r_sent=$(awk -F': ' '/^Total bytes sent/ {gsub(",","",$2); print $2}' <<<"$stats")
    r_recv=$(awk -F': ' '/^Total bytes received/ {gsub(",","",$2); print $2}' <<<"$stats")
    r_wire=$(( r_sent + r_recv ))
    r_time=$(echo "$t1 - $t0" | bc -l)
    cmp -s "$WORK/src/data.bin" "$WORK/rsync/data.bin" || echo "rsync result differs!" >&2
    printf '| %s | rsync over ssh | %.2f | %d | — | 1.00 | 1.00 |\n' "$c" "$r_time" "$r_wire"
    for opts in "--block-size 1M" "--block-size 1M --inplace" "--block-size 64K" "--block-size 64K --inplace"; do
        fresh_dest "$WORK/sluice"
        t0=$(now)
        # shellcheck disable=SC2086
        js=$("$SLUICE" --json copy $opts "$WORK/src/data.bin" "$WORK/sluice" | tail -n 1)
        t1=$(now)
        cmp -s "$WORK/src/data.bin" "$WORK/sluice/data.bin" || echo "sluice result differs!" >&2
        wire=$(sed 's/.*"wire_bytes":\([0-9]*\).*/\1/' <<<"$js")
        payload=$(sed 's/.*"payload_bytes":\([0-9]*\).*/\1/' <<<"$js")
        t=$(echo "$t1 - $t0" | bc -l)
 printf '| %s | `sluice copy %s` | %.2f | %d | %d | %.2f | %.2f |\n' \
            "$c" "$opts" "$t" "$wire" "$payload" "$(echo "$wire / $r_wire" | bc -l)" "$(echo "$t / $r_time" | bc -l)"
    done
done

# Resume after a kill at 50 %: five rounds of a full run, a kill-and-resume, and a
# kill-and-resume with --rehash (the sender reads and hashes the kept half too), interleaved so
# that drift on this VM hits all three alike; medians (the first round is often the slowest, and
# runs of the same thing vary by ±15 % here).
[ "$RESUME" = 1 ] || exit 0
median() { sort -n | sed -n 3p; }
cp "$WORK/orig/data.bin" "$WORK/src/data.bin"
# A file changed within 3 s of being listed is never vouched for (docs/protocol.md, section 7);
# a dataset being moved has not just been written.
sleep 3
interrupted() { # a run into $WORK/resume killed once half the part file is on disk
    rm -rf "$WORK/resume"; mkdir -p "$WORK/resume"
    "$SLUICE" copy "$WORK/src/data.bin" "$WORK/resume" > /dev/null 2>&1 &
    pid=$!
    part="$WORK/resume/.data.bin.sluice-part"
    for _ in $(seq 1 30000); do
        sz=$(( $(stat -c %b "$part" 2>/dev/null || echo 0) * 512 ))
        [ "$sz" -ge $(( bytes / 2 )) ] && break
        sleep 0.001
    done
    kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
}
fulls=(); seconds=(); payloads=(); rehashes=(); rpayloads=()
for _ in 1 2 3 4 5; do
    rm -rf "$WORK/full"
    t0=$(now); "$SLUICE" copy "$WORK/src/data.bin" "$WORK/full/" > /dev/null; t1=$(now)
    fulls+=("$(echo "$t1 - $t0" | bc -l)")
    for opts in "" "--rehash"; do
        interrupted
        t0=$(now)
        # shellcheck disable=SC2086
        js=$("$SLUICE" --json copy $opts "$WORK/src/data.bin" "$WORK/resume" | tail -n 1)
        t1=$(now)
        cmp -s "$WORK/src/data.bin" "$WORK/resume/data.bin" || echo "resumed result differs!" >&2
        p=$(sed 's/.*"payload_bytes":\([0-9]*\).*/\1/' <<<"$js")
        if [ -z "$opts" ]; then
            seconds+=("$(echo "$t1 - $t0" | bc -l)"); payloads+=("$p")
        else
            rehashes+=("$(echo "$t1 - $t0" | bc -l)"); rpayloads+=("$p")
        fi
    done
done
full=$(printf '%s\n' "${fulls[@]}" | median)
second=$(printf '%s\n' "${seconds[@]}" | median)
rehash=$(printf '%s\n' "${rehashes[@]}" | median)
echo
echo "| resume (median of 5) | wall s | runs | payload bytes |"
echo "|---|---:|---|---:|"
printf '| full `sluice copy` | %.2f | %s | %d |\n' "$full" "$(printf '%.2f ' "${fulls[@]}")" "$bytes"
printf '| second run after SIGKILL at 50 %% | %.2f (%.0f %% of full) | %s | %s |\n' "$second" \
    "$(echo "100 * $second / $full" | bc -l)" "$(printf '%.2f ' "${seconds[@]}")" "${payloads[*]}"
printf '| the same with `--rehash` | %.2f (%.0f %% of full) | %s | %s |\n' "$rehash" \
    "$(echo "100 * $rehash / $full" | bc -l)" "$(printf '%.2f ' "${rehashes[@]}")" "${rpayloads[*]}"
