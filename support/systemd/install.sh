#!/bin/bash
# Install migratio's systemd units (and its logrotate policy) for this checkout.
#
#   support/systemd/install.sh [--user migratio] [--workers 2] [--dir DIR] [--config FILE]
#                              [--env-file FILE] [--stop-timeout SECONDS] [--unit-dir DIR]
#                              [--logrotate-dir DIR] [--no-systemctl]
#
# Every option also reads an environment variable (MIGRATIO_USER, MIGRATIO_WORKERS, MIGRATIO_DIR,
# MIGRATIO_CONFIG, MIGRATIO_ENV_FILE, MIGRATIO_STOP_TIMEOUT, MIGRATIO_UNIT_DIR,
# MIGRATIO_LOGROTATE_DIR), so `make install-systemd MIGRATIO_WORKERS=4` works.
#
# As root (the default): creates the system user if missing, the log/ and work dirs owned by
# it, an empty credentials file (mode 0600) if missing, writes the units and the logrotate file,
# runs `systemctl daemon-reload` and enables migratio.target with workers 1..N. It starts
# nothing: `systemctl start migratio.target` does. With --no-systemctl it only writes the files
# (no user, no chown, no systemctl): for tests and for packaging.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
user=${MIGRATIO_USER:-migratio}
workers=${MIGRATIO_WORKERS:-2}
dir=${MIGRATIO_DIR:-$(cd "$here/../.." && pwd)}
config=${MIGRATIO_CONFIG:-}
env_file=${MIGRATIO_ENV_FILE:-/etc/migratio/migratio.env}
stop_timeout=${MIGRATIO_STOP_TIMEOUT:-}
unit_dir=${MIGRATIO_UNIT_DIR:-/etc/systemd/system}
logrotate_dir=${MIGRATIO_LOGROTATE_DIR:-/etc/logrotate.d}
systemctl=yes
margin=300  # seconds of TimeoutStopSec beyond job_timeout

die() { echo "install.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --user) user=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --env-file) env_file=$2; shift 2 ;;
        --stop-timeout) stop_timeout=$2; shift 2 ;;
        --unit-dir) unit_dir=$2; shift 2 ;;
        --logrotate-dir) logrotate_dir=$2; shift 2 ;;
        --no-systemctl) systemctl=no; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

dir=$(cd "$dir" && pwd) || die "directory $dir not found"
config=${config:-$dir/config.yml}
case $config in /*) ;; *) config=$(pwd)/$config ;; esac
[[ $workers =~ ^[0-9]+$ ]] || die "--workers must be a number, got '$workers'"
[[ $user =~ ^[a-z_][a-z0-9_-]*$ ]] || die "--user '$user' is not a valid user name"
[ -x "$dir/.venv/bin/migratio" ] || die "$dir/.venv/bin/migratio not found: run 'make venv' first"

# log_dir, work_dir and job_timeout come from the config when it exists (the defaults otherwise).
read_config() {
    "$dir/.venv/bin/python" - "$1" <<'EOF'
import sys
from pathlib import Path
from migratio.conf.config import load_config
from migratio.errors import MigratioError
try:
    c = load_config(Path(sys.argv[1]))
except MigratioError as exc:
    sys.exit(f"install.sh: {exc}")
print(c.log_dir, c.work_dir, c.job_timeout, sep="\n")
EOF
}
if [ -f "$config" ]; then
    mapfile -t values < <(read_config "$config") && [ ${#values[@]} -eq 3 ] || die "cannot read $config"
    log_dir=${values[0]} work_dir=${values[1]} job_timeout=${values[2]}
else
    echo "install.sh: note: $config does not exist yet; using the default log_dir, work_dir and job_timeout" >&2
    log_dir=$(dirname "$config")/log work_dir=/var/tmp/migratio job_timeout=21600
fi
stop_timeout=${stop_timeout:-$((job_timeout + margin))}
[[ $stop_timeout =~ ^[0-9]+$ ]] || die "--stop-timeout must be seconds, got '$stop_timeout'"

if [ $systemctl = yes ]; then
    [ "$(id -u)" -eq 0 ] || die "run as root (or use --no-systemctl to only write the files)"
    if ! id -u "$user" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "/var/lib/$user" --create-home \
            --shell /usr/sbin/nologin --comment "migratio workers" "$user"
        echo "created system user $user (home /var/lib/$user: put its ~/.ssh/known_hosts and keys there)"
    fi
    runuser -u "$user" -- "$dir/.venv/bin/python" -c 'import migratio' 2>/dev/null \
        || die "$user cannot run $dir/.venv/bin/python (is the venv built from a Python under /root, e.g. pyenv?" \
               "rebuild it with the system one: rm -rf $dir/.venv && make venv PYTHON=/usr/bin/python3)"
fi
group=$(id -gn "$user" 2>/dev/null || echo "$user")

escape() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }
render() {  # render TEMPLATE OUTPUT
    local tmp
    tmp=$(mktemp "$2.XXXXXX")
    sed -e "s|@USER@|$(escape "$user")|g" -e "s|@GROUP@|$(escape "$group")|g" \
        -e "s|@DIR@|$(escape "$dir")|g" -e "s|@CONFIG@|$(escape "$config")|g" \
        -e "s|@ENV_FILE@|$(escape "$env_file")|g" -e "s|@STOP_TIMEOUT@|${stop_timeout}s|g" \
        -e "s|@LOG_DIR@|$(escape "$log_dir")|g" \
        -e "s|@READ_WRITE_PATHS@|$(escape "-$log_dir -$work_dir")|g" "$1" > "$tmp"
    if grep -q '@[A-Z_]*@' "$tmp"; then rm -f "$tmp"; die "$1: unknown placeholder left: $(grep -o '@[A-Z_]*@' "$1" | sort -u | tr '\n' ' ')"; fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$2"
}

mkdir -p "$unit_dir" "$logrotate_dir"
units=()
for template in "$here"/*.service "$here"/*.target; do
    [ -e "$template" ] || continue
    name=$(basename "$template")
    render "$template" "$unit_dir/$name"
    units+=("$name")
    echo "wrote $unit_dir/$name"
done
render "$here/../logrotate/migratio" "$logrotate_dir/migratio"
echo "wrote $logrotate_dir/migratio"

[ $systemctl = yes ] || exit 0

install -d -o "$user" -g "$group" -m 0750 "$log_dir" "$log_dir/jobs" "$work_dir"
if [ ! -e "$env_file" ]; then
    install -d -m 0755 "$(dirname "$env_file")"
    install -m 0600 /dev/null "$env_file"
    printf '%s\n' "# Credentials of the migratio workers (KEY=value lines; read by systemd as root)." \
        "# OS_AUTH_URL=... OS_USERNAME=... OS_PASSWORD=... (unless config.yml names a clouds.yaml cloud)" \
        "# AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... (AWS destinations)" > "$env_file"
    echo "created $env_file (mode 0600): put the credentials there"
fi
[ -r "$config" ] && ! runuser -u "$user" -- test -r "$config" \
    && echo "warning: $config is not readable by $user" >&2
systemctl daemon-reload
systemctl enable migratio.target
for name in "${units[@]}"; do  # other plain services (not templates) join the target too
    case $name in *@.service|*.target) ;; *) systemctl enable "$name" ;; esac
done
for n in $(seq 1 "$workers"); do
    systemctl enable "migratio-worker@$n.service"
done
echo "enabled migratio.target with $workers worker(s); start them with: systemctl start migratio.target"
