#!/usr/bin/env bash
# What the gateway costs: the same authenticated GET /api/orders/{id} sent
# straight to the order service and through the gateway, measured with wrk
# in one run, alternating the two targets to cancel out drift. Prints
# requests/s and p50/p99 for each and the ratios the gateway issue targets
# (throughput through the gateway >= 70% of direct; at most +0.5 ms at p50).
#
# Needs a running stack (`cargo xtask up --release`) and wrk (Debian: wrk).
# Usage: perf/scripts/gateway_overhead.sh [seconds per round] [connections] [rounds]
set -euo pipefail

seconds=${1:-10}
connections=${2:-16}
rounds=${3:-2}
gateway=${GATEWAY_URL:-http://127.0.0.1:8084}
direct=${ORDER_URL:-http://127.0.0.1:8081}
threads=$(( connections < 2 ? connections : 2 ))

command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk"; exit 1; }
curl -fsS "$gateway/api/health" >/dev/null || { echo "no stack at $gateway: run cargo xtask up --release"; exit 1; }

email="overhead-$(date +%s%N)@example.com"
token=$(curl -fsS -X POST "$gateway/api/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"correct horse battery\",\"name\":\"Bench\"}" \
    | sed 's/.*"token":"\([^"]*\)".*/\1/')
order=$(curl -fsS -X POST "$gateway/api/orders" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' \
    -d '{"items":[{"sku":"BENCH-1","quantity":1}],
         "shipping_address":{"name":"Bench","street":"1 Main St","city":"Berlin",
                             "postal_code":"10115","country":"DE"}}' \
    | sed 's/^{"id":"\([^"]*\)".*/\1/')
path="/api/orders/$order"

# Prints "requests_per_second p50_ms p99_ms" for one wrk run.
measure() {
    wrk -t "$threads" -c "$connections" -d "${seconds}s" --latency \
        -H "authorization: Bearer $token" "$1$path" | awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        $1 == "Requests/sec:" { rps = $2 }
        / Non-2xx / { bad = $NF }
        END { if (bad > 0) { print "non-2xx answers: " bad > "/dev/stderr"; exit 1 }; printf "%s %s %s\n", rps, p50, p99 }'
}

echo "GET $path, ${seconds}s x $rounds rounds per target, $connections connections, $threads wrk threads"
sum() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
d_rps=0; d_p50=0; d_p99=0; g_rps=0; g_p50=0; g_p99=0
for round in $(seq 1 "$rounds"); do
    read -r rps p50 p99 < <(measure "$direct")
    printf 'round %d  direct   %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms\n' "$round" "$rps" "$p50" "$p99"
    d_rps=$(sum "$d_rps" "$rps"); d_p50=$(sum "$d_p50" "$p50"); d_p99=$(sum "$d_p99" "$p99")
    read -r rps p50 p99 < <(measure "$gateway")
    printf 'round %d  gateway  %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms\n' "$round" "$rps" "$p50" "$p99"
    g_rps=$(sum "$g_rps" "$rps"); g_p50=$(sum "$g_p50" "$p50"); g_p99=$(sum "$g_p99" "$p99")
done
awk -v n="$rounds" -v dr="$d_rps" -v d5="$d_p50" -v d9="$d_p99" -v gr="$g_rps" -v g5="$g_p50" -v g9="$g_p99" 'BEGIN {
    printf "\n| target | req/s | p50 ms | p99 ms |\n|---|---|---|---|\n"
    printf "| order service direct | %.0f | %.3f | %.3f |\n", dr / n, d5 / n, d9 / n
    printf "| through the gateway | %.0f | %.3f | %.3f |\n", gr / n, g5 / n, g9 / n
    printf "\nthroughput ratio gateway/direct: %.1f%% (target >= 70%%)\n", 100 * gr / dr
    printf "p50 added by the gateway: %+.3f ms (target <= 0.5 ms)\n", (g5 - d5) / n
}'
