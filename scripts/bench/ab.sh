#!/bin/bash
# A/B of two hotswap trees on the WSGI hello app: wrk -t1 -c16, keep-alive and
# Connection: close, rounds interleaved (A then B in each round), 2 workers each.
#   scripts/bench/ab.sh OLD_TREE NEW_TREE [ROUNDS] [SECONDS]
# OLD_TREE is e.g. a `git worktree add /tmp/old <commit>`; prints one line per round and
# server, then the new/old ratio of each round.
set -euo pipefail
old="$1"; new="$2"; rounds="${3:-5}"; secs="${4:-4}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${HOTSWAP_BENCH_VENV:-$here/.venv}/bin/python"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port_of() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
start() {  # tree port
    PYTHONPATH="$1:$here" "$py" -m hotswap start apps:app -w 2 -b "127.0.0.1:$2" \
        --log-level warning > "$work/$2.log" 2>&1 &
    pids+=("$!")
}
a=$(port_of); b=$(port_of)
start "$old" "$a"; start "$new" "$b"
for port in "$a" "$b"; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done
rate() { wrk -t1 -c16 -d"${secs}s" "$@" 2>/dev/null | awk '/Requests\/sec/{print $2}'; }
for r in $(seq "$rounds"); do
    ka_a=$(rate "http://127.0.0.1:$a/"); cl_a=$(rate -H "Connection: close" "http://127.0.0.1:$a/")
    ka_b=$(rate "http://127.0.0.1:$b/"); cl_b=$(rate -H "Connection: close" "http://127.0.0.1:$b/")
    echo "round $r old keep-alive $ka_a close $cl_a | new keep-alive $ka_b close $cl_b |" \
         "new/old keep-alive $(echo "$ka_b / $ka_a" | bc -l | cut -c1-4) close $(echo "$cl_b / $cl_a" | bc -l | cut -c1-4)"
done
