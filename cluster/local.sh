#!/usr/bin/env bash
# A single-machine Ray cluster for automaster, bound to 127.0.0.1 only, with token authentication.
#
#   cluster/local.sh start [--num-cpus N] [--num-gpus N] [--port 6379] [--dashboard-port 8265]
#                          [--client-port 10001] [--temp-dir DIR]
#   cluster/local.sh status [--port 6379] [--temp-dir DIR]
#   cluster/local.sh stop   [--port 6379] [--temp-dir DIR]
#   eval "$(cluster/local.sh env [--port 6379] [--temp-dir DIR])"   # set the client environment in this shell
#
# What `start` does:
#   * every Ray listener (GCS, raylet, object manager, dashboard + job server, dashboard agent,
#     runtime-env agent, Ray Client server) binds 127.0.0.1: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
#     --node-ip-address 127.0.0.1 and --dashboard-host 127.0.0.1; it then checks the listeners
#     and stops the cluster again if any of them is on another address;
#   * token authentication (RAY_AUTH_MODE=token); the token is $RAY_AUTH_TOKEN, the file
#     $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (generated with `ray get-auth-token --generate`
#     if none exists). The token itself is never printed;
#   * usage stats and MLflow telemetry off;
#   * RAY_API_SERVER_ADDRESS points every process of the cluster at its own dashboard, so the
#     State API (used by Ray Train to free the resources of stopped Tune trials) works even when
#     other Ray instances run on the machine;
#   * jobs submitted to it inherit MLFLOW_TRACKING_URI ($MLFLOW_TRACKING_URI if set, else
#     sqlite:///$PWD/mlflow.db, an absolute path: a submitted job runs in a temporary copy of
#     the working directory, so a relative store would be lost).
#
# The cluster is identified by its Ray temp dir (default ${TMPDIR:-/tmp}/automaster-ray-<port>):
# `stop` ends only the processes of this cluster (and their children), not every Ray process of
# the user as `ray stop` does, so other Ray instances on the machine are left alone.
# Every command is idempotent: `start` on a running cluster prints its environment again,
# `stop` on a stopped one does nothing.
#
# Environment defaults for the options: AUTOMASTER_RAY_PORT, AUTOMASTER_RAY_DASHBOARD_PORT,
# AUTOMASTER_RAY_CLIENT_PORT, AUTOMASTER_RAY_TMPDIR, RAY (the ray executable).
set -euo pipefail

PROG="cluster/local.sh"
HOST=127.0.0.1

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# arguments

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
CMD=$1
shift
case "$CMD" in
    start | stop | status | env) ;;
    -h | --help | help) usage; exit 0 ;;
    *) echo "$PROG: unknown command '$CMD'" >&2; usage >&2; exit 2 ;;
esac

PORT=${AUTOMASTER_RAY_PORT:-6379}
DASHBOARD_PORT=${AUTOMASTER_RAY_DASHBOARD_PORT:-8265}
CLIENT_PORT=${AUTOMASTER_RAY_CLIENT_PORT:-10001}
TEMP_DIR=${AUTOMASTER_RAY_TMPDIR:-}
NUM_CPUS=""
NUM_GPUS=""
DASHBOARD_PORT_GIVEN=0

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --num-cpus) need_value "$@"; NUM_CPUS=$2; shift 2 ;;
        --num-cpus=*) NUM_CPUS=${1#*=}; shift ;;
        --num-gpus) need_value "$@"; NUM_GPUS=$2; shift 2 ;;
        --num-gpus=*) NUM_GPUS=${1#*=}; shift ;;
        --port) need_value "$@"; PORT=$2; shift 2 ;;
        --port=*) PORT=${1#*=}; shift ;;
        --dashboard-port) need_value "$@"; DASHBOARD_PORT=$2; DASHBOARD_PORT_GIVEN=1; shift 2 ;;
        --dashboard-port=*) DASHBOARD_PORT=${1#*=}; DASHBOARD_PORT_GIVEN=1; shift ;;
        --client-port) need_value "$@"; CLIENT_PORT=$2; shift 2 ;;
        --client-port=*) CLIENT_PORT=${1#*=}; shift ;;
        --temp-dir) need_value "$@"; TEMP_DIR=$2; shift 2 ;;
        --temp-dir=*) TEMP_DIR=${1#*=}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see $PROG --help)" ;;
    esac
done

for pair in "--port:$PORT" "--dashboard-port:$DASHBOARD_PORT" "--client-port:$CLIENT_PORT"; do
    is_uint "${pair#*:}" && ((${pair#*:} > 0 && ${pair#*:} < 65536)) || die "${pair%%:*} must be a port number, got '${pair#*:}'"
done
[[ -z $NUM_CPUS ]] || is_uint "$NUM_CPUS" || die "--num-cpus must be a whole number, got '$NUM_CPUS'"
[[ -z $NUM_GPUS ]] || is_uint "$NUM_GPUS" || die "--num-gpus must be a whole number, got '$NUM_GPUS'"
[[ $PORT != "$DASHBOARD_PORT" && $PORT != "$CLIENT_PORT" && $DASHBOARD_PORT != "$CLIENT_PORT" ]] ||
    die "--port, --dashboard-port and --client-port must differ"

TEMP_DIR=${TEMP_DIR:-${TMPDIR:-/tmp}/automaster-ray-$PORT}
TEMP_DIR=${TEMP_DIR%/}
[[ $TEMP_DIR == /* ]] || TEMP_DIR="$PWD/$TEMP_DIR"
# Ray puts Unix sockets under <temp dir>/session_<date>_<pid>/sockets/; their paths must stay
# under the 107-byte limit.
((${#TEMP_DIR} <= 60)) || die "--temp-dir '$TEMP_DIR' is too long for Ray's Unix sockets (max 60 characters)"
STATE_FILE="$TEMP_DIR/automaster-local.env"

# The ray executable: $RAY, else `ray` on PATH, else the checkout's virtual environment.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n ${RAY:-} ]]; then
    RAY_BIN=$RAY
elif command -v ray >/dev/null 2>&1; then
    RAY_BIN=$(command -v ray)
elif [[ -x $REPO_ROOT/.venv/bin/ray ]]; then
    RAY_BIN=$REPO_ROOT/.venv/bin/ray
else
    RAY_BIN=""
fi

# ---------------------------------------------------------------------------------------------
# helpers

# The processes of this cluster: those whose command line names its temp dir or its GCS address
# (the Ray Client server names only the latter), plus all their descendants (workers, agents, job
# drivers). Zombies, this script, its subshells and its ancestors are left out.
cluster_pids() {
    local snapshot
    snapshot=$(ps -ww -eo pid=,ppid=,stat=,args= 2>/dev/null) || return 0
    awk -v t="$TEMP_DIR" -v gcs="--address=$HOST:$PORT" -v me="$$" '
        {
            pid = $1
            if ($3 ~ /^Z/) next
            ppid[pid] = $2
            args = $0; sub(/^[ \t]*[0-9]+[ \t]+[0-9]+[ \t]+[^ \t]+[ \t]*/, "", args)
            if (index(args, t "/") || index(args, t " ") || substr(args, length(args) - length(t) + 1) == t)
                match_[pid] = 1
            else if (index(args, gcs " ") || substr(args, length(args) - length(gcs) + 1) == gcs)
                match_[pid] = 1
        }
        END {
            # this script: its ancestors, itself and everything it started (subshells, ps, awk)
            for (p = me; p != "" && p != 0 && !(p in self); p = ppid[p]) self[p] = 1
            self[me] = 1
            do {
                grew = 0
                for (p in ppid) if (!(p in self) && p != ppid[p] && (ppid[p] == me || ((ppid[p] in self) && (ppid[p] in mine)))) {
                    self[p] = 1; mine[p] = 1; grew = 1
                }
            } while (grew)
            for (p in match_) if (!(p in self)) inside[p] = 1
            do {
                grew = 0
                for (p in ppid) if (!(p in inside) && !(p in self) && (ppid[p] in inside)) { inside[p] = 1; grew = 1 }
            } while (grew)
            for (p in inside) print p
        }' <<<"$snapshot" | sort -n
}

alive() { # a running process (a zombie, waiting to be reaped by init, counts as gone)
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n $stat && $stat != Z* ]]
}

http_code() { # http_code PORT PATH: the HTTP status of http://127.0.0.1:PORT/PATH, 000 if none
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -m 3 -w '%{http_code}' "http://$HOST:$1$2" 2>/dev/null || true
    else
        (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null && echo 401 || echo 000
    fi
}

port_in_use() { # something accepts TCP connections on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# TCP listeners of the given pids, one "address:port process" per line (ss on Linux, lsof on macOS).
listeners_of() {
    local pids=("$@")
    ((${#pids[@]})) || return 0
    if command -v ss >/dev/null 2>&1; then
        ss -H -tlnp 2>/dev/null | awk -v list=" ${pids[*]} " '
            {
                if (match($0, /pid=[0-9]+/)) {
                    p = substr($0, RSTART + 4, RLENGTH - 4)
                    if (index(list, " " p " ")) {
                        name = $0; sub(/.*users:\(\("/, "", name); sub(/".*/, "", name)
                        print $4, name "(" p ")"
                    }
                }
            }'
    elif command -v lsof >/dev/null 2>&1; then
        lsof -nP -a -iTCP -sTCP:LISTEN -p "$(IFS=,; echo "${pids[*]}")" 2>/dev/null |
            awk 'NR > 1 { print $9, $1 "(" $2 ")" }'
    else
        return 2
    fi
}

is_loopback() { # is_loopback ADDRESS:PORT
    local addr=${1%:*}
    addr=${addr#[}
    addr=${addr%]}
    addr=${addr#::ffff:}
    [[ $addr == 127.* || $addr == ::1 || $addr == localhost ]]
}

token_source() {
    if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
        echo "the RAY_AUTH_TOKEN environment variable"
    elif [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        echo "$RAY_AUTH_TOKEN_PATH (RAY_AUTH_TOKEN_PATH)"
    else
        echo "$HOME/.ray/auth_token"
    fi
}

ensure_token() {
    if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
        return 0
    fi
    if [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        [[ -s $RAY_AUTH_TOKEN_PATH ]] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty"
        return 0
    fi
    if [[ -s $HOME/.ray/auth_token ]]; then
        echo "auth token: $HOME/.ray/auth_token (existing)"
    else
        # Prints the token on stdout: keep it off the terminal and out of logs.
        (umask 077 && RAY_AUTH_MODE=token "$RAY_BIN" get-auth-token --generate >/dev/null) ||
            die "could not generate a token with '$RAY_BIN get-auth-token --generate'"
        [[ -s $HOME/.ray/auth_token ]] || die "'ray get-auth-token --generate' wrote no $HOME/.ray/auth_token"
        echo "auth token: generated $HOME/.ray/auth_token"
    fi
    chmod 600 "$HOME/.ray/auth_token" 2>/dev/null || true
}

load_state() { # the ports and tracking URI the running cluster was started with
    if [[ -f $STATE_FILE ]]; then
        local key value
        while IFS='=' read -r key value; do
            case "$key" in
                PORT) PORT=$value ;;
                DASHBOARD_PORT) [[ $DASHBOARD_PORT_GIVEN == 1 ]] || DASHBOARD_PORT=$value ;;
                CLIENT_PORT) CLIENT_PORT=$value ;;
                MLFLOW_URI) MLFLOW_URI=$value ;;
            esac
        done <"$STATE_FILE"
    fi
}

print_client_env() {
    local address="http://$HOST:$DASHBOARD_PORT"
    local uri=${MLFLOW_URI:-sqlite:///$PWD/mlflow.db}
    local sel=""
    [[ $PORT == 6379 ]] || sel=" --port $PORT"
    [[ $TEMP_DIR == "${TMPDIR:-/tmp}/automaster-ray-$PORT" ]] || sel+=" --temp-dir $TEMP_DIR"
    cat <<EOF

Ray head on $HOST (GCS $HOST:$PORT, dashboard and job server $address), token auth on.
Client environment (the token is read from $(token_source)):

    export RAY_ADDRESS=$address RAY_AUTH_MODE=token
    export MLFLOW_TRACKING_URI=$uri

Submit a job (relative data paths are refused inside a job: use absolute paths or URIs):

    ray job submit --address $address --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/demaster.py --corpus $PWD/data/fma_small --out $PWD/data/paired

Jobs on this cluster inherit MLFLOW_TRACKING_URI=$uri
(browse it with: mlflow ui --backend-store-uri $uri --host 127.0.0.1).
Dashboard: $address (loopback only).  Status: $PROG status$sel.  Stop: $PROG stop$sel.
EOF
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_status() {
    load_state
    local pids code
    pids=($(cluster_pids))
    if ((${#pids[@]} == 0)); then
        echo "automaster local Ray (temp dir $TEMP_DIR): not running"
        return 3
    fi
    code=$(http_code "$DASHBOARD_PORT" /api/version)
    echo "automaster local Ray (temp dir $TEMP_DIR): running, ${#pids[@]} processes"
    echo "dashboard/job server http://$HOST:$DASHBOARD_PORT: HTTP $code$([[ $code == 401 ]] && echo ' (token required: good)')"
    echo "listeners:"
    { listeners_of "${pids[@]}" || echo "(neither ss nor lsof found)"; } | sed 's/^/    /'
    if [[ -n $RAY_BIN ]]; then
        echo "ray status:"
        # Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 the client rewrites 127.0.0.1 to the
        # machine's routable address and cannot reach the loopback GCS.
        local limit=""
        command -v timeout >/dev/null 2>&1 && limit="timeout 30"
        env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 \
            $limit "$RAY_BIN" status --address "$HOST:$PORT" 2>&1 | sed 's/^/    /' || true
    fi
}

stop_pids() { # TERM, wait up to 8 s, then KILL what is left
    local pids=("$@") left i p
    ((${#pids[@]})) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 16; i++)); do
        left=()
        for p in "${pids[@]}"; do
            if alive "$p"; then left+=("$p"); fi
        done
        ((${#left[@]})) || return 0
        sleep 0.5
    done
    echo "killing ${#left[@]} processes still running 8 s after SIGTERM: $(ps -o comm= -p "$(IFS=,; echo "${left[*]}")" 2>/dev/null | tr '\n' ' ')"
    kill -KILL "${left[@]}" 2>/dev/null || true
}

cmd_stop() {
    local pids p comm
    pids=($(cluster_pids))
    if ((${#pids[@]} == 0)); then
        echo "automaster local Ray (temp dir $TEMP_DIR): not running, nothing to stop"
        rm -f "$STATE_FILE"
        return 0
    fi
    echo "stopping automaster local Ray (temp dir $TEMP_DIR): ${#pids[@]} processes"
    # In the order `ray stop` uses: the raylet first (its workers and agents follow it), then
    # everything else, the GCS last.
    local raylet=() gcs=() rest=()
    for p in "${pids[@]}"; do
        comm=$(ps -o comm= -p "$p" 2>/dev/null || true)
        case "${comm##*/}" in
            raylet) raylet+=("$p") ;;
            gcs_server) gcs+=("$p") ;;
            *) rest+=("$p") ;;
        esac
    done
    if ((${#raylet[@]})); then stop_pids "${raylet[@]}"; fi
    if ((${#rest[@]})); then stop_pids "${rest[@]}"; fi
    # Workers started meanwhile (none expected) go too, then the GCS.
    pids=($(cluster_pids))
    rest=()
    for p in "${pids[@]+"${pids[@]}"}"; do
        if [[ " ${gcs[*]+"${gcs[*]}"} " != *" $p "* ]]; then rest+=("$p"); fi
    done
    if ((${#rest[@]})); then stop_pids "${rest[@]}"; fi
    if ((${#gcs[@]})); then stop_pids "${gcs[@]}"; fi
    rm -f "$STATE_FILE"
    echo "stopped"
}

cmd_start() {
    [[ -n $RAY_BIN ]] || die "no 'ray' executable: activate the project's environment (pip install -e .) or set RAY=/path/to/ray"
    local pids
    pids=($(cluster_pids))
    if ((${#pids[@]})); then
        load_state
        echo "automaster local Ray (temp dir $TEMP_DIR) is already running (${#pids[@]} processes)"
        print_client_env
        return 0
    fi
    local p
    for p in "$PORT" "$DASHBOARD_PORT" "$CLIENT_PORT"; do
        ! port_in_use "$p" || die "port $p on $HOST is already in use (another Ray?); choose others with --port/--dashboard-port/--client-port"
    done

    ensure_token
    MLFLOW_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}
    mkdir -p "$TEMP_DIR"
    local log="$TEMP_DIR/local-start.log"
    local args=(start --head
        --node-ip-address "$HOST"
        --port "$PORT"
        --include-dashboard true
        --dashboard-host "$HOST"
        --dashboard-port "$DASHBOARD_PORT"
        --dashboard-agent-listen-port 0
        --ray-client-server-port "$CLIENT_PORT"
        --temp-dir "$TEMP_DIR"
        --disable-usage-stats)
    [[ -z $NUM_CPUS ]] || args+=(--num-cpus "$NUM_CPUS")
    [[ -z $NUM_GPUS ]] || args+=(--num-gpus "$NUM_GPUS")

    echo "starting Ray head on $HOST (port $PORT, dashboard $DASHBOARD_PORT, temp dir $TEMP_DIR)"
    # Job entrypoints (`python jobs/x.py`) run with the head's PATH: put the Python environment
    # that holds this ray first, so `python` there is the one with ray and automaster's deps.
    # RAY_API_SERVER_ADDRESS names this cluster's dashboard to every process of it: the State API
    # (which Ray Train's placement-group cleaner uses to free the workers of a Tune trial that was
    # stopped) otherwise looks for "the" Ray on the machine by scanning processes and fails when
    # several run side by side, leaking the trial's CPUs until the search stalls.
    local bin_dir
    bin_dir=$(cd "$(dirname "$RAY_BIN")" && pwd)
    if ! env PATH="$bin_dir:$PATH" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 \
        RAY_API_SERVER_ADDRESS="http://$HOST:$DASHBOARD_PORT" \
        MLFLOW_DISABLE_TELEMETRY=true MLFLOW_TRACKING_URI="$MLFLOW_URI" \
        "$RAY_BIN" "${args[@]}" >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        die "ray start failed (full log: $log)"
    fi
    {
        echo "PORT=$PORT"
        echo "DASHBOARD_PORT=$DASHBOARD_PORT"
        echo "CLIENT_PORT=$CLIENT_PORT"
        echo "MLFLOW_URI=$MLFLOW_URI"
    } >"$STATE_FILE"

    # The job server answers (401 without a token) once the dashboard is up.
    local code i
    for ((i = 0; i < 120; i++)); do
        code=$(http_code "$DASHBOARD_PORT" /api/version)
        [[ $code == 200 || $code == 401 ]] && break
        sleep 0.5
    done
    if [[ $code != 200 && $code != 401 ]]; then
        cmd_stop >&2
        die "the dashboard did not come up on http://$HOST:$DASHBOARD_PORT (log: $log)"
    fi

    # Fail closed: every listener of this cluster must be on loopback.
    pids=($(cluster_pids))
    local listeners bad
    if ! listeners=$(listeners_of ${pids[@]+"${pids[@]}"}); then
        echo "warning: neither ss nor lsof found: could not check that Ray listens on $HOST only" >&2
        print_client_env
        return 0
    fi
    bad=$(while read -r addr _; do [[ -z $addr ]] || is_loopback "$addr" || echo "$addr"; done <<<"$listeners")
    if [[ -n $bad ]]; then
        echo "$listeners" >&2
        cmd_stop >&2
        die "Ray listened on a non-loopback address ($(echo $bad)); stopped it"
    fi
    echo "listening on loopback only: $(awk '{ print $1 }' <<<"$listeners" | sort -u | tr '\n' ' ')"
    print_client_env
}

cmd_env() { # only what `eval` runs: the two exports of the client environment (nothing else on stdout)
    load_state
    printf 'export RAY_ADDRESS=%q RAY_AUTH_MODE=token\n' "http://$HOST:$DASHBOARD_PORT"
    printf 'export MLFLOW_TRACKING_URI=%q\n' "${MLFLOW_URI:-sqlite:///$PWD/mlflow.db}"
}

"cmd_$CMD"
