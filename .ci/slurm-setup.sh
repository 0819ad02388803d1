#!/usr/bin/env bash
# Single-node Slurm cluster on this machine, for tests/test_slurm.py.
#
# Installs munge + Slurm from apt, writes /etc/slurm/slurm.conf (one node on 127.0.0.1 with this
# machine's CPUs), and starts munged, slurmctld and slurmd as plain daemons (no systemd needed).
# Idempotent: run it again at any time; what is already installed/running is left alone, and the
# Slurm daemons are restarted only when the generated slurm.conf changed.
# Run as root. Exits non-zero with a message when the cluster cannot be brought up.
#
#   sudo .ci/slurm-setup.sh          # then: sinfo; srun hostname
#
# Environment: SLURM_SETUP_CPUS (default: nproc), SLURM_SETUP_MEMORY_MB (default: 1024).
set -euo pipefail

die() {
    echo "slurm-setup: error: $*" >&2
    for log in /var/log/munge/munged.log /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
        [[ -s $log ]] && { echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; }
    done
    exit 1
}
say() { echo "slurm-setup: $*"; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"

# --- packages --------------------------------------------------------------------------------
PACKAGES=(munge slurmctld slurmd slurm-client)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # No init system here: keep the packages' postinst scripts from trying to start services.
    policy_created=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    ((policy_created)) && rm -f /usr/sbin/policy-rc.d
fi
for cmd in munged munge unmunge slurmctld slurmd sinfo sbatch scontrol; do
    command -v "$cmd" >/dev/null || die "$cmd not found after installing ${PACKAGES[*]}"
done

# A pid file names a live process of the expected program.
running() { # running PIDFILE NAME
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2"* ]]
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) # $2 only names what is awaited
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}
stop_daemon() { # stop_daemon PIDFILE NAME
    local pid
    running "$1" "$2" || return 0
    pid=$(<"$1")
    say "stopping $2 (pid $pid)"
    kill "$pid"
    wait_for 20 "$2 to exit" bash -c "! kill -0 $pid" || die "$2 (pid $pid) did not exit"
}

# --- munge -----------------------------------------------------------------------------------
id munge >/dev/null 2>&1 || die "the munge user does not exist (the munge package should create it)"
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge # clients need to reach the socket in it
if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! running /run/munge/munged.pid munged; then
    say "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- munged --force || die "munged failed to start"
fi
wait_for 15 "munge" bash -c "munge -n | unmunge" || die "munge credentials do not work (munge -n | unmunge)"

# --- slurm.conf --------------------------------------------------------------------------------
NODE=$(hostname -s)
if ! getent hosts "$NODE" >/dev/null; then
    say "adding $NODE to /etc/hosts"
    echo "127.0.0.1 $NODE" >>/etc/hosts
fi
CPUS=${SLURM_SETUP_CPUS:-$(nproc)}
MEMORY_MB=${SLURM_SETUP_MEMORY_MB:-1024}
install -d -m 0755 /etc/slurm /var/log/slurm /run/slurm /var/lib/slurm
install -d -m 0755 /var/lib/slurm/slurmctld /var/lib/slurm/slurmd

conf=$(
    cat <<EOF
# Written by trainwright .ci/slurm-setup.sh: a single-node test cluster.
ClusterName=trainwright
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in containers: plain process tracking, no task containment, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Jobs may be requeued (sbatch --requeue; scontrol requeue from a preempted job).
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=600
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [[ ! -f /etc/slurm/slurm.conf ]] || [[ $(</etc/slurm/slurm.conf) != "$conf" ]]; then
    say "writing /etc/slurm/slurm.conf (node $NODE, $CPUS CPUs, ${MEMORY_MB} MB)"
    printf '%s\n' "$conf" >/etc/slurm/slurm.conf
    changed=1
fi
if ((changed)); then
    stop_daemon /run/slurm/slurmd.pid slurmd
    stop_daemon /run/slurm/slurmctld.pid slurmctld
fi

# --- daemons -----------------------------------------------------------------------------------
if ! running /run/slurm/slurmctld.pid slurmctld; then
    say "starting slurmctld"
    slurmctld || die "slurmctld failed to start"
fi
wait_for 30 "slurmctld" scontrol ping || die "slurmctld does not answer (scontrol ping)"
if ! running /run/slurm/slurmd.pid slurmd; then
    say "starting slurmd"
    slurmd || die "slurmd failed to start"
fi

node_ready() {
    local state
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null) || return 1
    [[ $state =~ ^(idle|mix|alloc|comp)$ ]]
}
if ! wait_for 30 "node $NODE" node_ready; then
    # A node left DOWN/DRAIN by an earlier run (e.g. after a restart) is put back in service.
    scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    wait_for 30 "node $NODE" node_ready || die "node $NODE is not usable: $(sinfo -h -N -o '%N %t %E' 2>&1)"
fi
out=$(timeout 60 srun -N1 -n1 --job-name=slurm-setup-check hostname 2>&1) || die "srun hostname failed: $out"
say "cluster up: $(sinfo -h -o '%P %a %D %t %N' | head -1); srun hostname -> $out"
