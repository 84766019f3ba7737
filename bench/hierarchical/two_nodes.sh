#!/usr/bin/env bash
# Runs a command as if on two nodes joined by a slow link: two network
# namespaces ("nodes" A and B) joined by a veth pair whose two ends are each
# shaped with tc tbf (the slow link, both directions), and
# mpi_two_nodes_agent.sh as OpenMPI's rsh agent, so that mpiexec (started in
# node A) places ranks in node B by entering its namespace.
#
# Both veth ends are named v0 (one per namespace), addresses 10.77.0.1 (A)
# and 10.77.0.2 (B). Restrict MPI to v0 (--mca btl_tcp_if_include v0): a
# rank's traffic to a peer in its own node is addressed to its own node's
# v0 address, which Linux delivers through the loopback (fast, unshaped);
# only traffic to the other node crosses the shaped veth. (Loopback
# addresses must stay out: 127.0.0.1 of node B is not node A's.)
#
# The namespaces are removed afterwards, also on failure and on Ctrl-C.
# usage: bench/hierarchical/two_nodes.sh [--rate 1gbit] [--burst 256kb] -- <command...>
# The command runs in node A, with HOSTS=10.77.0.1,10.77.0.2 and
# AGENT=<path of the rsh agent> in its environment.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rate=1gbit
burst=256kb
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate) rate=${2:?}; shift 2 ;;
    --burst) burst=${2:?}; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--rate R] [--burst B] -- <command...>" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "two_nodes.sh: no command after --" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "two_nodes.sh: needs root (ip netns, tc)" >&2; exit 1; }

tag="dasgd-h$$"
a="$tag-a"
b="$tag-b"
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for ns in "$a" "$b"; do
    if ip netns list | grep -qw "$ns"; then
      local pids
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      if [[ -n "$pids" ]]; then
        kill $pids 2>/dev/null || true
        sleep 0.5
        kill -9 $pids 2>/dev/null || true
      fi
      ip netns del "$ns" || echo "two_nodes.sh: could not delete namespace $ns" >&2
    fi
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$a"
ip netns add "$b"
ip link add "$tag-x" netns "$a" type veth peer name "$tag-y" netns "$b"
ip -n "$a" link set "$tag-x" name v0
ip -n "$b" link set "$tag-y" name v0
ip -n "$a" addr add 10.77.0.1/24 dev v0
ip -n "$b" addr add 10.77.0.2/24 dev v0
for ns in "$a" "$b"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set v0 mtu 1500 up
  # tbf's "latency" is how long a packet may queue: generous, so that TCP
  # sees a slow link rather than a lossy one.
  tc -n "$ns" qdisc add dev v0 root handle 1: tbf rate "$rate" burst "$burst" latency 200ms
done
export HOSTS=10.77.0.1,10.77.0.2 AGENT="$here/mpi_two_nodes_agent.sh"
export DASGD_NODE_A="$a" DASGD_NODE_B="$b"
ip netns exec "$a" "$@"
