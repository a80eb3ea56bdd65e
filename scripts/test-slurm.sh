#!/usr/bin/env bash
# A throwaway single-node Slurm (munged, slurmctld, slurmd on this machine)
# for procpool's `Remote::command(["srun", ...])` test.
#
#   scripts/test-slurm.sh start   # prints the slurm.conf to export as SLURM_CONF
#   scripts/test-slurm.sh stop
#
# Needs the Debian packages slurm-wlm and munge, and root. Everything lives in
# $PROCPOOL_SLURM_DIR (default /tmp/procpool-slurm-$UID); the daemons listen on
# the fixed ports 16817/16818, so one instance serves the whole machine (a
# second `start` elsewhere finds it answering and uses it). `start` is
# idempotent.
set -euo pipefail

dir="${PROCPOOL_SLURM_DIR:-/tmp/procpool-slurm-$(id -u)}"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

answers() { timeout 30 srun -N1 -n1 -- true >/dev/null 2>&1; }

# Ends the job steps still running (a step daemon outlives slurmd otherwise),
# then the daemons: politely, then for sure.
stop() {
  if alive "$dir/slurmctld.pid"; then
    scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do
      [[ -z "$(squeue -h 2>/dev/null)" ]] && break
      sleep 0.1
    done
  fi
  for pid in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
    if alive "$pid"; then
      kill "$(cat "$pid")" 2>/dev/null || true
      for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -KILL "$(cat "$pid")" 2>/dev/null || true
    fi
  done
  rm -rf "$dir"
}

start() {
  if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid" && answers; then
    echo "$conf"
    return
  fi
  stop
  mkdir -p "$dir/state" "$dir/spool" /run/munge
  chown munge:munge /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    # munged runs as munge and writes its pid file as munge, so the file goes
    # to munge's run directory; a copy here tells `stop` to end it.
    local pidfile=/run/munge/procpool-munged.pid
    runuser -u munge -- /usr/sbin/munged --pid-file="$pidfile"
    for _ in $(seq 50); do [[ -s "$pidfile" ]] && break; sleep 0.1; done
    cp "$pidfile" "$dir/munged.pid"
  fi
  local host
  host="$(hostname -s)"
  cat > "$conf" <<CFG
ClusterName=procpool
SlurmctldHost=$host
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CFG
  chmod 755 "$dir"
  /usr/sbin/slurmctld -f "$conf"
  /usr/sbin/slurmd -f "$conf"
  for _ in $(seq 60); do
    if answers; then
      echo "$conf"
      return
    fi
    sleep 0.5
  done
  echo "test-slurm: Slurm did not come up; logs:" >&2
  tail -20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
