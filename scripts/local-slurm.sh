#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the SLURM test and for
# trying the workflow profile before a cluster: Debian's slurm-wlm and munge,
# with accounting (slurmdbd over MariaDB) so that `sacct` lists the jobs.
#
#   scripts/local-slurm.sh start    # install if missing (root, apt), configure, start
#   scripts/local-slurm.sh status   # exit 0 when the node is up and sacct answers
#   scripts/local-slurm.sh stop
#
# The cluster is "vaemap" with one partition "normal" (the profile's default)
# holding this host with all its CPUs and 90 % of its memory. Every daemon runs
# on localhost; nothing listens beyond it. Needs root: it writes /etc/slurm,
# /etc/munge and starts daemons. Logs: /var/log/slurm/.
set -euo pipefail

CLUSTER=vaemap
PARTITION=normal
DB_USER=slurm
DB_PASS=vaemap-local-slurm
ETC=/etc/slurm
LOG=/var/log/slurm
STATE=/var/lib/slurm

say() { echo "local-slurm: $*" >&2; }
trap 'say "failed (line $LINENO): see the logs in $LOG"' ERR

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        say "needs root (it installs packages, writes /etc/slurm and starts daemons)"
        exit 2
    fi
}

install_packages() {
    local missing=()
    for cmd in slurmctld slurmd slurmdbd munged mariadbd sacct; do
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing slurm-wlm, slurmdbd, munge and mariadb-server (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the packages from starting services of their own.
    apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq "$limit"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    say "$what did not come up within ${limit}s"
    return 1
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /etc/munge /var/log/munge /var/lib/munge /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge
    chmod 0700 /etc/munge /var/log/munge /var/lib/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    wait_for 20 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
    if mariadb -e 'SELECT 1' >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    # Loopback only: the accounting database is this cluster's alone.
    nohup runuser -u mysql -- /usr/sbin/mariadbd --datadir=/var/lib/mysql \
        --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
        --innodb-lock-wait-timeout=900 >"$LOG/mariadb.log" 2>&1 &
    wait_for 60 MariaDB mariadb -e 'SELECT 1'
    mariadb <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

write_config() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$ETC" "$LOG" "$STATE/slurmctld" "$STATE/slurmd"
    cat >"$ETC/slurm.conf" <<EOF
# Written by vaemap scripts/local-slurm.sh: a single-node cluster for tests.
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# This sandbox has neither cgroup delegation nor systemd: track and bind tasks
# the simple way.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# Keep finished jobs visible to squeue long enough for status polling.
MinJobAge=600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStoreFlags=job_comment
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/slurmdbd.conf" <<EOF
# Written by vaemap scripts/local-slurm.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$LOG/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF
    chmod 0600 "$ETC/slurmdbd.conf"
}

node_idle() {
    sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

start() {
    need_root
    install_packages
    mkdir -p "$LOG"
    if node_idle && sacct -n -X -S now-1minutes >/dev/null 2>&1; then
        say "already running"
        return 0
    fi
    start_munge
    start_mariadb
    write_config
    pgrep -x slurmdbd >/dev/null || /usr/sbin/slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
    wait_for 60 slurmctld scontrol ping
    pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
    if ! wait_for 60 "the node" node_idle; then
        scontrol update nodename="$(hostname -s)" state=resume || true
        wait_for 30 "the node" node_idle
    fi
    # An account and user association, so sacct and the executor's account
    # check find one (jobs would run without it: nothing is enforced).
    sacctmgr -i add account vaemap Cluster="$CLUSTER" Description=tests >/dev/null 2>&1 || true
    sacctmgr -i add user root Account=vaemap Cluster="$CLUSTER" >/dev/null 2>&1 || true
    say "up: $(sinfo -h -o '%P %D %c CPUs %m MB %T')"
}

status() {
    if node_idle && sacct -n -X -S now-1minutes >/dev/null 2>&1; then
        say "running: node up, accounting answers"
    else
        say "not running (scripts/local-slurm.sh start starts it)"
        return 1
    fi
}

stop() {
    need_root
    for daemon in slurmd slurmctld slurmdbd; do pkill -x "$daemon" 2>/dev/null || true; done
    mariadb-admin shutdown 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
}

case "${1:-start}" in
    start) start ;;
    status) trap - ERR; status ;;
    stop) stop ;;
    *) say "usage: $0 start|status|stop"; exit 2 ;;
esac
