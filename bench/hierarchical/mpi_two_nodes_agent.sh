#!/usr/bin/env bash
# OpenMPI rsh agent for bench/hierarchical/two_nodes.sh: "agent [options]
# <host> <command...>" runs the command in the network namespace of that
# host (10.77.0.1: node A, 10.77.0.2: node B), as ssh would on a real node.
set -euo pipefail
while [[ $# -gt 0 && $1 == -* ]]; do shift; done  # ssh-style options, if any
host=$1
shift
case "$host" in
  10.77.0.1) ns=$DASGD_NODE_A ;;
  10.77.0.2) ns=$DASGD_NODE_B ;;
  *) echo "mpi_two_nodes_agent.sh: unknown host '$host'" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" /bin/sh -c "$*"
