#!/usr/bin/env bash
# Cost per request in CPU instructions, under valgrind's callgrind: a figure that does not depend
# on what else the machine is doing, so a regression shows whatever the noise (issue 9).
#
#   benches/instructions.sh            # all scenarios, 1000 measured requests each
#   N=3000 benches/instructions.sh passthrough
#   KEEP=1 benches/instructions.sh all_features   # keep the callgrind files for callgrind_annotate
#   OMSGATE_BIN=/tmp/omsgate-before benches/instructions.sh passthrough  # that binary, no build
#   READ_BUFFER=0 benches/instructions.sh passthrough  # the gateway's server.read_buffer
#   WHOLE_BODY_MAX=0 benches/instructions.sh passthrough_gzip  # compression.whole_body_max (0: stream)
#
# For each scenario the gateway (release build, one worker thread) runs twice under callgrind in
# front of `omsgate sim` (latency 0): once serving a warm-up of W requests, once W + N. The
# difference of the two instruction totals divided by N is the gateway's cost per request, with
# start-up, warm-up and shutdown cancelled out. The client is a keepalive Python loop on one
# connection; its cost is not counted. Prints a table and writes target/bench-instructions.json.
#
# Scenarios: passthrough (20 KB JSON, no features: no compression, no audit), passthrough_gzip
# (the same with live gzip at level 1 for a client that accepts it: minus passthrough, the cost of
# compressing a response through the gateway), passthrough_gzip_json (the same on the simulator's
# invoice JSON, /__invoices/: /__blob's random letters compress like nothing real), passthrough_tls (pass-through over TLS 1.3 with
# a self-signed ECDSA certificate; one handshake per run, so it cancels out), l1_hit (the same response served from the
# in-memory cache, by the fresh-hit fast path), l1_hit_pingora (the same with OMSGATE_CACHE_FAST_PATH=off: through
# Pingora's cache state machine), l1_hit_gzip_entry (compression on, so the entry is stored gzipped, and a
# client without Accept-Encoding: the L1's decoded copy), redis_hit (the same from Redis, the in-memory tier off; needs Redis at
# OMSGATE_TEST_REDIS_URL), all_features (JWT identity, a local rate limit, a cache miss every time,
# gzip, metrics, file audit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${N:-1000}
W=${W:-200}
BODY=${BODY:-20000}
SCENARIOS=("$@")
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(passthrough passthrough_tls passthrough_gzip passthrough_gzip_json l1_hit l1_hit_pingora l1_hit_gzip_entry redis_hit all_features)
REDIS=${OMSGATE_TEST_REDIS_URL:-redis://127.0.0.1:6379}

command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
if [[ -n ${OMSGATE_BIN:-} ]]; then
    BIN=$OMSGATE_BIN
else
    cargo build --release --bin omsgate >&2
    BIN=$PWD/target/release/omsgate
fi
WORK=$(mktemp -d /tmp/omsgate-instructions.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n ${KEEP:-} ]]; then
        echo "callgrind files kept in $WORK (callgrind_annotate $WORK/callgrind.SCENARIO.COUNT)" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    return 1
}

SIM=$(free_port)
"$BIN" sim --listen "127.0.0.1:$SIM" --latency-ms 0 --workers 100000 >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$SIM"

# A self-signed certificate for the TLS scenarios (TLS 1.3, ECDSA P-256, as most deployments).
if [[ " ${SCENARIOS[*]} " == *_tls* ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
        -keyout "$WORK/tls-key.pem" -out "$WORK/tls-cert.pem" 2>/dev/null
    chmod 600 "$WORK/tls-key.pem"
fi

SECRET=$(sed -n 's/^pub const DEMO_JWT_SECRET: &str = "\(.*\)";$/\1/p' src/sim/mod.rs)

config() { # scenario listen admin
    local routes='[[route]]
name = "invoices"
path = "/__invoices/{size}"
[[route]]
name = "blob"
path = "/__blob/{size}"'
    local extra=""
    local wbm=""
    [[ -z ${WHOLE_BODY_MAX:-} ]] || wbm="whole_body_max = \"$WHOLE_BODY_MAX\""
    case $1 in
    passthrough) extra='[compression]
enabled = false
[audit]
enabled = false' ;;
    passthrough_tls) extra="[compression]
enabled = false
[audit]
enabled = false
[server.tls]
cert = \"$WORK/tls-cert.pem\"
key = \"$WORK/tls-key.pem\"" ;;
    passthrough_gzip | passthrough_gzip_json) extra="[compression]
level = 1
$wbm
[audit]
enabled = false" ;;
    l1_hit | l1_hit_pingora) extra='[compression]
enabled = false
[audit]
enabled = false'
        routes="$routes
cache = { ttl = \"1h\", scope = \"public\" }" ;;
    l1_hit_gzip_entry) extra="[compression]
$wbm
[audit]
enabled = false"
        routes="$routes
cache = { ttl = \"1h\", scope = \"public\" }" ;;
    redis_hit) extra="[compression]
enabled = false
[audit]
enabled = false
[cache]
redis_url = \"$REDIS\"
key_prefix = \"omsgate-instr-$$-$2:\"
memory = { max_bytes = 0 }"
        routes="$routes
cache = { ttl = \"1h\", scope = \"public\" }" ;;
    all_features) extra="[identity]
mode = \"jwt\"
jwt_secret = \"$SECRET\"
[rate_limit.policies.per_tenant]
key = \"tenant\"
quota = \"1000000/second\"
[compression]
$wbm
[audit]
spool_dir = \"$WORK/spool-$2\""
        routes="$routes
rate_limit = [\"per_tenant\"]
cache = { ttl = \"1h\", scope = \"tenant\" }" ;;
    esac
    local read_buffer=""
    [[ -z ${READ_BUFFER:-} ]] || read_buffer="read_buffer = \"$READ_BUFFER\""
    cat <<EOF
[server]
listen = "127.0.0.1:$2"
threads = 1
shutdown_grace = "1s"
$read_buffer
[admin]
listen = "127.0.0.1:$3"
[upstream]
servers = ["127.0.0.1:$SIM"]
[log]
level = "warn"
$extra
$routes
EOF
}

# requests(port, count, scenario): count keepalive GETs on one connection.
requests() {
    python3 - "$1" "$2" "$3" "$BODY" "$SECRET" <<'EOF'
import base64, hashlib, hmac, http.client, json, sys, time
port, count, scenario, body, secret = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
headers = {}
if scenario == "all_features":
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"tenant_id": "acme", "sub": "bench", "exp": int(time.time()) + 3600}).encode())
    sig = b64(hmac.new(secret.encode(), head + b"." + claims, hashlib.sha256).digest())
    headers["authorization"] = "Bearer " + (head + b"." + claims + b"." + sig).decode()
    headers["accept-encoding"] = "gzip"
if scenario.startswith("passthrough_gzip"):
    headers["accept-encoding"] = "gzip"
if scenario.endswith("_tls"):
    import ssl
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=ssl._create_unverified_context())
else:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for i in range(count):
    # all_features: a distinct query string every time, so every request is a cache miss.
    # passthrough_gzip_json: the simulator's invoices (compresses like the real API's JSON).
    kind = "__invoices" if scenario.endswith("_json") else "__blob"
    path = f"/{kind}/{body}" + (f"?n={i}" if scenario == "all_features" else "")
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"status {r.status} for {path}")
EOF
}

# instructions(scenario, count): total instructions of one gateway run serving `count` requests.
instructions() {
    local listen admin out
    listen=$(free_port)
    admin=$(free_port)
    out="$WORK/callgrind.$1.$2"
    config "$1" "$listen" "$admin" >"$WORK/$1-$2.toml"
    local fast=on
    [[ $1 == l1_hit_pingora ]] && fast=off
    (cd "$WORK" && OMSGATE_CACHE_FAST_PATH=$fast exec valgrind --tool=callgrind \
        --callgrind-out-file="$out" "$BIN" run --config "$WORK/$1-$2.toml" >"$WORK/$1-$2.log" 2>&1) &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$listen"
    requests "$listen" "$2" "$1"
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '\n%-18s %14s %10s\n' scenario instr/request requests
ROWS=()
for s in "${SCENARIOS[@]}"; do
    base=$(instructions "$s" "$W")
    total=$(instructions "$s" $((W + N)))
    per=$(((total - base) / N))
    printf '%-18s %14d %10d\n' "$s" "$per" "$N"
    ROWS+=("{\"scenario\":\"$s\",\"instructions_per_request\":$per,\"requests\":$N,\"body_bytes\":$BODY}")
done
mkdir -p target
(IFS=,; echo "[${ROWS[*]}]") >target/bench-instructions.json
echo "wrote target/bench-instructions.json"
