#!/usr/bin/env bash
# Hierarchical averaging on two emulated nodes (docs/beyond.md): 4 MPI ranks
# as 2 nodes x 2 ranks (bench/hierarchical/two_nodes.sh: two network
# namespaces joined by a veth pair shaped with tc tbf; loopback inside each
# node), the Fashion-MNIST example with
#   sync          synchronous SGD (an average every step)
#   flat          DaSGD tau 4, d 1 (every average over all 4 ranks)
#   hier          groups of 2 (one per node): group average every round
#                 (tau 4, d 0, fast link), across nodes every 4th round
#                 (16 steps) with delay 3, chained (group, leaders, group)
#   hier_world    the same, across nodes by one allreduce over all ranks
# Two measurements, written as CSV under the output folder
# (default bench/results/hierarchical):
#  1. link.csv: per link rate (--rates) and configuration, one epoch on
#     --train-samples images (batch 32 per worker), repeated --reps times:
#     wall and wait time, steps, step time, and the bytes that crossed the
#     slow link (both veth ends' tx counters).
#  2. accuracy.csv: --epochs epochs on the full set (the example's
#     defaults: cosine lr 0.05, momentum 0.9), 4 in-process worker threads
#     in groups of 2 (the same schedules; the link does not change the
#     numbers), per --seeds: test accuracy per epoch.
# Needs root for the namespaces (step 1 is skipped otherwise).
# usage: bench/hierarchical/run.sh [--build DIR] [--out DIR] [--rates "100mbit 1gbit"]
#          [--train-samples N] [--reps N] [--epochs N] [--seeds "1 2"] [--skip-link] [--skip-accuracy]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/default
out=bench/results/hierarchical
rates="100mbit 1gbit"
samples=16000
reps=2
epochs=15
seeds="1 2"
do_link=1
do_acc=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --train-samples) samples=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --skip-link) do_link=0; shift ;;
    --skip-accuracy) do_acc=0; shift ;;
    *) sed -n '2,24p' "$0" >&2; exit 2 ;;
  esac
done
trainer=$(realpath "$build/examples/fashion_mnist/dasgd_fashion_mnist")
[[ -x $trainer ]] || { echo "no $trainer: cmake --build $build --target dasgd_fashion_mnist" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# name -> the example's flags
declare -A flags=(
  [sync]="-a sync"
  [flat]="-a dasgd --tau 4 -d 1"
  [hier]="-a dasgd --tau 4 -d 0 --groups 2 --outer-every 4 --outer-delay 3"
  [hier_world]="-a dasgd --tau 4 -d 0 --groups 2 --outer-every 4 --outer-delay 3 --outer-average world"
)
configs="sync flat hier hier_world"

if [[ $do_link == 1 ]]; then
  if [[ $EUID -eq 0 ]] && command -v tc >/dev/null; then
    echo "link,config,rep,steps,wall_seconds,wait_seconds,step_ms,slow_link_bytes,test_accuracy" > "$out/link.csv"
    for rate in $rates; do
      echo "== one epoch on $samples images, 2 nodes x 2 ranks, slow link $rate"
      cat > "$tmp/link.sh" <<EOS
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tx() { ip netns exec "\$1" awk '\$1 == "v0:" { print \$10 }' /proc/net/dev; }
for rep in \$(seq 1 $reps); do
  for c in $configs; do
    case \$c in
      sync) f="${flags[sync]}" ;; flat) f="${flags[flat]}" ;;
      hier) f="${flags[hier]}" ;; hier_world) f="${flags[hier_world]}" ;;
    esac
    before=\$(( \$(tx \$DASGD_NODE_A) + \$(tx \$DASGD_NODE_B) ))
    mpiexec -n 4 --host 10.77.0.1:2,10.77.0.2:2 --map-by slot --oversubscribe \
      --mca plm_rsh_agent \$AGENT --mca plm_rsh_no_tree_spawn 1 \
      --mca btl self,tcp --mca btl_tcp_if_include v0 --mca oob_tcp_if_include v0 \
      $trainer \$f -e 1 --train-samples $samples --progress lines --csv $tmp/run.csv >/dev/null
    after=\$(( \$(tx \$DASGD_NODE_A) + \$(tx \$DASGD_NODE_B) ))
    tail -n 1 $tmp/run.csv | awk -F, -v l=$rate -v c=\$c -v r=\$rep -v b=\$((after - before)) \
      '{ printf "%s,%s,%s,%d,%.3f,%.3f,%.2f,%d,%s\n", l, c, r, \$6, \$7, \$11, 1000 * \$7 / \$6, b, \$10 }'
  done
done
EOS
      bench/hierarchical/two_nodes.sh --rate "$rate" -- bash "$tmp/link.sh" | tee -a "$out/link.csv"
    done
  else
    echo "== link measurement skipped (needs root and tc)"
  fi
fi

if [[ $do_acc == 1 ]]; then
  echo "== accuracy: $epochs epochs, 4 worker threads (groups of 2 for hier*), seeds $seeds"
  echo "config,seed,epoch,steps,wall_seconds,test_accuracy" > "$out/accuracy.csv"
  for seed in $seeds; do
    for c in $configs; do
      $trainer ${flags[$c]} -e "$epochs" --seed "$seed" --progress lines --csv "$tmp/acc.csv" >/dev/null
      awk -F, -v c="$c" -v s="$seed" 'NR > 1 { printf "%s,%s,%s,%s,%s,%s\n", c, s, $5, $6, $7, $10 }' \
        "$tmp/acc.csv" | tee -a "$out/accuracy.csv" | tail -n 1
    done
  done
fi
