#!/usr/bin/env bash
# Stop the Slurm that scripts/slurm_up.sh started in $MLDEBUG_SLURM_DIR (default
# /tmp/mldebug-slurm): cancel its jobs, then slurmd, slurmctld and munged, each by the
# pid recorded in that folder (never by name). Logs stay in the folder.
#   bash scripts/slurm_down.sh [--quiet]
set -uo pipefail

STATE="${MLDEBUG_SLURM_DIR:-/tmp/mldebug-slurm}"
CONF="$STATE/slurm.conf"
quiet=0
[[ "${1:-}" == "--quiet" ]] && quiet=1
say() { (( quiet )) || echo "[slurm_down] $*" >&2; }

alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {  # stop_pidfile NAME PIDFILE: TERM, wait up to 15 s, then KILL
  local name=$1 file=$2 pid
  [[ -s $file ]] || return 0
  pid="$(cat "$file")"
  if ! kill -0 "$pid" 2>/dev/null; then rm -f "$file"; return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name ($pid) ignored TERM; killing"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$file"
  say "stopped $name ($pid)"
}

# Jobs first, while the controller still answers, so no slurmstepd outlives slurmd.
if [[ -f $CONF ]] && alive "$STATE/slurmctld.pid"; then
  export SLURM_CONF="$CONF"
  jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
  if [[ -n ${jobs// /} ]]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 200); do
      [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
      sleep 0.1
    done
  fi
fi

stop_pidfile slurmd "$STATE/slurmd.pid"
stop_pidfile slurmctld "$STATE/slurmctld.pid"
stop_pidfile munged "$STATE/munge/munged.pid"
exit 0
