#!/usr/bin/env bash
# N vLLM replicas of an Aligner checkpoint on one machine, without docker: replica i runs on GPU i
# and port BASE_PORT+i. Waits until every replica answers /health, prints the --server flags for
# aligner-chains, and stops them all on Ctrl-C (or when one of them dies).
#
#   VLLM_API_KEY=change-me integrations/vllm/replicas.sh 4
#   VLLM_API_KEY=change-me integrations/vllm/replicas.sh 2 -- --enable-prefix-caching
#
# Arguments: N (default: every GPU nvidia-smi lists), then after `--` extra `vllm serve` options.
# Environment: VLLM_API_KEY (required), ALIGNER_CHECKPOINT (default aligner/aligner-7b-v1.0),
# BASE_PORT (8001), HOST (127.0.0.1; 0.0.0.0 serves other machines too), LOG_DIR (./vllm-logs),
# STARTUP_TIMEOUT in seconds (900).
set -euo pipefail

usage() {
    sed -n '2,12s/^# \{0,1\}//p' "$0"
}

die() {
    echo "replicas.sh: $*" >&2
    exit 1
}

n=""
extra=()
while (($#)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    *)
        [[ -z "$n" ]] || die "unexpected argument: $1 (vllm options go after --)"
        n="$1"
        shift
        ;;
    esac
done

: "${VLLM_API_KEY:?set VLLM_API_KEY, the key clients send as ALIGNER_API_KEY}"
export VLLM_API_KEY
model="${ALIGNER_CHECKPOINT:-aligner/aligner-7b-v1.0}"
base_port="${BASE_PORT:-8001}"
host="${HOST:-127.0.0.1}"
log_dir="${LOG_DIR:-./vllm-logs}"
startup_timeout="${STARTUP_TIMEOUT:-900}"

command -v vllm >/dev/null || die "vllm is not installed (pip install vllm)"
command -v curl >/dev/null || die "curl is needed to poll /health"
if [[ -z "$n" ]]; then
    command -v nvidia-smi >/dev/null || die "give the number of replicas (no nvidia-smi to count GPUs)"
    n="$(nvidia-smi --list-gpus | wc -l)"
fi
[[ "$n" =~ ^[1-9][0-9]*$ ]] || die "the number of replicas must be a positive integer, not '$n'"

# Where this machine polls the replicas, and the host name clients should use.
probe_host="$host"
public_host="$host"
if [[ "$host" == "0.0.0.0" ]]; then
    probe_host="127.0.0.1"
    public_host="$(hostname)"
fi

mkdir -p "$log_dir"
pids=()

# shellcheck disable=SC2317  # run by the EXIT trap, which shellcheck 0.9 does not follow
stop_all() {
    trap - EXIT INT TERM
    ((${#pids[@]})) || return 0
    echo "stopping ${#pids[@]} replica(s)" >&2
    local pid alive
    for pid in "${pids[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true # each replica leads its own process group (set -m)
    done
    for _ in {1..30}; do
        alive=0
        for pid in "${pids[@]}"; do
            if kill -0 -- "-$pid" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || return 0
        sleep 1
    done
    for pid in "${pids[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
}
trap stop_all EXIT
trap 'exit 130' INT TERM # the EXIT trap stops the replicas

set -m # every background job gets its own process group, so stop_all reaches vLLM's workers too
for ((i = 0; i < n; i++)); do
    port=$((base_port + i))
    CUDA_VISIBLE_DEVICES="$i" vllm serve "$model" \
        --dtype bfloat16 \
        --max-model-len 4096 \
        --generation-config vllm \
        --host "$host" \
        --port "$port" \
        "${extra[@]}" </dev/null >"$log_dir/replica-$i.log" 2>&1 &
    pids+=("$!")
    echo "replica $i: GPU $i, port $port, log $log_dir/replica-$i.log" >&2
done
set +m

deadline=$((SECONDS + startup_timeout))
for ((i = 0; i < n; i++)); do
    port=$((base_port + i))
    until curl -fs -o /dev/null --max-time 5 "http://$probe_host:$port/health"; do
        if ! kill -0 "${pids[i]}" 2>/dev/null; then
            tail -n 20 "$log_dir/replica-$i.log" >&2 || true
            die "replica $i (port $port) exited before it was ready"
        fi
        ((SECONDS < deadline)) || die "replica $i (port $port) not ready after ${startup_timeout}s"
        sleep 2
    done
    echo "replica $i ready" >&2
done

servers=""
for ((i = 0; i < n; i++)); do
    servers+=" --server http://$public_host:$((base_port + i))"
done
echo "all $n replicas ready; use (Ctrl-C stops them):"
echo "  export ALIGNER_API_KEY=\"\$VLLM_API_KEY\""
echo "  aligner-chains correct${servers} --concurrency $((64 * n)) --input pairs.jsonl --output out.jsonl"

# Serve until Ctrl-C, or until a replica dies (then stop the others: a partial fleet is easy to miss).
status=0
wait -n || status=$? # the replicas are this script's only jobs
echo "a replica exited (status $status); see $log_dir" >&2
exit 1
