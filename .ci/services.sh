#!/usr/bin/env bash
# Servers for the tests: PostgreSQL and MariaDB (SQL sinks) and Redis (shared state of
# abuse detection) from Debian 12's packages, listening on 127.0.0.1 only; the databases
# each with a user and a database named jwt_audit.  Run as root; idempotent (safe to run again on a machine that already
# has them).  Writes .ci/services.env and prints the same lines, so the caller can
#   eval "$(.ci/services.sh)"     or     .ci/services.sh >/dev/null && . .ci/services.env
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

log() { echo "services.sh: $*" >&2; }

PASSWORD="jwt_audit_ci"   # a throwaway credential for a loopback-only CI database

missing=()
# the server binary, not pg_ctlcluster: postgresql-common comes with the client too
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 \
    || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# -- PostgreSQL ---------------------------------------------------------------
pg_version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
if ! pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main"' | grep -q .; then
    log "creating PostgreSQL $pg_version cluster main"
    pg_createcluster "$pg_version" main >&2
fi
conf="/etc/postgresql/$pg_version/main/postgresql.conf"
if ! grep -q "^listen_addresses = '127.0.0.1'" "$conf"; then
    echo "listen_addresses = '127.0.0.1'" >> "$conf"
fi
if ! pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    log "starting PostgreSQL $pg_version main"
    pg_ctlcluster "$pg_version" main start >&2
fi
pg_port="$(pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $3}')"
for _ in $(seq 1 30); do
    su postgres -c "psql -p $pg_port -Atqc 'select 1'" >/dev/null 2>&1 && break
    sleep 1
done
su postgres -c "psql -p $pg_port -v ON_ERROR_STOP=1 -q" >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jwt_audit') THEN
    CREATE ROLE jwt_audit LOGIN PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE jwt_audit LOGIN PASSWORD '$PASSWORD';
  END IF;
END \$\$;
SQL
if ! su postgres -c "psql -p $pg_port -Atqc \"select 1 from pg_database where datname='jwt_audit'\"" | grep -q 1; then
    su postgres -c "createdb -p $pg_port -O jwt_audit jwt_audit" >&2
fi

# -- MariaDB ------------------------------------------------------------------
mkdir -p /etc/mysql/mariadb.conf.d
cat > /etc/mysql/mariadb.conf.d/99-jwt-audit.cnf <<'CNF'
[mysqld]
bind-address = 127.0.0.1
port = 3306
CNF
mysql_up() { mysqladmin --protocol=socket ping >/dev/null 2>&1; }
if ! mysql_up; then
    log "starting MariaDB"
    if command -v service >/dev/null 2>&1 && [ -x /etc/init.d/mariadb ]; then
        service mariadb start >&2 || true
    fi
    if ! mysql_up; then
        install -d -o mysql -g mysql /run/mysqld
        (mysqld_safe >/dev/null 2>&1 &)
    fi
    for _ in $(seq 1 60); do mysql_up && break; sleep 1; done
    mysql_up || { log "MariaDB did not start"; exit 1; }
fi
mysql --protocol=socket -u root >&2 <<SQL
CREATE DATABASE IF NOT EXISTS jwt_audit CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS 'jwt_audit'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
CREATE USER IF NOT EXISTS 'jwt_audit'@'localhost' IDENTIFIED BY '$PASSWORD';
ALTER USER 'jwt_audit'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
ALTER USER 'jwt_audit'@'localhost' IDENTIFIED BY '$PASSWORD';
GRANT ALL PRIVILEGES ON jwt_audit.* TO 'jwt_audit'@'127.0.0.1';
GRANT ALL PRIVILEGES ON jwt_audit.* TO 'jwt_audit'@'localhost';
FLUSH PRIVILEGES;
SQL

# -- Redis --------------------------------------------------------------------
# Our own instance, not the package's service (no systemd in CI containers): no
# persistence, loopback only.  The outage test starts private servers of its own.
REDIS_PORT=6379
redis_up() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    install -d -o redis -g redis /run/redis /var/lib/redis /var/log/redis
    runuser -u redis -- redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
        --protected-mode yes --save '' --appendonly no --dir /var/lib/redis \
        --daemonize yes --pidfile /run/redis/jwt-audit-ci.pid \
        --logfile /var/log/redis/jwt-audit-ci.log >&2
    for _ in $(seq 1 30); do redis_up && break; sleep 0.5; done
    redis_up || { log "Redis did not start"; exit 1; }
fi

# -- what the tests read ------------------------------------------------------
cat > services.env <<ENV
export JWTAUDIT_TEST_POSTGRES_URL='postgresql+psycopg://jwt_audit:$PASSWORD@127.0.0.1:$pg_port/jwt_audit'
export JWTAUDIT_TEST_POSTGRES_CTL='pg_ctlcluster $pg_version main'
export JWTAUDIT_TEST_MARIADB_URL='mysql+pymysql://jwt_audit:$PASSWORD@127.0.0.1:3306/jwt_audit'
export JWTAUDIT_TEST_REDIS_URL='redis://127.0.0.1:$REDIS_PORT/0'
export JWTAUDIT_TEST_REDIS_SERVER='$(command -v redis-server)'
ENV
cat services.env
