# shellcheck shell=bash
# bench/wanlink.sh — helpers for benchmarks on an emulated link (shared/tools/wan-emu). Sourced
# by bench/wan.sh and bench/fairness.sh.
#
#   wanlink_setup WORK LINK   builds wan-emu into WORK unless WAN_EMU_BIN names one, allows TCP
#                             cubic for this run (a namespace may only choose a congestion
#                             control the host allows; cubic is available here but not allowed
#                             by default), and on exit takes LINK down, restores the allowed list
#                             and removes WORK
#
# Needs WAN (the `wan` script) and SHARED set by the caller.

wanlink_setup() {
    WANLINK_WORK=$1 WANLINK_NAME=$2
    if [ -z "${WAN_EMU_BIN:-}" ]; then
        cargo build --release --locked --quiet --manifest-path "$SHARED/tools/wan-emu/Cargo.toml" \
            --target-dir "$WANLINK_WORK/wan-target" >&2
        export WAN_EMU_BIN=$WANLINK_WORK/wan-target/release/wan-emu
    fi
    # Sluice keeps what a transfer measured of the path for the next one to the same address
    # (~/.cache/sluice/paths): a benchmark's runs start cold, from a cache of their own.
    export XDG_CACHE_HOME=$WANLINK_WORK/cache
    WANLINK_ALLOWED=$(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)
    sysctl -qw net.ipv4.tcp_allowed_congestion_control="$WANLINK_ALLOWED cubic"
    trap wanlink_cleanup EXIT
}

wanlink_cleanup() {
    "$WAN" down "$WANLINK_NAME" >/dev/null 2>&1 || true
    sysctl -qw net.ipv4.tcp_allowed_congestion_control="$WANLINK_ALLOWED" || true
    rm -rf "$WANLINK_WORK"
}
