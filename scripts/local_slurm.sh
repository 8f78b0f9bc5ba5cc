#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for `dkbench sweep … hydra/launcher=slurm_local`
# (tests/cluster/test_slurm.py, `make test-cluster`). Needs root (apt, daemons) — as CI has.
#
#   bash scripts/local_slurm.sh start    # install (apt, only what is missing), start, wait until the node is idle
#   bash scripts/local_slurm.sh status   # daemons, node state, and the environment a client needs
#   bash scripts/local_slurm.sh stop     # cancel its jobs, stop its daemons, remove its state folder
#   eval "$(bash scripts/local_slurm.sh env)"   # SLURM_CONF for sbatch/squeue/sacct/scancel (and submitit)
#
# Everything lives in one folder of its own, $DKBENCH_SLURM_DIR (default /var/tmp/dkbench-slurm): slurm.conf,
# munge key and socket, spool/state dirs, logs, pid files. Nothing is written to /etc and the system's own munged
# (if any) is not used, so the cluster cannot clash with a real SLURM install on the machine; it also listens on
# ports of its own (16817-16820 on 127.0.0.1, not SLURM's 6817-6819 and MariaDB's 3306). apt itself writes where packages
# go (and a policy-rc.d that keeps the packages' own services from starting, removed afterwards). Clients find the
# cluster through SLURM_CONF (see `env`).
#
# Job records: SLURM accounting (slurmctld → slurmdbd → MariaDB, all in the state folder), so `sacct` works as on
# a real cluster. submitit (the launcher behind hydra/launcher=submitit_slurm) polls `sacct` for job states: a job
# that ends without writing its result file (cancelled while pending, killed by SIGKILL, node failure) is only seen
# as finished through sacct; without accounting sacct fails, submitit logs "Bypassing sacct error", the state stays
# UNKNOWN, and the sweep waits forever. A jobcomp/filetxt log ($DIR/jobcomp.txt) is kept as well (a plain
# one-line-per-job record that needs no database).
set -euo pipefail

DIR=${DKBENCH_SLURM_DIR:-/var/tmp/dkbench-slurm}
CLUSTER=dkbench
CTLD_PORT=${DKBENCH_SLURM_PORT:-16817}     # slurmctld; slurmd = +1, slurmdbd = +2, MariaDB = +3
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT=$((CTLD_PORT + 3))
START_TIMEOUT=${DKBENCH_SLURM_START_TIMEOUT:-60}   # seconds for each daemon / the node to come up
# slurmdbd (default): sacct works; none: no MariaDB/slurmdbd, job records only in jobcomp.txt (sacct fails)
ACCOUNTING=${DKBENCH_SLURM_ACCOUNTING:-slurmdbd}
[[ $ACCOUNTING == slurmdbd || $ACCOUNTING == none ]] || { echo "DKBENCH_SLURM_ACCOUNTING: slurmdbd or none" >&2; exit 2; }
HOST=$(hostname -s)
export SLURM_CONF=$DIR/slurm.conf

log() { echo "[local_slurm] $*" >&2; }

die() {  # die MESSAGE [FILE…]: the message, the files' tails, every daemon log's tail, the message again (last, so
         # that a caller showing only the end of the output shows it)
  local f
  log "ERROR: $1"
  for f in "${@:2}" "$DIR"/log/*.log "$DIR"/munge/*.log "$DIR"/mariadb/*.log; do
    [[ -f $f ]] || continue
    echo "----- tail of $f -----" >&2
    tail -n 25 "$f" >&2
  done
  log "ERROR: $1 (logs above; state in $DIR, removed by: $0 stop)"
  exit 1
}

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (apt-get, daemons that switch users); CI runs as root"; }

# --- install -----------------------------------------------------------------------------------------------------
PACKAGES=(munge slurmctld slurmd slurm-client)
[[ $ACCOUNTING == slurmdbd ]] && PACKAGES+=(slurmdbd mariadb-server)

install_missing() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing ${missing[*]} (apt)"
  # policy-rc.d: the packages' postinst would start the *system* daemons (mariadb on its default socket, munged
  # with /etc/munge); this cluster runs its own instances, so keep apt from starting anything.
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1; fi
  export DEBIAN_FRONTEND=noninteractive
  # without `apt-get update` first where the package lists are there (fast, offline-friendly); with it otherwise
  { apt-get install -y --no-install-recommends "${missing[@]}" > "$DIR/log/apt.out" 2>&1 ||
      { apt-get update > "$DIR/log/apt.out" 2>&1 &&
        apt-get install -y --no-install-recommends "${missing[@]}" >> "$DIR/log/apt.out" 2>&1; }; } ||
    { [[ $created -eq 1 ]] && rm -f "$policy"; die "apt-get install ${missing[*]} failed" "$DIR/log/apt.out"; }
  [[ $created -eq 1 ]] && rm -f "$policy"
  return 0
}

# --- processes ---------------------------------------------------------------------------------------------------
# A daemon is "ours" when its pid file (in $DIR/run) names a live process running the expected program: never kill
# by name, another cluster's daemons may run on the same machine.
running() {  # running PID: the process exists and is not a zombie (an exited daemon waits for init to reap it)
  local stat
  stat=$(cat "/proc/$1/stat" 2> /dev/null) || return 1
  [[ ${stat##*) } != Z* ]]
}

pid_of() {  # pid_of NAME PROGRAM → the pid, or nothing
  local f=$DIR/run/$1.pid pid
  [[ -s $f ]] || return 0
  pid=$(tr -dc '0-9' < "$f")
  [[ -n $pid ]] && running "$pid" || return 0
  [[ $(tr '\0' ' ' < "/proc/$pid/cmdline") == *"$2"* ]] && echo "$pid"
  return 0
}

alive() {  # alive DAEMON: name:program (its pid file here) or pid:N
  if [[ $1 == pid:* ]]; then running "${1#pid:}"; else [[ -n $(pid_of "${1%%:*}" "${1#*:}") ]]; fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION DAEMON COMMAND…: poll COMMAND every 0.2 s until it succeeds; fail at
              # once when DAEMON (see alive) has exited, e.g. on a port that is taken
  local limit=$1 what=$2 daemon=$3 end
  shift 3
  end=$((SECONDS + limit))
  until "$@" > /dev/null 2>&1; do
    if ! alive "$daemon"; then
      sleep 0.5  # a pid file may lag the daemon's start by a moment
      alive "$daemon" || die "$([[ $daemon == pid:* ]] && echo "process ${daemon#pid:}" || echo "${daemon%%:*}") exited before: $what"
    fi
    ((SECONDS < end)) || die "$what did not happen within ${limit}s"
    sleep 0.2
  done
}

stop_pid() {  # stop_pid NAME PROGRAM: SIGTERM, wait up to 15 s, then SIGKILL
  local pid _
  pid=$(pid_of "$1" "$2")
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2> /dev/null || return 0
  for _ in $(seq 75); do running "$pid" || return 0; sleep 0.2; done
  log "$1 (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
  kill -KILL "$pid" 2> /dev/null || true
}

# --- configuration -----------------------------------------------------------------------------------------------
write_configs() {
  # This node as slurmd sees it (CPUs, sockets/cores/threads, RealMemory in MB), minus 1 GB for the OS so that
  # slurmd does not drain the node for having less memory than configured.
  local node mem
  node=$(slurmd -C)
  node=${node%%$'\n'*}  # its first line (the second is the uptime)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$node")
  node=${node/RealMemory=$mem/RealMemory=$((mem > 2048 ? mem - 1024 : mem))}
  cat > "$DIR/slurm.conf" << EOF
# Generated by scripts/local_slurm.sh: a single-node test cluster (dkbench), state in $DIR.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# root runs the daemons (a test cluster on a CI machine); jobs run as the user who submits them.
SlurmUser=root
SlurmdUser=root
# this cluster's own munged (socket in the state folder), not the system one
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: containers and CI VMs rarely delegate a writable cgroup tree; linuxproc tracks a job's processes
# through their parent pids, which is enough for one node (no memory enforcement: --mem only schedules)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
# several jobs per node, scheduled by cores and memory (1-CPU jobs run side by side on a 2-CPU node)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# a node that restarts (slurmd restarted by start) comes back by itself
ReturnToService=2
# scancel: SIGTERM, then SIGKILL after KillWait s (SLURM's default is 30; dkbench needs ~2 s to record the
# interruption and exit, so 10 keeps stop and tests short)
KillWait=10
# finished jobs stay visible to squeue/scontrol for 5 min; sacct keeps them for good
MinJobAge=300
MailProg=/bin/true
# job records: accounting through slurmdbd (sacct), plus a plain text log of finished jobs
$(if [[ $ACCOUNTING == slurmdbd ]]; then
    printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\nAccountingStoragePort=%s\n' "$DBD_PORT"
    echo "# connections to slurmdbd take their munge socket from here (AuthInfo does not apply to them)"
    printf 'AccountingStoragePass=%s\n' "$DIR/munge/munge.socket"
  else
    echo "AccountingStorageType=accounting_storage/none"
  fi)
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
# NodeAddr: reach slurmd on the loopback, whether or not the host name resolves
$node NodeAddr=127.0.0.1
# jobs that ask for no memory get 1 GB per CPU (the default would be the whole node: one job at a time)
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1024
EOF
  cat > "$DIR/slurmdbd.conf" << EOF
# Generated by scripts/local_slurm.sh: accounting for the $CLUSTER test cluster.
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
# DbdHost must be this host's short name (slurmdbd checks it), DbdAddr where it listens
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/slurmdbd.conf"  # slurmdbd exits (fatal) when group or others can read it (it may hold a password)
}

# --- daemons -----------------------------------------------------------------------------------------------------
start_munge() {
  [[ -n $(pid_of munged munged) ]] && return 0
  # munged insists on: a key readable by its user only, a socket dir everyone can traverse, and (as packaged) the
  # munge user; it logs into its own dir, which that user can write
  mkdir -p "$DIR/munge"
  [[ -s $DIR/munge/munge.key ]] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
  chown -R munge:munge "$DIR/munge"
  chmod 755 "$DIR/munge"
  chmod 400 "$DIR/munge/munge.key"
  # munged writes its pid file into its own (munge-owned) dir; the link keeps one place for all pid files
  runuser -u munge -- munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" ||
    die "munged did not start"
  ln -sf "$DIR/munge/munged.pid" "$DIR/run/munged.pid"
  wait_for "$START_TIMEOUT" "munge credential round trip" munged:munged \
    bash -c "munge -S '$DIR/munge/munge.socket' -n | unmunge -S '$DIR/munge/munge.socket'"
}

start_mariadb() {
  [[ -n $(pid_of mariadb mariadbd) ]] && return 0
  # a private MariaDB: datadir, socket, pid and log in $DIR/mariadb (owned by mysql, whom the server runs as), TCP
  # on 127.0.0.1:$DB_PORT only; root logs in without a password (the default of mariadb-install-db, a test database)
  local m=$DIR/mariadb
  if [[ ! -d $m/data/mysql ]]; then
    mkdir -p "$m/data"
    chown -R mysql:mysql "$m"
    mariadb-install-db --no-defaults --user=mysql --datadir="$m/data" --auth-root-authentication-method=normal \
      --skip-test-db > "$DIR/log/mariadb-install.out" 2>&1 || die "mariadb-install-db failed" "$DIR/log/mariadb-install.out"
  fi
  # setsid + nohup: the server must outlive this script (and the test that called it); it has no --daemonize
  setsid nohup mariadbd --no-defaults --user=mysql --datadir="$m/data" --socket="$m/mariadb.sock" \
    --pid-file="$m/mariadb.pid" --log-error="$m/mariadb.log" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 > /dev/null 2>&1 < /dev/null &
  local server=$!  # setsid and nohup exec: this is mariadbd's pid
  ln -sf "$m/mariadb.pid" "$DIR/run/mariadb.pid"
  wait_for "$START_TIMEOUT" "MariaDB accepting connections on 127.0.0.1:$DB_PORT" "pid:$server" \
    mariadb --no-defaults -uroot -h127.0.0.1 -P"$DB_PORT" -e 'select 1'
}

start_slurmdbd() {
  [[ -n $(pid_of slurmdbd slurmdbd) ]] && return 0
  # slurmdbd has no -f: it reads slurmdbd.conf from the folder of $SLURM_CONF (exported above)
  slurmdbd 2>> "$DIR/log/slurmdbd.log" || die "slurmdbd did not start"
  wait_for "$START_TIMEOUT" "slurmdbd answering (sacctmgr show cluster)" slurmdbd:slurmdbd sacctmgr -i show cluster
  # the cluster must be known to the accounting database before slurmctld registers, else jobs are not recorded
  sacctmgr -i show cluster format=cluster -n | grep -qw "$CLUSTER" ||
    sacctmgr -i add cluster "$CLUSTER" > /dev/null || die "sacctmgr add cluster $CLUSTER failed"
}

start_slurm() {
  if [[ -z $(pid_of slurmctld slurmctld) ]]; then
    slurmctld -f "$DIR/slurm.conf" || die "slurmctld did not start"
  fi
  if [[ -z $(pid_of slurmd slurmd) ]]; then
    slurmd -f "$DIR/slurm.conf" || die "slurmd did not start"
  fi
  wait_for "$START_TIMEOUT" "slurmctld answering (scontrol ping)" slurmctld:slurmctld scontrol ping
  # the node is "idle" once slurmd registered; "idle*"/"unknown"/"down" means it has not (yet)
  wait_for "$START_TIMEOUT" "node $HOST idle in sinfo" slurmd:slurmd node_idle
}

node_idle() { [[ $(sinfo -h -n "$HOST" -o '%T' 2> /dev/null) == idle ]]; }

# The daemons of this cluster, as "name:program" (pid file $DIR/run/name.pid).
daemons() {
  echo munged:munged
  [[ $ACCOUNTING == slurmdbd ]] && echo mariadb:mariadbd slurmdbd:slurmdbd
  echo slurmctld:slurmctld slurmd:slurmd
}

all_up() {
  local d
  for d in $(daemons); do [[ -n $(pid_of "${d%%:*}" "${d#*:}") ]] || return 1; done
  node_idle
}

start() {
  need_root
  local began=$SECONDS
  if [[ -d $DIR ]] && all_up; then  # idempotent: a second start checks and returns
    log "cluster $CLUSTER already running: node $HOST idle (state: $DIR)"
    return 0
  fi
  mkdir -p "$DIR"/{log,run,state,spool/slurmd}
  install_missing
  local installed=$((SECONDS - began))
  # a half-started cluster (a start that failed) keeps its config while slurmctld runs; otherwise write it anew
  [[ -n $(pid_of slurmctld slurmctld) && -s $DIR/slurm.conf ]] || write_configs
  start_munge
  if [[ $ACCOUNTING == slurmdbd ]]; then
    start_mariadb
    start_slurmdbd
  fi
  start_slurm
  log "cluster $CLUSTER up in $((SECONDS - began)) s (apt: ${installed} s): node $HOST idle, partition debug," \
    "accounting: $ACCOUNTING (state: $DIR)"
  log "clients: export SLURM_CONF=$DIR/slurm.conf"
}

# --- stop / status -----------------------------------------------------------------------------------------------
stop() {
  need_root
  [[ -d $DIR ]] || { log "not running (no $DIR)"; return 0; }
  local jobs end d
  if [[ -n $(pid_of slurmctld slurmctld) ]]; then
    # cancel this cluster's jobs first (SLURM_CONF points at it): without slurmd their processes would be left behind
    jobs=$(squeue -h -o %i 2> /dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086  # one argument per job id
      scancel $jobs 2> /dev/null || true
      end=$((SECONDS + 30))   # KillWait (10 s) for the jobs' SIGKILL, and some margin
      while [[ -n $(squeue -h -o %i 2> /dev/null) ]] && ((SECONDS < end)); do sleep 0.5; done
    fi
  fi
  # every daemon that has a pid file here, whatever the accounting mode it was started with
  for d in slurmd:slurmd slurmctld:slurmctld slurmdbd:slurmdbd mariadb:mariadbd munged:munged; do
    stop_pid "${d%%:*}" "${d#*:}"
  done
  rm -rf "$DIR"
  log "stopped; removed $DIR"
}

status() {
  local d pid up=1
  for d in $(daemons); do
    pid=$(pid_of "${d%%:*}" "${d#*:}")
    if [[ -n $pid ]]; then printf '%-10s running (pid %s)\n' "${d%%:*}" "$pid"; else printf '%-10s stopped\n' "${d%%:*}"; up=0; fi
  done
  [[ $up -eq 1 ]] || return 1
  sinfo
  echo "export SLURM_CONF=$DIR/slurm.conf"
}

# A running cluster keeps the accounting mode it was started with, whatever the environment says now.
if [[ -s $DIR/slurm.conf && -n $(pid_of slurmctld slurmctld) ]]; then
  grep -q '^AccountingStorageType=accounting_storage/none' "$DIR/slurm.conf" && ACCOUNTING=none || ACCOUNTING=slurmdbd
fi

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
