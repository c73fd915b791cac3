#!/usr/bin/env bash
# End-to-end test of the workflow under a real SLURM (snakemake-executor-plugin-slurm), as root:
#   1. installs slurmctld, slurmd, slurm-client and munge with apt-get where they are missing;
#   2. starts a throw-away single-node cluster (no accounting, no GPUs; /etc/slurm/slurm.conf restored after);
#   3. runs the tiny test workflow through sbatch (profiles/slurm-test) in a copy of the repository,
#      and the same workflow locally (--cores 2) in another copy, side by side;
#   4. checks that every metric in results/test/metrics.csv is identical in both runs.
# The daemons it started are stopped (pid files) on exit; exit status 0 only when all of it passed.
#
#   sudo PATH=/path/to/venv/bin:$PATH scripts/slurm_test.sh
#
# Environment: REPO (default: this repository), SLURM_TEST_TIMEOUT (seconds per workflow run,
# default 1080), SLURM_TEST_KEEP=1 (keep the work directory), SLURM_TEST_SEQUENTIAL=1 (run the
# local reference after the SLURM run instead of beside it), SLURM_TEST_WORKDIR (default: mktemp).
# `snakemake` (with the plugin) and `unlearnbench`'s dependencies must be on PATH: SLURM jobs
# inherit the submitting environment.
set -euo pipefail

T0=$(date +%s)
log() { printf '[slurm_test %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { log "FAILED: $*"; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${REPO:-$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel)}
TIMEOUT=${SLURM_TEST_TIMEOUT:-1080}
CONFIG=config/test.yaml
TARGET=results/table.csv
METRICS=results/test/metrics.csv

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts slurmctld/slurmd/munged)"
command -v snakemake >/dev/null || die "snakemake not on PATH (activate the project's venv)"
command -v unlearnbench >/dev/null || die "unlearnbench not on PATH (activate the project's venv)"
PYTHON=$(dirname "$(readlink -f "$(command -v snakemake)")")/python
[ -x "$PYTHON" ] || PYTHON=$(command -v python3)
PY_VERSIONS=$("$PYTHON" -c 'import importlib.metadata as m
print(", ".join(f"{d} {m.version(d)}" for d in ("snakemake", "snakemake-executor-plugin-slurm",
                                               "snakemake-executor-plugin-slurm-jobstep")))' 2>/dev/null) \
    || die "snakemake or snakemake-executor-plugin-slurm is not installed in $PYTHON's environment"

WORK=${SLURM_TEST_WORKDIR:-$(mktemp -d /tmp/unlearnbench-slurm-test.XXXXXX)}
mkdir -p "$WORK"
STARTED=()        # pid files of the daemons this script started
RUN_PIDS=()       # workflow runs in flight (subshells; their timeout pids are in $WORK/*.timeout.pid)
CONF_WRITTEN=""   # /etc/slurm/slurm.conf is this script's
CONF_SAVED=""     # where the one found there was moved

cleanup() {
    local rc=$?
    set +e
    if [ ${#RUN_PIDS[@]} -gt 0 ]; then      # stop runs in flight: timeout passes TERM to snakemake
        local tf tpid i pid alive
        for tf in "$WORK"/*.timeout.pid; do
            tpid=$(cat "$tf" 2>/dev/null) && kill -TERM "$tpid" 2>/dev/null
        done
        for i in $(seq 100); do               # up to 20 s
            alive=""
            for pid in "${RUN_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ -n "$alive" ] || break
            sleep 0.2
        done
        for tf in "$WORK"/*.timeout.pid; do   # timeout leads its own process group
            tpid=$(cat "$tf" 2>/dev/null) && kill -KILL -- "-$tpid" 2>/dev/null
        done
    fi
    if [ -n "$CONF_WRITTEN" ] && [ -f "$WORK/slurmctld.pid" ]; then
        scancel --user=root 2>/dev/null   # this script's own single-node cluster
    fi
    local pidfile pid i
    for pidfile in "${STARTED[@]}"; do        # slurmd, slurmctld, then munged
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        kill "$pid" 2>/dev/null || continue
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        log "stopped $(basename "$pidfile" .pid) (pid $pid)"
    done
    if [ -n "$CONF_WRITTEN" ]; then
        if [ -n "$CONF_SAVED" ]; then mv -f "$CONF_SAVED" /etc/slurm/slurm.conf
        else cp /etc/slurm/slurm.conf "$WORK/slurm.conf" 2>/dev/null; rm -f /etc/slurm/slurm.conf; fi
    fi
    if [ "$rc" -ne 0 ]; then
        for f in "$WORK"/slurmctld.log "$WORK"/slurmd.log; do
            [ -f "$f" ] && { echo "---- tail $f"; tail -n 20 "$f"; }
        done
        log "FAILED (exit $rc) after $(( $(date +%s) - T0 )) s; work directory kept: $WORK"
    elif [ "${SLURM_TEST_KEEP:-0}" = 1 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurmctld slurmd slurm-client munge)
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >"$WORK/apt.log" 2>&1 \
        || { apt-get update -qq >>"$WORK/apt.log" 2>&1 \
             && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >>"$WORK/apt.log" 2>&1; } \
        || { tail -n 20 "$WORK/apt.log"; die "apt-get install failed"; }
fi

# ------------------------------------------------------------------ munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running: using it"
else
    [ -s /etc/munge/munge.key ] || {
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    STARTED=(/run/munge/munged.pid "${STARTED[@]}")
    for i in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer"
fi

# ------------------------------------------------------------------ slurm
# slurm.conf must be the default /etc/slurm/slurm.conf: the plugin's job step (srun inside each
# batch job, snakemake-executor-plugin-slurm-jobstep) drops every SLURM_* variable, SLURM_CONF
# included. An existing one is moved aside and restored on exit; state and logs live under $WORK.
pgrep -x slurmctld >/dev/null && die "a slurmctld is already running; stop it first"
pgrep -x slurmd >/dev/null && die "a slurmd is already running; stop it first"
HOST=$(hostname -s)
CPUS=$(nproc)
NODE_MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[ -n "$NODE_MEM" ] || die "slurmd -C printed no RealMemory"
MEM=$(( NODE_MEM > 3072 ? NODE_MEM - 1024 : NODE_MEM ))
mkdir -p "$WORK/state" "$WORK/spool" /etc/slurm
SLURM_CONF=/etc/slurm/slurm.conf
if [ -e "$SLURM_CONF" ]; then
    mv "$SLURM_CONF" "$WORK/slurm.conf.saved"
    CONF_SAVED="$WORK/slurm.conf.saved"
fi
CONF_WRITTEN=1
cat >"$SLURM_CONF" <<EOF
ClusterName=unlearnbench-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
log "versions: $(sinfo --version), $(munged --version 2>&1 | awk '{print $1}' | head -n1), $PY_VERSIONS"
log "slurm.conf: node $HOST, $CPUS CPUs, RealMemory=$MEM MiB (slurmd -C: $NODE_MEM)"
slurmctld
STARTED=("$WORK/slurmctld.pid" "${STARTED[@]}")
slurmd
STARTED=("$WORK/slurmd.pid" "${STARTED[@]}")
state=""
for i in $(seq 300); do
    state=$(sinfo -h -o %T 2>/dev/null | head -n1) || true
    [ "$state" = idle ] && break
    sleep 0.1
done
[ "$state" = idle ] || die "node not idle after 30 s (state: '${state:-none}')"
log "cluster up: $(sinfo -h -o '%P %D %T %c CPUs %m MiB')"

# ------------------------------------------------------------------ workflow copies
copy_repo() {   # tracked and untracked-not-ignored files of the working tree (no results/)
    mkdir -p "$1"
    git -C "$REPO" ls-files -co --exclude-standard -z \
        | (cd "$REPO" && tar --null --ignore-failed-read -T - -cf -) 2>/dev/null \
        | tar -xf - -C "$1"
    [ -f "$1/Snakefile" ] || die "copying $REPO to $1 failed"
}
copy_repo "$WORK/slurm"
copy_repo "$WORK/local"

start_run() {   # name dir args...: snakemake in the background, in the copy's own code (PYTHONPATH),
                # under `timeout` (its pid in $WORK/<name>.timeout.pid, its seconds in <name>.seconds)
    local name=$1 dir=$2; shift 2
    (
        cd "$dir"
        export PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}"
        start=$(date +%s)
        timeout -k 30 "$TIMEOUT" snakemake --configfile="$CONFIG" "$@" "$TARGET" >"$WORK/$name.log" 2>&1 &
        echo $! >"$WORK/$name.timeout.pid"
        rc=0
        wait $! || rc=$?
        echo $(( $(date +%s) - start )) >"$WORK/$name.seconds"
        exit $rc
    ) &
    RUN_PIDS+=($!)
    LAST_PID=$!
}

finish_run() {  # pid name label: wait for a run, fail with its log's tail unless it passed
    local pid=$1 name=$2 label=$3 rc=0
    wait "$pid" || rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$WORK/$name.log"
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && die "$label run timed out after $TIMEOUT s"
        die "$label run exited $rc (log: $WORK/$name.log)"
    fi
    log "$label run passed in $(cat "$WORK/$name.seconds") s"
}

LOCAL=(--cores 2)
SLURM=(--profile profiles/slurm-test)
if [ "${SLURM_TEST_SEQUENTIAL:-0}" != 1 ]; then
    log "local reference run started beside the SLURM run: snakemake ${LOCAL[*]}"
    start_run local "$WORK/local" "${LOCAL[@]}"
    local_pid=$LAST_PID
fi
log "SLURM run: snakemake ${SLURM[*]} --configfile=$CONFIG $TARGET"
start_run slurm "$WORK/slurm" "${SLURM[@]}"
finish_run "$LAST_PID" slurm SLURM
n_sbatch=$(grep -c "Job .* has been submitted with SLURM jobid" "$WORK/slurm.log" || true)
log "$n_sbatch jobs went through sbatch"
[ "$n_sbatch" -gt 0 ] || die "no job went through sbatch"
if [ "${SLURM_TEST_SEQUENTIAL:-0}" = 1 ]; then
    log "local reference run: snakemake ${LOCAL[*]}"
    start_run local "$WORK/local" "${LOCAL[@]}"
    local_pid=$LAST_PID
fi
finish_run "$local_pid" local local
RUN_PIDS=()

# ------------------------------------------------------------------ compare
"$PYTHON" - "$WORK/slurm/$METRICS" "$WORK/local/$METRICS" <<'EOF' || die "metrics differ"
import csv, sys
METRICS = ["fid", "kid", "H", "UA", "forget_prob", "remaining_acc"]
def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{path}: no rows")
    missing = [c for c in METRICS if c not in rows[0]]
    if missing:
        sys.exit(f"{path}: no column(s) {missing}")
    key = [c for c in ("method", "variant", "forget_class", "seed") if c in rows[0]]
    return {tuple(r[c] for c in key): r for r in rows}, key
slurm, key = read(sys.argv[1])
local, _ = read(sys.argv[2])
if set(slurm) != set(local):
    sys.exit(f"different rows: only SLURM {sorted(set(slurm) - set(local))}, only local {sorted(set(local) - set(slurm))}")
bad = [(k, c, slurm[k][c], local[k][c]) for k in sorted(slurm) for c in METRICS if slurm[k][c] != local[k][c]]
for k, c, a, b in bad:
    print(f"  {dict(zip(key, k))} {c}: SLURM {a} != local {b}")
if bad:
    sys.exit(1)
print(f"  {len(slurm)} rows x {len(METRICS)} metrics ({', '.join(METRICS)}) identical")
EOF
log "PASSED: SLURM and local metrics identical; SLURM run $(cat "$WORK/slurm.seconds") s," \
    "local run $(cat "$WORK/local.seconds") s, total $(( $(date +%s) - T0 )) s"
