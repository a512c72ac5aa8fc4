#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis that the tests use answer; start them if not.
# RINDLE_TEST_DATABASE_URL / RINDLE_TEST_REDIS_URL point the tests elsewhere, and
# then this script only checks that they answer.
set -euo pipefail
PY=${PY:-.venv/bin/python}

answers() {  # answers postgres|redis URL
    "$PY" - "$1" "$2" <<'PYEOF'
import asyncio, sys
kind, url = sys.argv[1], sys.argv[2]
async def main():
    if kind == "postgres":
        import asyncpg
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()
    else:
        import redis.asyncio as redis
        client = redis.from_url(url, socket_connect_timeout=3)
        await client.ping()
        await client.aclose()
try:
    asyncio.run(main())
except Exception as exc:
    print(f"{kind} at {url} does not answer: {exc}", file=sys.stderr)
    sys.exit(1)
PYEOF
}

wait_for() {  # wait_for postgres|redis URL
    for _ in $(seq 1 30); do
        answers "$1" "$2" 2>/dev/null && return 0
        sleep 0.5
    done
    answers "$1" "$2"
}

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "services.sh: $1 is not running and starting it needs root; start it yourself or set $2" >&2
        exit 1
    fi
}

DB_URL=${RINDLE_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
REDIS_URL=${RINDLE_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}

if ! answers postgres "$DB_URL" 2>/dev/null; then
    if [ -n "${RINDLE_TEST_DATABASE_URL:-}" ]; then answers postgres "$DB_URL"; exit 1; fi
    need_root PostgreSQL RINDLE_TEST_DATABASE_URL
    if [ ! -d /etc/postgresql ] || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        echo "services.sh: installing PostgreSQL from Debian's packages"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    version=$(ls /etc/postgresql | sort -n | tail -n 1)
    echo "services.sh: starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    # the tests connect as postgres over TCP without a password
    hba=/etc/postgresql/$version/main/pg_hba.conf
    if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
    wait_for postgres "$DB_URL"
fi

if ! answers redis "$REDIS_URL" 2>/dev/null; then
    if [ -n "${RINDLE_TEST_REDIS_URL:-}" ]; then answers redis "$REDIS_URL"; exit 1; fi
    need_root Redis RINDLE_TEST_REDIS_URL
    if ! command -v redis-server >/dev/null; then
        echo "services.sh: installing Redis from Debian's packages"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
    echo "services.sh: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for redis "$REDIS_URL"
fi
echo "services.sh: PostgreSQL and Redis answer"
