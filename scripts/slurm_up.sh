#!/usr/bin/env bash
# Bring up a real single-node Slurm on localhost for tests (munge + slurmctld + slurmd).
#
#   bash scripts/slurm_up.sh            # prints `export SLURM_CONF=...` on its last line
#   source "$MLDEBUG_SLURM_DIR/env.sh"  # or: export SLURM_CONF=$MLDEBUG_SLURM_DIR/slurm.conf
#   bash scripts/slurm_down.sh          # stops what this script started, by pid
#
# - Installs Debian's `munge` and `slurm-wlm` when missing (root only), with a temporary
#   /usr/sbin/policy-rc.d that exits 101 so the packages' init scripts start nothing.
# - Everything lives in one project-controlled folder, $MLDEBUG_SLURM_DIR (default
#   /tmp/mldebug-slurm): slurm.conf, its own munge key and socket, state, spool, logs and
#   pid files. Nothing under /etc is written, so a system Slurm/munge is left alone; client
#   commands find this cluster through SLURM_CONF.
# - Ports default to 16817/16818 (not Slurm's 6817/6818) for the same reason;
#   MLDEBUG_SLURMCTLD_PORT / MLDEBUG_SLURMD_PORT override them. MLDEBUG_SLURM_FIRST_JOB_ID
#   sets the first job id (tests pick one at random: job ids name the jobs' Ray ports and
#   temp dirs, which must not meet those of another test cluster on the machine).
# - No cgroups (FIELD-NOTES): proctrack/linuxproc, task/none, jobacct_gather/none.
# - Waits until the node is idle (MLDEBUG_SLURM_UP_TIMEOUT seconds, default 60).
# Idempotent: when this folder's daemons are already running it only waits for idle.
# Exit status: 0 up; 3 cannot run here (not root); 1 anything else.
set -euo pipefail

STATE="${MLDEBUG_SLURM_DIR:-/tmp/mldebug-slurm}"
CTLD_PORT="${MLDEBUG_SLURMCTLD_PORT:-16817}"
SLURMD_PORT="${MLDEBUG_SLURMD_PORT:-16818}"
TIMEOUT="${MLDEBUG_SLURM_UP_TIMEOUT:-60}"
FIRST_JOB_ID="${MLDEBUG_SLURM_FIRST_JOB_ID:-1}"
CONF="$STATE/slurm.conf"
NODE="$(hostname -s)"
NCPUS="$(nproc)"
t_start=$(date +%s.%N)

say() { echo "[slurm_up] $*" >&2; }
die() { say "error: $*"; exit "${2:-1}"; }

if [[ $EUID -ne 0 ]]; then
  die "needs root (slurmd runs jobs as their users; the packages may need installing)" 3
fi

alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- install (once)
install_packages() {
  local policy=/usr/sbin/policy-rc.d backup=""
  if [[ -e $policy ]]; then
    backup="$policy.mldebug-backup.$$"
    mv "$policy" "$backup"
  fi
  printf '#!/bin/sh\n# written by mldebug_ray scripts/slurm_up.sh for the install only\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  # shellcheck disable=SC2064
  trap "rm -f '$policy'; [[ -n '$backup' ]] && mv '$backup' '$policy'; true" EXIT
  export DEBIAN_FRONTEND=noninteractive
  local pkgs=(munge slurm-wlm)
  say "installing ${pkgs[*]} from the distribution's packages"
  if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$STATE/apt.log" 2>&1; then
    say "apt-get install failed; refreshing the package lists once"
    apt-get update -q >>"$STATE/apt.log" 2>&1 || true
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$STATE/apt.log" 2>&1 \
      || { tail -20 "$STATE/apt.log" >&2; die "could not install ${pkgs[*]} (log: $STATE/apt.log)"; }
  fi
  rm -f "$policy"
  [[ -n $backup ]] && mv "$backup" "$policy"
  trap - EXIT
}

mkdir -p "$STATE"
chmod 755 "$STATE"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
  || ! command -v sbatch >/dev/null; then
  command -v apt-get >/dev/null || die "munge/slurm are not installed and there is no apt-get to install them"
  install_packages
fi
getent passwd munge >/dev/null || die "user 'munge' is missing (the munge package creates it)"

# ---------------------------------------------------------------- already up?
if alive "$STATE/slurmctld.pid" && alive "$STATE/slurmd.pid" && alive "$STATE/munge/munged.pid"; then
  say "already running in $STATE"
else
  # Anything half-started before (by this folder only) goes first.
  MLDEBUG_SLURM_DIR="$STATE" bash "$(dirname "$0")/slurm_down.sh" --quiet || true

  mkdir -p "$STATE/munge" "$STATE/ctld" "$STATE/spool" "$STATE/log"
  rm -rf "${STATE:?}/ctld/"* "${STATE:?}/spool/"*
  : >"$STATE/log/slurmctld.log"; : >"$STATE/log/slurmd.log"

  # munge: our own key, socket and pid file, run as the munge user (it refuses root-owned keys).
  if [[ ! -s "$STATE/munge/munge.key" ]]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  fi
  chown -R munge:munge "$STATE/munge"
  chmod 755 "$STATE/munge"  # munged wants the socket folder searchable by all
  chmod 400 "$STATE/munge/munge.key"
  runuser -u munge -- munged \
    --socket="$STATE/munge/munge.socket" \
    --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" \
    --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed" \
    || die "munged did not start (log: $STATE/munge/munged.log)"

  cat >"$CONF" <<EOF
# Single-node Slurm for mldebug_ray's tests, written by scripts/slurm_up.sh.
ClusterName=mldebug
FirstJobId=${FIRST_JOB_ID}
SlurmctldHost=${NODE}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=${STATE}/munge/munge.socket
CredType=cred/munge
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/spool
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
MinJobAge=600
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${NCPUS} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  printf 'export SLURM_CONF=%q\n' "$CONF" >"$STATE/env.sh"

  export SLURM_CONF="$CONF"
  slurmctld -i -f "$CONF" || die "slurmctld did not start (log: $STATE/log/slurmctld.log)"
  for _ in $(seq 1 100); do alive "$STATE/slurmctld.pid" && scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
  slurmd -f "$CONF" || die "slurmd did not start (log: $STATE/log/slurmd.log)"
fi

# ---------------------------------------------------------------- wait for an idle node
export SLURM_CONF="$CONF"
deadline=$(( $(date +%s) + TIMEOUT ))
state=""
while :; do
  state="$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)"
  case "$state" in
    idle|mixed|allocated) break ;;
    down*|drain*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  if (( $(date +%s) >= deadline )); then
    tail -5 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
    die "node $NODE not idle after ${TIMEOUT}s (state: ${state:-none}; logs in $STATE/log)"
  fi
  sleep 0.2
done
elapsed=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
say "node $NODE is $state (${NCPUS} CPUs) after ${elapsed}s; state in $STATE"
echo "export SLURM_CONF=$CONF"
