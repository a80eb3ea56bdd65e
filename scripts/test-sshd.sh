#!/usr/bin/env bash
# A throwaway OpenSSH server on 127.0.0.1 for procpool's remote tests.
#
#   scripts/test-sshd.sh start   # prints the path of an ssh client config
#   scripts/test-sshd.sh stop
#
# The client config names one host, `procpool-test`, that reaches the server
# with a key made here (BatchMode, no known_hosts prompt). Everything lives in
# $PROCPOOL_SSHD_DIR (default /tmp/procpool-sshd-$UID). `start` is idempotent:
# a server that is still up and answering is reused.
set -euo pipefail

dir="${PROCPOOL_SSHD_DIR:-/tmp/procpool-sshd-$(id -u)}"
sshd_bin="${SSHD:-/usr/sbin/sshd}"
config="$dir/ssh_config"

answers() {
  ssh -F "$config" -o ConnectTimeout=5 procpool-test true >/dev/null 2>&1
}

running() {
  [[ -f "$dir/sshd.pid" ]] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null
}

stop() {
  if running; then
    kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
    for _ in $(seq 50); do running || break; sleep 0.1; done
  fi
  rm -rf "$dir"
}

start() {
  if running && answers; then
    echo "$config"
    return
  fi
  stop
  [[ -x "$sshd_bin" ]] || { echo "test-sshd: $sshd_bin not found" >&2; exit 1; }
  mkdir -p "$dir" /run/sshd
  chmod 700 "$dir"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  for _ in $(seq 20); do
    local port=$(( 20000 + RANDOM % 40000 ))
    cat > "$dir/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
CFG
    cat > "$config" <<CFG
Host procpool-test
  HostName 127.0.0.1
  Port $port
  User $(id -un)
  IdentityFile $dir/client_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile $dir/known_hosts
  BatchMode yes
  LogLevel ERROR
CFG
    "$sshd_bin" -f "$dir/sshd_config" -E "$dir/sshd.log" || continue
    for _ in $(seq 50); do
      if answers; then
        echo "$config"
        return
      fi
      running || break
      sleep 0.1
    done
    running && kill "$(cat "$dir/sshd.pid")" 2>/dev/null || true
  done
  echo "test-sshd: could not start sshd; log:" >&2
  cat "$dir/sshd.log" >&2 || true
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
