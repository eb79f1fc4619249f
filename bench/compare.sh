#!/usr/bin/env bash
# bench/compare.sh — end-to-end loopback comparison of Sluice against its peers.
# See bench/README.md. Run as root on Debian 12. Prints a markdown table on stdout;
# progress and logs go to stderr.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=bench/peers.sh
. "$SCRIPT_DIR/peers.sh"

quote_arg() {
    if [[ $1 =~ ^[A-Za-z0-9_./,:=@+%-]+$ ]]; then printf '%s' "$1"; else printf '%q' "$1"; fi
}
CMDLINE=$0
for _a in "$@"; do CMDLINE+=" $(quote_arg "$_a")"; done
ALL_TOOLS=(copy copy-tcp send-recv send-recv-tcp mem cp iperf3 scp rsync qcp)
SIZE_ARG=2G
ONLY=""
BUILD=1
KEEP=0
RSS_SPARSE=0
TOOL_TIMEOUT=${TOOL_TIMEOUT:-600}
SPARSE_SIZE=${SPARSE_SIZE:-20G}

RSS_TARGET_MIB=256
QUINN_REF="quinn 0.11 \`bench\` crate \`bulk\` (memory→memory, AES-128-GCM): ~1,400 MB/s on this machine kind (docs: /work/shared/PERFORMANCE.md, not measured by this run)"

usage() {
    cat <<EOF
Usage: bench/compare.sh [--size SIZE] [--only TOOL,...] [--no-build] [--keep] [--rss-sparse]

  --size SIZE     size of the random source file (IEC suffixes: 256M, 512M, 2G = 2 GiB;
                  default 2G). Also passed (as bytes) to \`sluice bench --size\`.
  --only LIST     comma-separated subset, in any order (run order is fixed):
                  ${ALL_TOOLS[*]} sparse
  --no-build      do not run \`cargo build --release -p sluice-cli\` (also skipped when
                  SLUICE is set: that binary is used as is)
  --keep          keep the temp dir (source file, logs, time files)
  --rss-sparse    also run the peak-RSS check: \`sluice copy\` of a ${SPARSE_SIZE} sparse file
                  (same as adding 'sparse' to --only; SPARSE_SIZE=100G for another size)
  --mode rss      only the peak-RSS check (= --only sparse)
  -h, --help      this text

Environment: SLUICE (sluice binary; default \${CARGO_TARGET_DIR:-<repo>/target}/release/sluice),
             TOOL_TIMEOUT (seconds per tool run, default 600), TMPDIR (where the temp dir goes;
             must be on the filesystem you want to measure), CARGO_BUILD_JOBS (qcp install).
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE_ARG=${2:?--size needs a value}; shift 2 ;;
        --size=*) SIZE_ARG=${1#*=}; shift ;;
        --only) ONLY=${2:?--only needs a value}; shift 2 ;;
        --only=*) ONLY=${1#*=}; shift ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        --rss-sparse) RSS_SPARSE=1; shift ;;
        --mode) [ "${2:-}" = rss ] || { echo "unknown --mode ${2:-}" >&2; exit 2; }; ONLY=sparse; shift 2 ;;
        --mode=rss) ONLY=sparse; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "run as root (it starts an sshd and logs in as root)" >&2; exit 2; }

SIZE=$(numfmt --from=iec "${SIZE_ARG%B}" 2>/dev/null) || { echo "bad --size: $SIZE_ARG" >&2; exit 2; }
[ "$SIZE" -gt 0 ] || { echo "bad --size: $SIZE_ARG" >&2; exit 2; }

declare -A WANT=()
if [ -n "$ONLY" ]; then
    IFS=, read -r -a _only <<<"$ONLY"
    for t in "${_only[@]}"; do
        case " ${ALL_TOOLS[*]} sparse " in
            *" $t "*) WANT[$t]=1 ;;
            *) echo "unknown tool in --only: $t (known: ${ALL_TOOLS[*]} sparse)" >&2; exit 2 ;;
        esac
    done
else
    for t in "${ALL_TOOLS[@]}"; do WANT[$t]=1; done
fi
[ "$RSS_SPARSE" = 1 ] && WANT[sparse]=1
want() { [ -n "${WANT[$1]:-}" ]; }

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compare.XXXXXX")
BG_PGIDS=()
cleanup() {
    local rc=$? pg
    set +e
    [ -n "$FG_PGID" ] && kill -TERM -- "-$FG_PGID" 2>/dev/null
    peer_sshd_stop
    for pg in "${BG_PGIDS[@]}"; do
        kill -TERM -- "-$pg" 2>/dev/null
        wait "$pg" 2>/dev/null
    done
    if [ "$KEEP" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Start "$@" in the background in its own process group (so cleanup can stop all of it).
# Sets BG_PID (== its pgid).
start_bg() {
    local out=$1 err=$2; shift 2
    rm -f "$out" # a waiter must not read the last run's output before the redirection truncates it
    setsid "$@" >"$out" 2>"$err" </dev/null &
    BG_PID=$!
    BG_PGIDS+=("$BG_PID")
}
forget_bg() {
    local pg=$1 i
    for i in "${!BG_PGIDS[@]}"; do
        [ "${BG_PGIDS[$i]}" = "$pg" ] && unset 'BG_PGIDS[i]'
    done
    return 0
}

# ---------------------------------------------------------------- packages, binaries
need_pkgs=(time)
command -v jq >/dev/null || need_pkgs+=(jq)
command -v ss >/dev/null || need_pkgs+=(iproute2)
want iperf3 && need_pkgs+=(iperf3)
{ want scp || want rsync || want qcp; } && need_pkgs+=(openssh-server openssh-client)
want rsync && need_pkgs+=(rsync)
peer_install_packages "${need_pkgs[@]}"

# An explicit $SLUICE is used as is (no build); otherwise build the workspace's sluice-cli.
[ -n "${SLUICE:-}" ] && BUILD=0
SLUICE=${SLUICE:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/sluice}
BUILD_FAILED=0
if { want copy || want send-recv || want mem || want sparse; } && [ "$BUILD" = 1 ]; then
    log "cargo build --release -p sluice-cli"
    (cd "$REPO_ROOT" && cargo build --release -p sluice-cli) >&2 || BUILD_FAILED=1
fi

QCP_ROOT=$SCRIPT_DIR/.tools
QCP=""
if want qcp; then
    if [ -x "$QCP_ROOT/bin/qcp" ]; then
        QCP=$QCP_ROOT/bin/qcp
    elif command -v qcp >/dev/null; then
        QCP=$(command -v qcp)
    else
        log "installing qcp into $QCP_ROOT (several minutes)"
        nice -n 19 cargo install qcp --locked --root "$QCP_ROOT" >&2 && QCP=$QCP_ROOT/bin/qcp || true
    fi
fi

# ---------------------------------------------------------------- results
declare -A R_WALL=() R_MBPS=() R_CPU=() R_RSS=() R_CHECK=() R_NOTE=()
ROWS=()
TIMEFMT='%e %U %S %M'

# timed TIMEFILE CMD... — CMD under /usr/bin/time and `timeout`, stdin from /dev/null.
# Run in the background in its own process group and `wait` for it: a Ctrl-C/TERM then
# interrupts `wait`, the trap runs and cleanup stops the group (a foreground child that handles
# SIGINT itself, like scp, would make bash swallow the signal and go on to the next tool).
FG_PGID=""
timed() {
    local tf=$1 rc=0; shift
    setsid /usr/bin/time -f "$TIMEFMT" -o "$tf" timeout --foreground -k 10 "$TOOL_TIMEOUT" "$@" </dev/null &
    FG_PGID=$!
    wait "$FG_PGID" || rc=$?
    FG_PGID=""
    return $rc
}
# time_cpu TIMEFILE -> "user+sys" seconds; time_rss TIMEFILE -> KiB. The last line of the
# file is ours (a "Command exited with non-zero status" line may precede it).
time_cpu() { tail -n1 "$1" | awk '{ printf "%.2f", $2 + $3 }'; }
time_rss() { tail -n1 "$1" | awk '{ print $4 }'; }
now() { date +%s.%N; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
fadd() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a + b }'; }
fmax() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }

# record ROW WALL CPU RSS_KIB CHECK [NOTE [MBPS]] — MB/s is SIZE/WALL unless MBPS is given.
record() {
    local row=$1 wall=$2 cpu=$3 rss=$4 check=$5 note=${6:-} mbps=${7:-}
    R_WALL[$row]=$wall
    [ -n "$mbps" ] || mbps=$(awk -v s="$SIZE" -v w="$wall" 'BEGIN { printf "%.0f", s / w / 1e6 }')
    R_MBPS[$row]=$mbps
    R_CPU[$row]=$cpu
    R_RSS[$row]=$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')
    R_CHECK[$row]=$check
    [ -n "$note" ] && R_NOTE[$row]=$note
    log "$row: ${wall}s ${R_MBPS[$row]} MB/s cpu ${cpu}s rss ${R_RSS[$row]} MiB [$check]"
}
fail() {
    local row=$1; shift
    R_CHECK[$row]="FAILED: $*"
    log "$row FAILED: $*"
    return 1
}
add_row() { ROWS+=("$1"); }

SRC=$WORK/src/random.bin
DST=$WORK/dst
fresh_dst() {
    rm -rf "$DST"
    sync
    mkdir -p "$DST"
    cat "$SRC" >/dev/null        # page-cache hot
}
verify() {  # verify FILE -> prints ok or FAILED ...
    if [ ! -f "$1" ]; then echo "FAILED: no destination file"
    elif cmp -s "$SRC" "$1"; then echo ok
    else echo "FAILED: destination differs"
    fi
}
sluice_ok() {
    local row=$1
    [ "$BUILD_FAILED" = 0 ] || { fail "$row" "cargo build failed"; return 1; }
    [ -x "$SLUICE" ] || { fail "$row" "no binary at $SLUICE"; return 1; }
}
tail_err() { tail -n 3 "$1" 2>/dev/null | tr '\n' ' ' | cut -c1-160; }

# ---------------------------------------------------------------- tools
# run_copy [TRANSPORT] — `sluice copy`, on the default transport (QUIC) or the one named.
run_copy() {
    local transport=${1:-} row='`sluice copy`' tf=$WORK/t.copy t0 t1 rc=0
    local -a flags=()
    [ -z "$transport" ] || { flags=(--transport "$transport"); row="\`sluice copy --transport $transport\`"; }
    add_row "$row"; sluice_ok "$row" || return 1
    fresh_dst
    t0=$(now)
    timed "$tf" "$SLUICE" "${flags[@]}" copy "$SRC" "$DST" >"$WORK/copy.out" 2>"$WORK/copy.err" || rc=$?
    t1=$(now)
    [ $rc = 0 ] || { fail "$row" "exit $rc: $(tail_err "$WORK/copy.err")"; return 1; }
    record "$row" "$(fsub "$t1" "$t0")" "$(time_cpu "$tf")" "$(time_rss "$tf")" "$(verify "$DST/${SRC##*/}")"
}

# run_send_recv [TRANSPORT] — two processes, on the default transport (QUIC) or the one named.
run_send_recv() {
    local transport=${1:-} row='`sluice send` + `sluice recv`' rtf=$WORK/t.recv stf=$WORK/t.send port pid ticket="" i t0 t1 rc=0 rrc=0
    local -a flags=()
    [ -z "$transport" ] || { flags=(--transport "$transport"); row="\`sluice send\` + \`sluice recv\`, --transport $transport"; }
    add_row "$row"; sluice_ok "$row" || return 1
    fresh_dst
    port=$(peer_free_port)
    start_bg "$WORK/recv.out" "$WORK/recv.err" /usr/bin/time -f "$TIMEFMT" -o "$rtf" \
        timeout --foreground -k 10 "$TOOL_TIMEOUT" "$SLUICE" "${flags[@]}" recv "$DST" --listen "127.0.0.1:$port"
    pid=$BG_PID
    for i in $(seq 1 600); do          # up to 30 s for the ticket line
        if [ -s "$WORK/recv.out" ] && [ "$(wc -l <"$WORK/recv.out")" -ge 1 ]; then
            ticket=$(head -n1 "$WORK/recv.out"); break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$ticket" ]; then
        kill -TERM -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null; forget_bg "$pid"
        fail "$row" "receiver printed no ticket: $(tail_err "$WORK/recv.err")"; return 1
    fi
    t0=$(now)
    timed "$stf" "$SLUICE" "${flags[@]}" send "$SRC" "$ticket" >"$WORK/send.out" 2>"$WORK/send.err" || rc=$?
    wait "$pid" || rrc=$?
    t1=$(now)
    forget_bg "$pid"
    [ $rc = 0 ] || { fail "$row" "send exit $rc: $(tail_err "$WORK/send.err")"; return 1; }
    [ $rrc = 0 ] || { fail "$row" "recv exit $rrc: $(tail_err "$WORK/recv.err")"; return 1; }
    record "$row" "$(fsub "$t1" "$t0")" "$(fadd "$(time_cpu "$stf")" "$(time_cpu "$rtf")")" \
        "$(fmax "$(time_rss "$stf")" "$(time_rss "$rtf")")" "$(verify "$DST/${SRC##*/}")" \
        "wall = from starting \`send\` until both processes exited; CPU = send + recv"
}

run_mem() {
    local row='`sluice bench` (mem→mem, hashed and verified)' tf=$WORK/t.mem t0 t1 rc=0
    add_row "$row"; sluice_ok "$row" || return 1
    t0=$(now)
    timed "$tf" "$SLUICE" bench --size "$SIZE" --interval 100 >"$WORK/mem.out" 2>"$WORK/mem.err" || rc=$?
    t1=$(now)
    [ $rc = 0 ] || { fail "$row" "exit $rc: $(tail_err "$WORK/mem.err")"; return 1; }
    record "$row" "$(fsub "$t1" "$t0")" "$(time_cpu "$tf")" "$(time_rss "$tf")" "n/a (no file)" \
        "whole process (setup included), one process for both ends; its own report: $(tail -n1 "$WORK/mem.out" | cut -c1-160)"
}

run_cp() {
    local row='`cp` (page cache)' tf=$WORK/t.cp t0 t1 rc=0
    add_row "$row"
    fresh_dst
    t0=$(now)
    timed "$tf" cp "$SRC" "$DST/" 2>"$WORK/cp.err" || rc=$?
    t1=$(now)
    [ $rc = 0 ] || { fail "$row" "exit $rc: $(tail_err "$WORK/cp.err")"; return 1; }
    record "$row" "$(fsub "$t1" "$t0")" "$(time_cpu "$tf")" "$(time_rss "$tf")" "$(verify "$DST/${SRC##*/}")"
}

run_iperf3() {
    local row='iperf3 TCP (mem→mem)' stf=$WORK/t.iperf3s ctf=$WORK/t.iperf3c port pid rc=0 src=0 wall
    add_row "$row"
    port=$(peer_free_port)
    start_bg "$WORK/iperf3s.out" "$WORK/iperf3s.err" /usr/bin/time -f "$TIMEFMT" -o "$stf" \
        timeout --foreground -k 10 "$TOOL_TIMEOUT" iperf3 -s -1 -B 127.0.0.1 -p "$port"
    pid=$BG_PID
    peer_wait_listen "$port" 10 || { kill -TERM -- "-$pid" 2>/dev/null; forget_bg "$pid"; fail "$row" "server did not start"; return 1; }
    timed "$ctf" iperf3 -c 127.0.0.1 -p "$port" -n "$SIZE" -J >"$WORK/iperf3.json" 2>"$WORK/iperf3c.err" || rc=$?
    wait "$pid" || src=$?
    forget_bg "$pid"
    [ $rc = 0 ] || { fail "$row" "client exit $rc: $(jq -r '.error // empty' "$WORK/iperf3.json" 2>/dev/null)"; return 1; }
    [ $src = 0 ] || { fail "$row" "server exit $src: $(tail_err "$WORK/iperf3s.err")"; return 1; }
    wall=$(jq -r '.end.sum_received.seconds' "$WORK/iperf3.json") || { fail "$row" "bad JSON"; return 1; }
    record "$row" "$(printf '%.3f' "$wall")" "$(fadd "$(time_cpu "$ctf")" "$(time_cpu "$stf")")" \
        "$(fmax "$(time_rss "$ctf")" "$(time_rss "$stf")")" "n/a (no file)" \
        "wall s and MB/s are iperf3's own (JSON end.sum_received: $(jq -r '.end.sum_received.bytes' "$WORK/iperf3.json") bytes received in the measured interval); CPU/RSS from /usr/bin/time on client and server" \
        "$(jq -r '.end.sum_received.bits_per_second / 8e6 | floor' "$WORK/iperf3.json")"
}

# run_ssh_tool ROW NAME CMD... — one-shot sshd (its whole tree under /usr/bin/time) + client.
SSH_READY=0
ssh_ready() {
    [ "$SSH_READY" = 1 ] && return 0
    local qdir=""
    [ -n "$QCP" ] && qdir=$(dirname "$QCP")
    peer_sshd_setup "$WORK/ssh" "$qdir" >&2 || return 1
    SSH_READY=1
}
run_ssh_tool() {
    local row=$1 name=$2; shift 2
    local stf=$WORK/t.$name.server ctf=$WORK/t.$name.client t0 t1 rc=0
    ssh_ready || { fail "$row" "sshd setup failed"; return 1; }
    fresh_dst
    peer_sshd_start_once "$stf" || { peer_sshd_stop; fail "$row" "sshd did not start"; return 1; }
    t0=$(now)
    timed "$ctf" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    t1=$(now)
    peer_sshd_wait_exit 30 || { log "sshd still running after $name; stopping it"; peer_sshd_stop; }
    [ $rc = 0 ] || { fail "$row" "exit $rc: $(tail_err "$WORK/$name.err")"; return 1; }
    [ -s "$stf" ] || { fail "$row" "no server-side time file"; return 1; }
    record "$row" "$(fsub "$t1" "$t0")" "$(fadd "$(time_cpu "$ctf")" "$(time_cpu "$stf")")" \
        "$(fmax "$(time_rss "$ctf")" "$(time_rss "$stf")")" "$(verify "$DST/${SRC##*/}")" "${SSH_NOTE:-}"
}
run_scp() {
    local row='scp `aes128-gcm@openssh.com`'
    add_row "$row"
    ssh_ready || { fail "$row" "sshd setup failed"; return 1; }
    SSH_NOTE="" run_ssh_tool "$row" scp scp -q -F "$PEER_SSH_CONFIG" -c aes128-gcm@openssh.com \
        "$SRC" "$PEER_SSH_HOST:$DST/"
}
run_rsync() {
    local row='rsync over ssh'
    add_row "$row"
    ssh_ready || { fail "$row" "sshd setup failed"; return 1; }
    SSH_NOTE="" run_ssh_tool "$row" rsync rsync -e "ssh -F $PEER_SSH_CONFIG -c aes128-gcm@openssh.com" \
        "$SRC" "$PEER_SSH_HOST:$DST/"
}
run_qcp() {
    local row='qcp (`--rx 10G --tx 10G --rtt 1`)'
    add_row "$row"
    [ -n "$QCP" ] || { fail "$row" "qcp not installed (cargo install failed?)"; return 1; }
    ssh_ready || { fail "$row" "sshd setup failed"; return 1; }
    SSH_NOTE="$("$QCP" --version 2>/dev/null | head -n1)" run_ssh_tool "$row" qcp "$QCP" \
        --ssh-config "$PEER_SSH_CONFIG" -S -F -S "$PEER_SSH_CONFIG" --remote-qcp-binary "$QCP" \
        --rx 10G --tx 10G --rtt 1 \
        "$SRC" "$PEER_SSH_HOST:$DST/"
}

run_sparse() {
    local row="\`sluice copy\`, ${SPARSE_SIZE} sparse file" tf=$WORK/t.sparse t0 t1 rc=0 avail sp
    SPARSE_ROW=$row
    sluice_ok "$row" || return 1
    # holes stay holes at the destination (zero blocks cross as headers): 1 GiB free is plenty
    local need_kib=$(( 1024 * 1024 ))
    avail=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
    if [ "$avail" -lt "$need_kib" ]; then
        R_CHECK[$row]="SKIPPED: only $(( avail / 1024 / 1024 )) GiB free, need $(( need_kib / 1024 / 1024 ))"
        log "${R_CHECK[$row]}"; return 0
    fi
    rm -rf "$DST"; sync; mkdir -p "$DST"
    mkdir -p "$WORK/sparse"
    sp=$WORK/sparse/sparse.bin
    truncate -s "$SPARSE_SIZE" "$sp"
    t0=$(now)
    timed "$tf" "$SLUICE" copy "$sp" "$DST" >"$WORK/sparse.out" 2>"$WORK/sparse.err" || rc=$?
    t1=$(now)
    if [ $rc != 0 ]; then rm -rf "$DST" "$sp"; fail "$row" "exit $rc: $(tail_err "$WORK/sparse.err")"; return 1; fi
    local check="FAILED: destination differs"
    if [ -f "$DST/sparse.bin" ] && timeout --foreground -k 10 "$TOOL_TIMEOUT" cmp -s "$sp" "$DST/sparse.bin"; then
        check="ok, $(du -k "$DST/sparse.bin" | cut -f1) KiB allocated"
    fi
    local size_save=$SIZE
    SIZE=$(numfmt --from=iec "$SPARSE_SIZE")
    record "$row" "$(fsub "$t1" "$t0")" "$(time_cpu "$tf")" "$(time_rss "$tf")" "$check"
    SIZE=$size_save
    rm -rf "$DST" "$sp"; sync
}

# ---------------------------------------------------------------- main
mkdir -p "$WORK/src"
MAIN_TOOLS=()
for t in "${ALL_TOOLS[@]}"; do want "$t" && MAIN_TOOLS+=("$t"); done

if [ ${#MAIN_TOOLS[@]} -gt 0 ]; then
    log "generating $SIZE_ARG ($SIZE bytes) of random data in $SRC"
    head -c "$SIZE" /dev/urandom >"$SRC"
    # Untimed warm-up copy. On a fresh VM the first touch of guest memory is slow (a first 2 GiB
    # `cp` measured 5.5 s of sys time, the next ones 0.6 s): without this the first tool in the
    # list would pay for it. The freed pages are then reused by the timed runs.
    log "warm-up: untimed copy of the source"
    /usr/bin/time -f '%e s wall, %S s sys' -o "$WORK/t.warmup" cp "$SRC" "$WORK/warmup.bin"
    rm -f "$WORK/warmup.bin"
    sync
    log "warm-up took $(cat "$WORK/t.warmup")"
fi

for t in "${MAIN_TOOLS[@]}"; do
    log "=== $t"
    case $t in
        copy) run_copy || true ;;
        copy-tcp) run_copy tcp || true ;;
        send-recv) run_send_recv || true ;;
        send-recv-tcp) run_send_recv tcp || true ;;
        mem) run_mem || true ;;
        cp) run_cp || true ;;
        iperf3) run_iperf3 || true ;;
        scp) run_scp || true ;;
        rsync) run_rsync || true ;;
        qcp) run_qcp || true ;;
    esac
done
rm -rf "$DST"
SPARSE_ROW=""
if want sparse; then
    log "=== sparse"
    run_sparse || true
fi

# ---------------------------------------------------------------- report
cpu_model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "Command: \`$CMDLINE\`  "
echo "Kernel: \`$(uname -r)\`, nproc: $(nproc), CPU: $cpu_model  "
echo "Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  "
[ ${#ROWS[@]} -gt 0 ] && echo "Size: $SIZE_ARG ($SIZE bytes), loopback 127.0.0.1, page-cache-hot source"
echo
if [ ${#ROWS[@]} -gt 0 ]; then
    base=""
    for r in "${ROWS[@]}"; do
        if [ "$r" = '`sluice copy`' ] && [ -n "${R_MBPS[$r]:-}" ]; then base=${R_MBPS[$r]}; fi
    done
    echo "| tool | wall s | MB/s | CPU s (both ends) | peak RSS MiB | vs \`sluice copy\` | check |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for r in "${ROWS[@]}"; do
        if [ -n "${R_MBPS[$r]:-}" ]; then
            ratio="—"
            [ -n "$base" ] && [ "$base" != 0 ] && ratio=$(awk -v a="${R_MBPS[$r]}" -v b="$base" 'BEGIN { printf "%.2f×", a / b }')
            echo "| $r | ${R_WALL[$r]} | ${R_MBPS[$r]} | ${R_CPU[$r]} | ${R_RSS[$r]} | $ratio | ${R_CHECK[$r]} |"
        else
            echo "| $r | — | — | — | — | — | ${R_CHECK[$r]:-FAILED} |"
        fi
    done
    echo
    echo "MB/s = 10^6 bytes/s. CPU = user+sys of both ends and all their child processes. Peak RSS = largest single process."
    for r in "${ROWS[@]}"; do
        [ -n "${R_NOTE[$r]:-}" ] && echo "- $r: ${R_NOTE[$r]}"
    done
    want mem && echo "- Reference, not measured here: $QUINN_REF."
    { want scp || want rsync || want qcp; } && echo "- ssh-based rows: the server side is a one-connection \`sshd -d\` run under \`/usr/bin/time\`, so its CPU includes sshd, the session processes and the remote scp/sftp-server/rsync/qcp."
fi
if [ -n "$SPARSE_ROW" ]; then
    r=$SPARSE_ROW
    echo
    echo "Peak RSS check, \`sluice copy\` of a ${SPARSE_SIZE} sparse file (target ≤ ${RSS_TARGET_MIB} MiB):"
    echo
    echo "| tool | wall s | MB/s | CPU s | peak RSS MiB | target | check |"
    echo "|---|---:|---:|---:|---:|---|---|"
    if [ -n "${R_RSS[$r]:-}" ]; then
        verdict=$(awk -v m="${R_RSS[$r]}" -v t="$RSS_TARGET_MIB" 'BEGIN { print (m <= t ? "PASS" : "FAIL") }')
        echo "| $r | ${R_WALL[$r]} | ${R_MBPS[$r]} | ${R_CPU[$r]} | ${R_RSS[$r]} | ≤ ${RSS_TARGET_MIB}: $verdict | ${R_CHECK[$r]} |"
    else
        echo "| $r | — | — | — | — | ≤ ${RSS_TARGET_MIB} | ${R_CHECK[$r]:-FAILED} |"
    fi
fi
