# shellcheck shell=bash
# bench/peers.sh — helpers for benchmarking against ssh-based peers (scp, rsync, qcp).
# Sourced by bench/compare.sh (and meant for later benchmarks, e.g. an rsync delta bench).
#
# Everything lives under one directory ($PEER_DIR) that the caller creates and removes:
# a throwaway sshd on 127.0.0.1:<free high port> with its own config, its own host key and
# a temporary client key authorized for root. Nothing under /etc or ~/.ssh is touched
# (the only system change is `mkdir -p /run/sshd`, which Debian's sshd requires).
#
#   peer_install_packages PKG...   apt-get install the missing ones (apt-get update once)
#   peer_free_port                 print a free TCP+UDP port on 127.0.0.1 (20000-60999)
#   peer_wait_listen PORT [SECS]   wait until something listens on 127.0.0.1:PORT (tcp)
#   peer_sshd_setup DIR [PATHDIRS] keys + sshd_config + ssh client config in DIR;
#                                  PATHDIRS is prepended to PATH of ssh sessions
#   peer_sshd_start_once TIMEFILE  sshd for ONE connection (sshd -d: no fork per connection,
#                                  exits when the session ends), run under /usr/bin/time so
#                                  TIMEFILE gets the CPU/RSS of the whole server side
#   peer_sshd_start                long-running sshd (-D) for many connections
#   peer_sshd_wait_exit [SECS]     wait for the one-shot sshd to exit by itself
#   peer_sshd_stop                 stop whichever sshd we started (its whole process group)
#
# After setup: $PEER_SSH_PORT, $PEER_SSH_CONFIG (use `ssh -F "$PEER_SSH_CONFIG" $PEER_SSH_HOST`),
# $PEER_SSH_HOST (a Host alias for root@127.0.0.1:$PEER_SSH_PORT with aes128-gcm@openssh.com).

PEER_APT_UPDATED=${PEER_APT_UPDATED:-0}
PEER_SSHD_PGID=""
PEER_SSH_HOST=sluice-bench-peer

peer_log() { printf '[peers] %s\n' "$*" >&2; }

peer_install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    peer_log "installing: ${missing[*]}"
    if [ "$PEER_APT_UPDATED" = 0 ]; then
        apt-get update -qq >&2
        PEER_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

peer_free_port() {
    local port i
    for i in $(seq 1 200); do
        port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 41000 ))
        if [ -z "$(ss -Htanu "( sport = :$port )" 2>/dev/null)" ]; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

peer_wait_listen() {
    local port=$1 secs=${2:-10} i
    for i in $(seq 1 $(( secs * 20 ))); do
        [ -n "$(ss -Hltn "( sport = :$port )" 2>/dev/null)" ] && return 0
        sleep 0.05
    done
    return 1
}

peer_sshd_setup() {
    local dir=$1 pathdirs=${2:-}
    PEER_DIR=$dir
    mkdir -p "$dir"
    chmod 700 "$dir"
    mkdir -p /run/sshd
    chmod 755 /run/sshd
    rm -f "$dir"/host_ed25519* "$dir"/client_ed25519*
    ssh-keygen -q -t ed25519 -N '' -C sluice-bench-host -f "$dir/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C sluice-bench-client -f "$dir/client_ed25519"
    cp "$dir/client_ed25519.pub" "$dir/authorized_keys"
    chmod 600 "$dir/authorized_keys"
    PEER_SSH_PORT=$(peer_free_port)
    local sftp=/usr/lib/openssh/sftp-server
    local path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    [ -n "$pathdirs" ] && path="$pathdirs:$path"
    cat > "$dir/sshd_config" <<EOF
Port $PEER_SSH_PORT
ListenAddress 127.0.0.1
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
X11Forwarding no
UseDNS no
Subsystem sftp $sftp
SetEnv PATH=$path
EOF
    PEER_SSH_CONFIG=$dir/ssh_config
    cat > "$PEER_SSH_CONFIG" <<EOF
Host $PEER_SSH_HOST
    HostName 127.0.0.1
    Port $PEER_SSH_PORT
    User root
    IdentityFile $dir/client_ed25519
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    Ciphers aes128-gcm@openssh.com
EOF
    /usr/sbin/sshd -t -f "$dir/sshd_config"
}

# $1: file for `/usr/bin/time -f '%e %U %S %M'` of the server side (sshd and all the session
# processes it forks and reaps: preauth child, session child, scp/sftp-server/rsync/qcp server).
peer_sshd_start_once() {
    local timefile=$1
    rm -f "$timefile"
    # -d: one connection, no fork per connection, exit when it ends; debug log to a file.
    setsid /usr/bin/time -f '%e %U %S %M' -o "$timefile" \
        timeout --foreground -k 10 $(( ${TOOL_TIMEOUT:-600} + 30 )) /usr/sbin/sshd -d -D -f "$PEER_DIR/sshd_config" \
        >"$PEER_DIR/sshd.log" 2>&1 </dev/null &
    PEER_SSHD_PGID=$!
    peer_wait_listen "$PEER_SSH_PORT" 10 || { peer_log "sshd did not start"; tail -5 "$PEER_DIR/sshd.log" >&2; return 1; }
}

peer_sshd_start() {
    setsid timeout --foreground -k 10 86400 /usr/sbin/sshd -D -e -f "$PEER_DIR/sshd_config" \
        >"$PEER_DIR/sshd.log" 2>&1 </dev/null &
    PEER_SSHD_PGID=$!
    peer_wait_listen "$PEER_SSH_PORT" 10 || { peer_log "sshd did not start"; tail -5 "$PEER_DIR/sshd.log" >&2; return 1; }
}

peer_sshd_wait_exit() {
    local secs=${1:-30} i
    [ -n "$PEER_SSHD_PGID" ] || return 0
    for i in $(seq 1 $(( secs * 20 ))); do
        if ! kill -0 "$PEER_SSHD_PGID" 2>/dev/null; then
            wait "$PEER_SSHD_PGID" 2>/dev/null || true
            PEER_SSHD_PGID=""
            return 0
        fi
        sleep 0.05
    done
    return 1
}

peer_sshd_stop() {
    [ -n "$PEER_SSHD_PGID" ] || return 0
    kill -TERM -- "-$PEER_SSHD_PGID" 2>/dev/null || true
    wait "$PEER_SSHD_PGID" 2>/dev/null || true
    PEER_SSHD_PGID=""
}
