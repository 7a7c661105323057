#!/usr/bin/env bash
# Start the capwatch agent on this node as a transient systemd unit (systemd-run), for nodes
# where installing deploy/capwatch-agent.service is not wanted (ad-hoc nodes, trials,
# nodes you do not administer: see --user). Run with --help for the options.
set -euo pipefail

prog=${0##*/}

usage() {
    cat <<EOF
Usage: $prog --host BROKER [options] [-- extra 'agent run' arguments]

Start 'agent run' as the transient systemd unit capwatch-agent, restarted on failure and
bounded in memory and CPU. Settings go to the agent as CAPWATCH_* environment variables:
every exported CAPWATCH_* variable of the caller is passed on (except passwords), and the
options below override them.

Broker and identity:
  --host HOST           broker host name or address (CAPWATCH_MQTT__HOST); required
  --port PORT           broker port (CAPWATCH_MQTT__PORT; agent default 1883)
  --tls-ca-file FILE    CA bundle that verifies the broker; turns TLS on
                        (CAPWATCH_MQTT__TLS_CA_FILE)
  --tls                 TLS, the broker verified by the system's CA store (for a broker
                        certificate from a public or site CA; CAPWATCH_MQTT__TLS=true)
  --node-id ID          node id (CAPWATCH_NODE_ID; default: the short host name)
  --username NAME       MQTT user (CAPWATCH_MQTT__USERNAME; default: the node id, which is
                        what deploy/mosquitto.acl expects)
  --anonymous           send no MQTT user name (brokers with allow_anonymous true)
  --env-file FILE       systemd EnvironmentFile= for secrets, e.g. /etc/capwatch/agent.env
                        holding CAPWATCH_MQTT__PASSWORD=...; read by systemd at start. Its
                        values override the variables set here (systemd's rule)
  --interval S          sampling interval in seconds (CAPWATCH_INTERVAL_S)

Unit:
  --unit NAME           unit name (default: capwatch-agent)
  --agent PATH          agent executable (default: 'agent' on PATH, else
                        /opt/capwatch/venv/bin/agent)
  --memory-max SIZE     MemoryMax= (default: 256M)
  --cpu-quota PCT       CPUQuota= (default: 20%)
  --user                run under your per-user systemd (systemd-run --user): no root
                        needed, but the agent runs as you, RAPL stays unreadable, and
                        MemoryMax/CPUQuota only apply if your systemd delegates those cgroup
                        controllers to user managers
  --dry-run             print the systemd-run command instead of running it
  -h, --help            this help

Passwords are never passed with --setenv: transient unit environments are readable by any
local user through 'systemctl show'. Use --env-file (root-only, mode 0600).

Afterwards:
  systemctl status capwatch-agent          journalctl -u capwatch-agent -f
  systemctl stop capwatch-agent            (add --user for a --user unit)
EOF
}

die() {
    printf '%s: error: %s\n' "$prog" "$1" >&2
    exit 2
}

need_value() {
    # $1 = option, $2 = number of remaining arguments including the option
    [[ $2 -ge 2 ]] || die "$1 needs a value (see --help)"
}

# Same rule as shared/topics.py: one MQTT topic level, no wildcards, no '/'.
node_id_re='^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'

# --- Defaults, then the caller's CAPWATCH_* environment --------------------------------
unit=capwatch-agent
agent_bin=
memory_max=256M
cpu_quota=20%
user_mode=0
dry_run=0
anonymous=0
env_file=
declare -A env=()
for name in $(compgen -e); do
    if [[ $name == CAPWATCH_* ]]; then
        if [[ $name == *PASSWORD* ]]; then
            printf '%s: warning: not passing %s on (use --env-file for secrets)\n' \
                "$prog" "$name" >&2
            continue
        fi
        env[$name]=${!name}
    fi
done

# --- Options ---------------------------------------------------------------------------
while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        --host) need_value "$1" $#; env[CAPWATCH_MQTT__HOST]=$2; shift 2 ;;
        --port) need_value "$1" $#; env[CAPWATCH_MQTT__PORT]=$2; shift 2 ;;
        --tls-ca-file) need_value "$1" $#; env[CAPWATCH_MQTT__TLS_CA_FILE]=$2; shift 2 ;;
        --tls) env[CAPWATCH_MQTT__TLS]=true; shift ;;
        --node-id) need_value "$1" $#; env[CAPWATCH_NODE_ID]=$2; shift 2 ;;
        --username) need_value "$1" $#; env[CAPWATCH_MQTT__USERNAME]=$2; shift 2 ;;
        --anonymous) anonymous=1; shift ;;
        --env-file) need_value "$1" $#; env_file=$2; shift 2 ;;
        --interval) need_value "$1" $#; env[CAPWATCH_INTERVAL_S]=$2; shift 2 ;;
        --unit) need_value "$1" $#; unit=$2; shift 2 ;;
        --agent) need_value "$1" $#; agent_bin=$2; shift 2 ;;
        --memory-max) need_value "$1" $#; memory_max=$2; shift 2 ;;
        --cpu-quota) need_value "$1" $#; cpu_quota=$2; shift 2 ;;
        --user) user_mode=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --)
            shift
            break
            ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
agent_args=("$@")

# --- Checks: one clear line each -------------------------------------------------------
[[ -n ${env[CAPWATCH_MQTT__HOST]:-} ]] ||
    die "no broker host: pass --host BROKER or export CAPWATCH_MQTT__HOST"
if [[ -n ${env[CAPWATCH_MQTT__PORT]:-} && ! ${env[CAPWATCH_MQTT__PORT]} =~ ^[0-9]+$ ]]; then
    die "--port '${env[CAPWATCH_MQTT__PORT]}' is not a number"
fi

if [[ -z ${env[CAPWATCH_NODE_ID]:-} ]]; then
    short_host=$(hostname -s 2>/dev/null || hostname)
    env[CAPWATCH_NODE_ID]=${short_host%%.*}
fi
[[ ${env[CAPWATCH_NODE_ID]} =~ $node_id_re ]] ||
    die "node id '${env[CAPWATCH_NODE_ID]}' is not usable in a topic: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (--node-id)"

if [[ $anonymous == 1 ]]; then
    unset 'env[CAPWATCH_MQTT__USERNAME]'
elif [[ -z ${env[CAPWATCH_MQTT__USERNAME]:-} ]]; then
    env[CAPWATCH_MQTT__USERNAME]=${env[CAPWATCH_NODE_ID]}
fi

if [[ -n $env_file && $env_file != /* ]]; then
    die "--env-file '$env_file' must be an absolute path (systemd reads it, not this shell)"
fi

if [[ -z $agent_bin ]]; then
    agent_bin=$(command -v agent || true)
    agent_bin=${agent_bin:-/opt/capwatch/venv/bin/agent}
fi
if [[ $agent_bin != /* ]]; then
    agent_dir=$(dirname "$agent_bin")
    [[ -d $agent_dir ]] ||
        die "--agent '$agent_bin': no directory '$agent_dir' (pass the agent executable's path)"
    agent_bin=$(cd "$agent_dir" && pwd)/$(basename "$agent_bin")
fi

# --- The command -----------------------------------------------------------------------
cmd=(systemd-run)
systemctl_mode=()
if [[ $user_mode == 1 ]]; then
    cmd+=(--user)
    systemctl_mode=(--user)
fi
cmd+=(
    --unit "$unit"
    --description "capwatch node agent (transient, $prog)"
    # notify, as the installed unit: the agent sends READY=1 once the node is described,
    # then WATCHDOG=1 while it keeps sampling (a sampler hung in NVML gets it restarted).
    -p Type=notify
    -p NotifyAccess=main
    -p WatchdogSec=120
    -p Restart=on-failure
    -p RestartSec=5
    # Exit status 2 is a configuration error: restarting cannot fix it.
    -p RestartPreventExitStatus=2
    -p "MemoryMax=$memory_max"
    -p "CPUQuota=$cpu_quota"
    -p NoNewPrivileges=yes
)
if [[ $user_mode == 0 ]]; then
    # The same sandbox as deploy/capwatch-agent.service (see its comments; keep the two in
    # step): a throw-away uid with no capabilities, a read-only system, of all devices only
    # the standard ones and /dev/nvidia*, IP/unix/netlink sockets only, a system-call filter.
    cmd+=(
        -p DynamicUser=yes
        -p CapabilityBoundingSet=
        -p AmbientCapabilities=
        -p DevicePolicy=closed
        -p "DeviceAllow=char-nvidia* rw"
        -p ProtectSystem=strict
        -p StateDirectory=capwatch-agent
        -p StateDirectoryMode=0700
        -p ProtectHome=yes
        -p PrivateTmp=yes
        -p PrivateMounts=yes
        -p ProtectKernelTunables=yes
        -p ProtectControlGroups=yes
        -p ProtectKernelModules=yes
        -p ProtectKernelLogs=yes
        -p ProtectClock=yes
        -p ProtectHostname=yes
        -p "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK"
        -p RestrictNamespaces=yes
        -p RestrictRealtime=yes
        -p RestrictSUIDSGID=yes
        -p LockPersonality=yes
        -p RemoveIPC=yes
        -p SystemCallArchitectures=native
        -p SystemCallFilter=@system-service
        -p "SystemCallFilter=~@privileged @resources"
        -p SystemCallErrorNumber=EPERM
        -p UMask=0077
        -p TasksMax=64
    )
fi
if [[ -n $env_file ]]; then
    cmd+=(-p "EnvironmentFile=$env_file")
fi
while IFS= read -r name; do
    cmd+=("--setenv=$name=${env[$name]}")
done < <(printf '%s\n' "${!env[@]}" | sort)
cmd+=(-- "$agent_bin" run "${agent_args[@]}")

if [[ $dry_run == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi

# --- Preconditions of a real run -------------------------------------------------------
command -v systemd-run >/dev/null 2>&1 ||
    die "systemd-run not found: this script needs systemd; without it, run the agent directly: $agent_bin run"
[[ -d /run/systemd/system ]] ||
    die "systemd is not running on this machine (no /run/systemd/system); run the agent directly: $agent_bin run"
[[ -x $agent_bin ]] ||
    die "agent executable '$agent_bin' not found: install capwatch (see deploy/README.md) or pass --agent PATH"
if [[ -n $env_file && ! -r $env_file && $user_mode == 1 ]]; then
    die "--env-file '$env_file' is not readable by you, and a --user unit reads it as you"
fi
if [[ $user_mode == 0 && $EUID -ne 0 ]]; then
    die "starting a system unit needs root: run with sudo, or pass --user"
fi

state=$(systemctl "${systemctl_mode[@]}" show -p ActiveState --value "$unit.service" 2>/dev/null || true)
case $state in
    active | activating | reloading | deactivating)
        die "$unit is already $state: stop it first (systemctl ${systemctl_mode[*]} stop $unit)"
        ;;
    failed)
        # A failed transient unit stays loaded and blocks the name; clear it.
        systemctl "${systemctl_mode[@]}" reset-failed "$unit.service"
        ;;
esac

"${cmd[@]}"
printf '%s: started %s; follow it with: journalctl %s-u %s -f\n' \
    "$prog" "$unit" "${systemctl_mode[*]:+--user }" "$unit" >&2
