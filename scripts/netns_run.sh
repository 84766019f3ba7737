#!/usr/bin/env bash
# Runs a command on an emulated slow link: inside a fresh network namespace
# whose only interface, its own loopback, is shaped with tc (token bucket
# rate limit, optional netem delay). Everything the command sends to
# 127.0.0.1 crosses the shaped link. MPI ranks on one machine then behave as if
# they shared one slow link. No other interface or address is touched. The
# namespace is removed afterwards, also on failure and on Ctrl-C.
#
# usage: scripts/netns_run.sh [--rate 1gbit] [--latency 0ms] [--mtu 1500]
#                             [--burst 256kb] -- <command...>
#   --rate     tbf rate (tc units: 100mbit, 1gbit, 10gbit...)   default 1gbit
#   --latency  one-way delay added by netem (0ms: no netem)     default 0ms
#   --mtu      loopback MTU (1500: like Ethernet; lo's own is 65536) default 1500
#   --burst    tbf bucket size (at least one MTU)                default 256kb
# Needs root (ip netns add). Example, 4 MPI ranks over TCP on the link:
#   scripts/netns_run.sh --rate 1gbit -- mpiexec -n 4 --allow-run-as-root \
#     --oversubscribe --mca btl tcp,self --mca btl_tcp_if_include lo \
#     --mca oob_tcp_if_include lo ./my_mpi_program
set -euo pipefail

usage() {
  sed -n '9,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

rate=1gbit
latency=0ms
mtu=1500
burst=256kb
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate) rate=${2:?--rate needs a value}; shift 2 ;;
    --latency) latency=${2:?--latency needs a value}; shift 2 ;;
    --mtu) mtu=${2:?--mtu needs a value}; shift 2 ;;
    --burst) burst=${2:?--burst needs a value}; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "netns_run.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
[[ $# -gt 0 ]] || { echo "netns_run.sh: no command given after --" >&2; usage; }
[[ $EUID -eq 0 ]] || { echo "netns_run.sh: needs root (ip netns add / tc)" >&2; exit 1; }
for tool in ip tc; do
  command -v "$tool" >/dev/null || { echo "netns_run.sh: '$tool' not found (Debian: apt-get install iproute2)" >&2; exit 1; }
done

ns="dasgd-netns-$$-${RANDOM}"
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ip netns list | grep -qw "$ns"; then
    # Whatever the command left running in the namespace was started here.
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n "$pids" ]]; then
      kill $pids 2>/dev/null || true
      sleep 0.5
      kill -9 $pids 2>/dev/null || true
    fi
    ip netns del "$ns" || echo "netns_run.sh: could not delete network namespace $ns" >&2
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$ns"
ip -n "$ns" link set lo mtu "$mtu" up
# tbf's own "latency" is how long a packet may queue before it is dropped:
# generous, so that TCP sees a slow link rather than a lossy one.
if [[ "$latency" =~ ^0+(\.0+)?(ms|us|s)?$ ]]; then
  tc -n "$ns" qdisc add dev lo root handle 1: tbf rate "$rate" burst "$burst" latency 200ms
else
  if ! tc -n "$ns" qdisc add dev lo root handle 1: netem delay "$latency"; then
    echo "netns_run.sh: --latency needs netem (kernel module sch_netem: modprobe sch_netem);" \
         "this kernel does not provide it. Use --latency 0ms for a rate limit only." >&2
    exit 1
  fi
  tc -n "$ns" qdisc add dev lo parent 1:1 handle 10: tbf rate "$rate" burst "$burst" latency 200ms
fi
echo "netns_run.sh: namespace $ns, lo mtu $mtu, $(tc -n "$ns" qdisc show dev lo | tr '\n' ';')" >&2

set +e
ip netns exec "$ns" "$@"
status=$?
set -e
exit "$status"
