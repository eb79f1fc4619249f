#!/usr/bin/env bash
# bench/smallfiles.sh — many small files on loopback: `sluice copy` against tar | tar, cp -a and
# rsync -a in the same run, on the same generated tree. Prints a markdown table (wall seconds,
# files per second, CPU seconds, ratio to tar) on stdout.
#
#   bench/smallfiles.sh [--files N] [--kib K] [--mixed] [--dirs D] [--runs R] [--work DIR]
#                       [--rtt-ms MS [--rate-mbit R]] [--no-build]
#
# --rtt-ms: across an emulated link instead (shared/tools/wan-emu, as root, in namespaces this
# script makes and removes): `sluice send` to `sluice recv`, and tar | socat → socat | tar with
# the kernel's default TCP congestion control, over R Mbit/s (default 200) and that round trip.
# Reports wall seconds and the share of the link's rate the tree's bytes used.
#
# The tree: N files of K KiB (--mixed: 1..K KiB) of pseudo-random bytes spread over D
# directories, under DIR (default /var/tmp; /dev/shm is tmpfs). tar | socat → socat | tar runs
# when socat is installed (a TCP hop on loopback, as Sluice's). Each tool
# copies into an empty destination on the same filesystem; the page cache is dropped before each
# run when this runs as root. The median of R runs is reported.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
FILES=20000
MAX_KIB=4
MIXED=0
DIRS=40
WORK_PARENT=/var/tmp
RUNS=3
BUILD=1
RTT_MS=""
RATE_MBIT=200
while [ $# -gt 0 ]; do
    case "$1" in
        --files) FILES=$2; shift 2 ;;
        --kib) MAX_KIB=$2; shift 2 ;;
        --mixed) MIXED=1; shift ;;
        --work) WORK_PARENT=$2; shift 2 ;;
        --dirs) DIRS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --rtt-ms) RTT_MS=$2; shift 2 ;;
        --rate-mbit) RATE_MBIT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
SLUICE=${SLUICE:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/sluice}
if [ "$BUILD" = 1 ]; then
    (cd "$REPO_ROOT" && cargo build --release --quiet -p sluice-cli) >&2
fi
WORK=$(mktemp -d "$WORK_PARENT/sluice-small.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

python3 - "$WORK/src" "$FILES" "$MAX_KIB" "$DIRS" "$MIXED" <<'PY'
import os, random, sys
root, files, max_kib, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
mixed = sys.argv[5] == "1"
rng = random.Random(7)
for d in range(dirs):
    os.makedirs(os.path.join(root, f"d{d:04}"), exist_ok=True)
for i in range(files):
    size = rng.randint(1, max_kib) * 1024 - rng.randint(0, 1023) if mixed else max_kib * 1024
    with open(os.path.join(root, f"d{i % dirs:04}", f"f{i:07}.bin"), "wb") as f:
        f.write(rng.randbytes(size))
PY
BYTES=$(du -sb "$WORK/src" | cut -f1)
echo "tree: $FILES files, $DIRS directories, $((BYTES / 1024 / 1024)) MiB" >&2

if [ -n "$RTT_MS" ]; then
    SHARED=$(cd "$REPO_ROOT/../shared" && pwd)
    WAN=$SHARED/tools/wan-emu/wan
    LINK=sluice-small
    # shellcheck source=bench/wanlink.sh
    source "$SCRIPT_DIR/wanlink.sh"
    wanlink_setup "$WORK" "$LINK"
    "$WAN" up "$LINK" --delay-ms $((RTT_MS / 2)) --rate-mbit "$RATE_MBIT" >/dev/null
    now() { date +%s.%N; }
    share() { awk -v b="$BYTES" -v s="$1" -v r="$RATE_MBIT" 'BEGIN {printf "%.1f", 100 * b * 8 / s / (r * 1e6)}'; }
    wan_sluice() {
        rm -rf "$WORK/dst" "$WORK/recv.out" && mkdir -p "$WORK/dst"
        # (The old ticket file is removed first: the loop below could read it before the new
        # receiver's redirection truncates it, and send to a receiver that is gone.)
        "$WAN" exec "$LINK" b "$SLUICE" recv "$WORK/dst" --listen 10.201.0.2:7000 >"$WORK/recv.out" 2>"$WORK/recv.err" &
        for _ in $(seq 1 200); do [ -s "$WORK/recv.out" ] && break; sleep 0.05; done
        local t0 t1 ticket
        ticket=$(head -n 1 "$WORK/recv.out")
        t0=$(now)
        timeout 600 "$WAN" exec "$LINK" a "$SLUICE" send "$WORK/src" "$ticket" >/dev/null 2>"$WORK/send.err" \
            || { echo "sluice failed: $(tail -n 2 "$WORK/send.err")" >&2; "$WAN" exec "$LINK" b pkill -f "$SLUICE recv"; wait; echo nan; return; }
        t1=$(now)
        wait
        awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f\n", b - a}'
    }
    wan_tar() {
        rm -rf "$WORK/dst" && mkdir -p "$WORK/dst"
        "$WAN" exec "$LINK" b bash -c "socat -u TCP-LISTEN:7001,reuseaddr - | tar -C '$WORK/dst' -xf -" &
        sleep 0.5
        local t0 t1
        t0=$(now)
        timeout 600 "$WAN" exec "$LINK" a bash -c "tar -C '$WORK/src' -cf - . | socat -u - TCP:10.201.0.2:7001,retry=100,interval=0.01"
        wait
        t1=$(now)
        awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f\n", b - a}'
    }
    echo "Command: \`bench/smallfiles.sh --files $FILES --kib $MAX_KIB --dirs $DIRS --runs $RUNS --rtt-ms $RTT_MS --rate-mbit $RATE_MBIT\` ($FILES files, $((BYTES / 1024 / 1024)) MiB; median of $RUNS)"
    echo
    echo "| tool | wall s | files/s | % of link |"
    echo "|---|---:|---:|---:|"
    for tool in tar-socat sluice; do
        walls=()
        for _ in $(seq "$RUNS"); do
            if [ "$tool" = sluice ]; then walls+=("$(wan_sluice)"); else walls+=("$(wan_tar)"); fi
        done
        echo "$tool: ${walls[*]} s" >&2
        w=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        awk -v t="$tool" -v w="$w" -v n="$FILES" -v s="$(share "$w")" 'BEGIN {printf "| %s | %.2f | %.0f | %s |\n", t, w, n / w, s}'
    done
    exit 0
fi

drop_caches() {
    sync
    if [ "$(id -u)" = 0 ]; then echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; fi
}

# One timed run of "$@" (a shell snippet using $DST); prints "wall cpu".
timed() {
    local snippet=$1
    rm -rf "$WORK/dst"; mkdir -p "$WORK/dst"
    drop_caches
    local tf="$WORK/time"
    DST="$WORK/dst" SRC="$WORK/src" SLUICE="$SLUICE" /usr/bin/time -f "%e %U %S" -o "$tf" \
        bash -c "$snippet" >/dev/null 2>"$WORK/err" || { echo "failed: $snippet: $(tail -3 "$WORK/err")" >&2; echo "nan nan"; return; }
    awk '{printf "%s %.2f\n", $1, $2 + $3}' "$tf"
}

declare -A SNIPPET=(
    [sluice]='"$SLUICE" copy "$SRC" "$DST"'
    [tar]='tar -C "$SRC" -cf - . | tar -C "$DST" -xf -'
    [cp]='cp -a "$SRC" "$DST/"'
    [rsync]='rsync -a "$SRC" "$DST/"'
    [tar-socat]='p=$(( 20000 + RANDOM % 20000 )); socat -u TCP-LISTEN:$p,bind=127.0.0.1,reuseaddr - | tar -C "$DST" -xf - & tar -C "$SRC" -cf - . | socat -u - TCP:127.0.0.1:$p,retry=100,interval=0.01; wait'
)
ORDER=(tar sluice cp rsync)
command -v socat >/dev/null 2>&1 && ORDER=(tar tar-socat sluice cp rsync)
declare -A WALL CPU
for tool in "${ORDER[@]}"; do
    case $tool in sluice|tar-socat) ;; *) command -v "$tool" >/dev/null || { echo "$tool not installed" >&2; continue; } ;; esac
    walls=(); cpus=()
    for _ in $(seq "$RUNS"); do
        read -r w c < <(timed "${SNIPPET[$tool]}")
        walls+=("$w"); cpus+=("$c")
    done
    WALL[$tool]=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    CPU[$tool]=$(printf '%s\n' "${cpus[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "$tool: ${walls[*]} s" >&2
done
# shellcheck disable=SC2016
MIX=""; [ "$MIXED" = 1 ] && MIX=" --mixed"
echo "Command: \`bench/smallfiles.sh --files $FILES --kib $MAX_KIB$MIX --dirs $DIRS --runs $RUNS --work $WORK_PARENT\` ($FILES files, $((BYTES / 1024 / 1024)) MiB; median of $RUNS)"
echo
echo "| tool | wall s | files/s | CPU s | wall ÷ tar |"
echo "|---|---:|---:|---:|---:|"
for tool in "${ORDER[@]}"; do
    [ -n "${WALL[$tool]:-}" ] || continue
    awk -v t="$tool" -v w="${WALL[$tool]}" -v c="${CPU[$tool]}" -v n="$FILES" -v tar="${WALL[tar]:-nan}" \
        'BEGIN {printf "| %s | %.2f | %.0f | %.2f | %.2f× |\n", t, w, n / w, c, w / tar}'
done
