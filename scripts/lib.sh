# shellcheck shell=bash
# Shell functions shared by scripts/test and scripts/demo. Source it; it defines functions only.
#
# Everything here is idempotent: a prerequisite that is present is left alone, a service that
# already answers is used as it is, and only what this shell started is stopped again.

# --- output ---------------------------------------------------------------------------------

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# --- packages -------------------------------------------------------------------------------

# Debian packages to install, collected by the want_* functions and installed at once.
OMSGATE_MISSING_PACKAGES=()

# want_command COMMAND PACKAGE: remember PACKAGE when COMMAND is not on PATH.
want_command() {
    if ! command -v "$1" >/dev/null 2>&1; then
        want_package "$2"
    fi
}

# want_package PACKAGE: remember PACKAGE unless it is already listed.
want_package() {
    local p
    for p in "${OMSGATE_MISSING_PACKAGES[@]}"; do
        [[ $p == "$1" ]] && return 0
    done
    OMSGATE_MISSING_PACKAGES+=("$1")
}

# install_wanted_packages: apt-get install everything remembered, or explain and exit 1.
install_wanted_packages() {
    ((${#OMSGATE_MISSING_PACKAGES[@]} == 0)) && return 0
    local list="${OMSGATE_MISSING_PACKAGES[*]}"
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        printf 'error: missing prerequisites. Install them, then rerun:\n' >&2
        printf '    sudo apt-get update && sudo apt-get install -y %s\n' "$list" >&2
        exit 1
    fi
    say "Installing missing packages: $list"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${OMSGATE_MISSING_PACKAGES[@]}" >/dev/null
    OMSGATE_MISSING_PACKAGES=()
    hash -r
}

# want_build_prereqs: the C toolchain and tools the crate's native dependencies build with
# (pingora needs cmake; librdkafka needs a C/C++ compiler, make and OpenSSL's headers; zlib is
# found through pkg-config).
want_build_prereqs() {
    want_command cc build-essential
    want_command c++ build-essential
    want_command make build-essential
    want_command cmake cmake
    want_command pkg-config pkg-config
    # librdkafka's TLS and SASL (Kafka over TLS) link the system's OpenSSL.
    [[ -e /usr/include/openssl/ssl.h ]] || want_package libssl-dev
    if ! command -v cargo >/dev/null 2>&1 && [[ ! -x $HOME/.cargo/bin/cargo ]]; then
        want_command curl curl
        want_package ca-certificates
    fi
}

# ensure_rust: put cargo on PATH, installing the stable toolchain with rustup if there is none
# (Debian's own cargo is too old for pingora).
ensure_rust() {
    case ":$PATH:" in
        *":$HOME/.cargo/bin:"*) ;;
        *) export PATH="$HOME/.cargo/bin:$PATH" ;;
    esac
    command -v cargo >/dev/null 2>&1 && return 0
    say "Installing the Rust toolchain with rustup (into $HOME/.cargo)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --default-toolchain stable
    command -v cargo >/dev/null 2>&1 || die "rustup finished but cargo is not on PATH"
}

# ensure_build_prereqs: install whatever is missing to build omsgate.
ensure_build_prereqs() {
    want_build_prereqs
    install_wanted_packages
    ensure_rust
}

# --- small helpers --------------------------------------------------------------------------

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# free_port PREFERRED: print PREFERRED if nothing listens on it, else some free port.
free_port() {
    local p
    for p in "$1" $(shuf -i 20000-60000 -n 100); do
        if ! port_open 127.0.0.1 "$p"; then
            echo "$p"
            return 0
        fi
    done
    die "no free TCP port found on 127.0.0.1"
}

# wait_until SECONDS WHAT COMMAND...: rerun COMMAND every 0.2 s until it succeeds; die after
# SECONDS.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    say "$what is up"
}

# --- Redis ----------------------------------------------------------------------------------

OMSGATE_STARTED_REDIS=""

want_redis() {
    want_command redis-server redis-server
    want_command redis-cli redis-tools
}

# ensure_redis: a Redis on 127.0.0.1:6379, started (and later stopped) by us if none answers.
ensure_redis() {
    if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        say "Using the Redis already running on 127.0.0.1:6379"
        return 0
    fi
    say "Starting Redis on 127.0.0.1:6379 (log /tmp/omsgate-redis.log)"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/omsgate-redis.log >/dev/null
    OMSGATE_STARTED_REDIS=1
    wait_until 10 "Redis" redis-cli -h 127.0.0.1 -p 6379 ping ||
        die "Redis did not start; see /tmp/omsgate-redis.log"
}

stop_redis() {
    [[ -n $OMSGATE_STARTED_REDIS ]] || return 0
    say "Stopping the Redis we started"
    redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true
    OMSGATE_STARTED_REDIS=""
}

# --- Redis Cluster and Sentinel (tests/redis_cluster.rs starts its own from Rust; these are
# for trying omsgate against a cluster by hand) ----------------------------------------------

OMSGATE_CLUSTER_DIR=""
OMSGATE_CLUSTER_NODES=""

# start_redis_cluster: three primaries and three replicas (`redis-server --cluster-enabled yes`
# x6 on free ports under a temporary directory, joined by `redis-cli --cluster create
# --cluster-replicas 1`), node timeout 1000 ms. Sets OMSGATE_CLUSTER_NODES to the seed URLs as
# a TOML array (for `redis = { mode = "cluster", nodes = ... }`) and OMSGATE_CLUSTER_DIR; run it
# in the current shell (not in `$(...)`), and stop_redis_cluster kills them.
start_redis_cluster() {
    local dir port bus ports=() addrs=() urls=()
    dir=$(mktemp -d /tmp/omsgate-redis-cluster.XXXXXX)
    OMSGATE_CLUSTER_DIR=$dir
    local try started
    for _ in 1 2 3 4 5 6; do
        started=""
        # Below the kernel's ephemeral range (32768-60999), where an outgoing connection's
        # port looks free to free_port but cannot be bound; a clash is retried on new ports.
        for try in 1 2 3; do
            port=$(free_port "$(shuf -i 20000-32000 -n 1)")
            bus=$(free_port "$(shuf -i 20000-32000 -n 1)")
            mkdir -p "$dir/$port"
            redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --daemonize yes \
                --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
                --cluster-node-timeout 1000 --cluster-replica-validity-factor 0 \
                --cluster-require-full-coverage no --save "" --appendonly no \
                --dir "$dir/$port" --logfile "$dir/$port/redis.log" \
                --pidfile "$dir/$port/redis.pid" >/dev/null
            if wait_until 10 "Redis Cluster node $port" redis-cli -p "$port" ping; then
                started=1
                break
            fi
            say "node $port (bus $bus) did not start (try $try); see $dir/$port/redis.log"
        done
        if [[ -z $started ]]; then
            stop_redis_cluster
            die "a Redis Cluster node did not start three times"
        fi
        ports+=("$port")
        addrs+=("127.0.0.1:$port")
        urls+=("\"redis://127.0.0.1:$port\"")
    done
    if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$dir/create.log" 2>&1; then
        cat "$dir/create.log" >&2
        stop_redis_cluster
        die "redis-cli --cluster create failed"
    fi
    for port in "${ports[@]}"; do
        if ! wait_until 30 "cluster state on $port" \
            bash -c "redis-cli -p $port cluster info | grep -q cluster_state:ok"; then
            stop_redis_cluster
            die "the cluster did not become ok"
        fi
    done
    local IFS=,
    OMSGATE_CLUSTER_NODES="[${urls[*]}]"
    say "Redis Cluster up: nodes = $OMSGATE_CLUSTER_NODES (files in $dir)"
}

# stop_redis_cluster: kills the nodes start_redis_cluster started and removes their directory.
stop_redis_cluster() {
    [[ -n $OMSGATE_CLUSTER_DIR ]] || return 0
    local pidfile
    for pidfile in "$OMSGATE_CLUSTER_DIR"/*/redis.pid; do
        [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null
    done
    rm -rf "$OMSGATE_CLUSTER_DIR"
    OMSGATE_CLUSTER_DIR=""
}

# --- PostgreSQL -----------------------------------------------------------------------------

OMSGATE_STARTED_PG=""  # "VERSION CLUSTER" of the cluster we started

want_postgres() {
    if ! command -v pg_ctlcluster >/dev/null 2>&1 ||
        ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        want_package postgresql
    fi
    want_command psql postgresql-client
    want_command pg_isready postgresql-client
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432; }
pg_psql() { psql -w -X -q -h 127.0.0.1 -p 5432 -U postgres -v ON_ERROR_STOP=1 "$@"; }

# pg_cluster_on_5432: print "VERSION CLUSTER" of the local cluster configured for port 5432.
pg_cluster_on_5432() {
    pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }'
}

# pg_allow_trust VERSION CLUSTER: put trust rules for loopback TCP first in pg_hba.conf.
pg_allow_trust() {
    local hba="/etc/postgresql/$1/$2/pg_hba.conf"
    [[ -f $hba ]] || return 0
    # Already trusted when the first rule for 127.0.0.1 says so.
    [[ $(awk '$1 == "host" && $4 == "127.0.0.1/32" { print $5; exit }' "$hba") == trust ]] &&
        return 0
    if ! grep -q '^# omsgate tests: trust loopback' "$hba"; then
        say "Allowing trust auth for 127.0.0.1 in $hba (tests connect as postgres without password)"
        local tmp
        tmp=$(mktemp)
        {
            echo '# omsgate tests: trust loopback'
            echo 'host all all 127.0.0.1/32 trust'
            echo 'host all all ::1/128 trust'
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba"
        rm -f "$tmp"
    fi
}

# pg_preload_stat_statements VERSION CLUSTER: preload pg_stat_statements, unless the cluster
# already sets shared_preload_libraries itself (we never override an operator's choice).
pg_preload_stat_statements() {
    local dir="/etc/postgresql/$1/$2"
    [[ -f /usr/lib/postgresql/$1/lib/pg_stat_statements.so && -d $dir/conf.d ]] || return 0
    local f
    for f in "$dir/postgresql.conf" "$dir"/conf.d/*.conf; do
        [[ $f == */omsgate-test.conf ]] && continue
        grep -Eqs '^[[:space:]]*shared_preload_libraries' "$f" && return 0
    done
    echo "shared_preload_libraries = 'pg_stat_statements'  # omsgate scripts/test" \
        >"$dir/conf.d/omsgate-test.conf"
}

# ensure_postgres: PostgreSQL on 127.0.0.1:5432 with trust auth and a database `test`.
ensure_postgres() {
    if pg_ready; then
        say "Using the PostgreSQL already running on 127.0.0.1:5432"
    else
        [[ $(id -u) -eq 0 ]] ||
            die "PostgreSQL is not running on 127.0.0.1:5432; start it (or set OMSGATE_TEST_DATABASE_URL)"
        local cluster
        cluster=$(pg_cluster_on_5432)
        if [[ -z $cluster ]]; then
            local version name=main
            # shellcheck disable=SC2012 # version directories: plain names
            version=$(ls /usr/lib/postgresql | sort -V | tail -1)
            [[ -d /etc/postgresql/$version/main ]] && name=omsgate
            say "Creating PostgreSQL cluster $version/$name on port 5432"
            # Options after `--` go to initdb.
            pg_createcluster -p 5432 "$version" "$name" -- --auth-local=trust --auth-host=trust \
                >/dev/null
            cluster="$version $name"
        fi
        # shellcheck disable=SC2086 # "VERSION CLUSTER" splits into two arguments on purpose
        pg_allow_trust $cluster
        # shellcheck disable=SC2086
        pg_preload_stat_statements $cluster
        say "Starting PostgreSQL cluster $cluster"
        # shellcheck disable=SC2086
        pg_ctlcluster --skip-systemctl-redirect $cluster start
        OMSGATE_STARTED_PG=$cluster
        wait_until 30 "PostgreSQL" pg_ready || die "PostgreSQL did not start; see /var/log/postgresql/"
    fi

    if ! pg_psql -d postgres -c 'select 1' >/dev/null 2>&1; then
        local running
        running=$(pg_cluster_on_5432)
        [[ $(id -u) -eq 0 && -n $running ]] ||
            die "cannot connect to PostgreSQL as postgres without a password; allow trust auth for 127.0.0.1 in pg_hba.conf"
        # shellcheck disable=SC2086
        pg_allow_trust $running
        # shellcheck disable=SC2086
        pg_ctlcluster --skip-systemctl-redirect $running reload
        sleep 0.5
        pg_psql -d postgres -c 'select 1' >/dev/null || die "PostgreSQL still refuses trust login"
    fi

    if [[ -z $(pg_psql -d postgres -Atc "select 1 from pg_database where datname = 'test'") ]]; then
        say "Creating database test"
        createdb -w -h 127.0.0.1 -p 5432 -U postgres test 2>/dev/null ||
            pg_psql -d postgres -Atc "select 1 from pg_database where datname = 'test'" | grep -q 1 ||
            die "cannot create database test"
    fi
    # pg_stat_statements only works when preloaded; tests must not depend on it.
    if pg_psql -d test -Atc 'show shared_preload_libraries' | grep -q pg_stat_statements; then
        pg_psql -d test -c 'create extension if not exists pg_stat_statements' >/dev/null 2>&1 || true
    fi
}

stop_postgres() {
    [[ -n $OMSGATE_STARTED_PG ]] || return 0
    say "Stopping the PostgreSQL cluster we started ($OMSGATE_STARTED_PG)"
    # shellcheck disable=SC2086
    pg_ctlcluster --skip-systemctl-redirect $OMSGATE_STARTED_PG stop -m fast >/dev/null 2>&1 || true
    OMSGATE_STARTED_PG=""
}

# --- tansu (Kafka-compatible broker) --------------------------------------------------------

OMSGATE_TANSU_VERSION=0.6.0
OMSGATE_TANSU_PID=""

# ensure_tansu_installed: export OMSGATE_TANSU_BIN, installing tansu with cargo if needed.
ensure_tansu_installed() {
    if [[ -n ${OMSGATE_TANSU_BIN:-} && -x $OMSGATE_TANSU_BIN ]]; then
        return 0
    fi
    local bin
    bin=$(command -v tansu 2>/dev/null || true)
    [[ -z $bin && -x $HOME/.cargo/bin/tansu ]] && bin=$HOME/.cargo/bin/tansu
    if [[ -z $bin ]]; then
        if pgrep -f "cargo install tansu" >/dev/null 2>&1; then
            say "Another 'cargo install tansu' is running; waiting for it to finish"
            while pgrep -f "cargo install tansu" >/dev/null 2>&1; do sleep 10; done
        fi
        if [[ -x $HOME/.cargo/bin/tansu ]]; then
            bin=$HOME/.cargo/bin/tansu
        else
            say "Installing the tansu broker $OMSGATE_TANSU_VERSION with cargo (one time, about 25 minutes)"
            cargo install tansu --version "$OMSGATE_TANSU_VERSION" --locked --features dynostore
            bin=$HOME/.cargo/bin/tansu
        fi
    fi
    [[ -x $bin ]] || die "tansu is not installed ($bin)"
    export OMSGATE_TANSU_BIN=$bin
}

# start_tansu: an in-memory tansu broker on 127.0.0.1 (port 9092 if free); exports
# OMSGATE_TEST_KAFKA_BROKERS. Remember its quirks: create topics before producing, count
# records by consuming (its high watermark is wrong), and a restart forgets producer ids.
start_tansu() {
    local port log
    port=$(free_port 9092)
    log=/tmp/omsgate-tansu-$port.log
    say "Starting tansu on 127.0.0.1:$port (log $log)"
    # From /tmp: tansu reads a `.env` file in its working directory.
    (cd /tmp && exec "$OMSGATE_TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/) >"$log" 2>&1 &
    OMSGATE_TANSU_PID=$!
    if ! wait_until 30 "tansu" port_open 127.0.0.1 "$port"; then
        tail -n 20 "$log" >&2 || true
        die "tansu did not open port $port within 30 s"
    fi
    kill -0 "$OMSGATE_TANSU_PID" 2>/dev/null || die "tansu exited; see $log"
    export OMSGATE_TEST_KAFKA_BROKERS=127.0.0.1:$port
}

stop_tansu() {
    [[ -n $OMSGATE_TANSU_PID ]] || return 0
    say "Stopping the tansu broker we started"
    kill "$OMSGATE_TANSU_PID" 2>/dev/null || true
    wait "$OMSGATE_TANSU_PID" 2>/dev/null || true
    OMSGATE_TANSU_PID=""
}

# --- the reference legacy OMS (examples/legacy-oms) -----------------------------------------

OMSGATE_LEGACY_OMS_VENV=.venv-legacy-oms
OMSGATE_LEGACY_OMS_REQUIREMENTS=examples/legacy-oms/requirements.txt

# want_python_venv: python3 with a working venv module (Debian splits it into python3-venv).
want_python_venv() {
    want_command python3 python3
    if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        want_package python3-venv
    fi
}

# ensure_legacy_oms: a virtualenv in $OMSGATE_LEGACY_OMS_VENV with the pinned requirements of
# the reference OMS; exports OMSGATE_TEST_LEGACY_PYTHON (its python) for the tests and benches.
# Installs only when the venv is missing or the requirements file changed since the last install
# (a copy of it is kept inside the venv), so a rerun costs a file comparison.
ensure_legacy_oms() {
    local venv=$OMSGATE_LEGACY_OMS_VENV req=$OMSGATE_LEGACY_OMS_REQUIREMENTS
    if [[ ! -x $venv/bin/python ]]; then
        say "Creating the reference OMS's virtualenv in $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" || die "python3 -m venv failed (install python3-venv)"
    fi
    if ! cmp -s "$req" "$venv/installed-requirements.txt"; then
        say "Installing the reference OMS's requirements ($req) into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" ||
            die "pip install -r $req failed"
        cp "$req" "$venv/installed-requirements.txt"
    fi
    OMSGATE_TEST_LEGACY_PYTHON=$(cd "$venv/bin" && pwd)/python
    export OMSGATE_TEST_LEGACY_PYTHON
}
