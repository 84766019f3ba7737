#!/usr/bin/env bash
# The compressed wire format and the outer optimizer on the Fashion-MNIST
# example (docs/beyond.md). Three measurements, each written as CSV under
# the output folder (default bench/results/wire_outer):
#  1. link.csv: one epoch, 4 MPI ranks over TCP on an emulated 1 Gbit/s
#     link (scripts/netns_run.sh), batch 64, DaSGD tau 4 d 1, fp32 and bf16
#     wire, side by side in one run: wall and wait time, and the bytes the
#     namespace's loopback carried (from /proc/net/dev, all ranks together).
#  2. accuracy.csv: 15 epochs (--epochs), 4 MPI ranks on loopback, fp32 and
#     bf16 wire, three seeds: test accuracy per epoch.
#  3. merge.csv: the same 15 epochs, 4 in-process workers, seed 1, DaSGD
#     with mix (p 0.25), additive and the outer optimizer (lr 0.7, Nesterov
#     momentum 0.9; and lr 1, momentum 0, which must equal additive).
# Needs root for the namespace (step 1 is skipped otherwise) and a build
# with the CUDA toolkit's 16-bit types (-DDASGD_ENABLE_CUDA=AUTO).
# usage: bench/wire_outer/run.sh [--build DIR] [--out DIR] [--epochs N] [--seeds "1 2 3"]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=build/lead
out=bench/results/wire_outer
epochs=15
seeds="1 2 3"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--out DIR] [--epochs N] [--seeds \"1 2 3\"]" >&2; exit 2 ;;
  esac
done
trainer=$build/examples/fashion_mnist/dasgd_fashion_mnist
[[ -x $trainer ]] || { echo "no $trainer: cmake --build $build --target dasgd_fashion_mnist" >&2; exit 1; }
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpiexec -n 4 --oversubscribe --mca btl tcp,self --mca btl_tcp_if_include lo
     --mca oob_tcp_if_include lo)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Loopback bytes sent so far in this namespace (tx column of /proc/net/dev).
lo_tx() { awk '$1 == "lo:" { print $10 }' /proc/net/dev; }

if [[ $EUID -eq 0 ]] && command -v tc >/dev/null; then
  echo "== 1. one epoch at 1 Gbit/s, fp32 vs bf16 wire"
  cat > "$tmp/link.sh" <<EOF
set -euo pipefail
lo_tx() { awk '\$1 == "lo:" { print \$10 }' /proc/net/dev; }
echo "wire,epoch,wall_seconds,wait_seconds,test_accuracy,lo_tx_bytes"
for wire in fp32 bf16 fp32 bf16; do
  before=\$(lo_tx)
  ${mpi[*]} $trainer --wire \$wire -b 64 -e 1 --progress lines --csv $tmp/link_\$wire.csv >/dev/null
  after=\$(lo_tx)
  tail -n 1 $tmp/link_\$wire.csv | awk -F, -v w=\$wire -v b=\$((after - before)) \
    '{ print w "," \$5 "," \$7 "," \$11 "," \$10 "," b }'
done
EOF
  scripts/netns_run.sh --rate 1gbit -- bash "$tmp/link.sh" | tee "$out/link.csv"
else
  echo "== 1. skipped (needs root and tc for the emulated link)"
fi

echo "== 2. accuracy over $epochs epochs, fp32 vs bf16 wire, seeds $seeds (4 MPI ranks, loopback)"
echo "wire,seed,epoch,wall_seconds,test_accuracy,wait_seconds" > "$out/accuracy.csv"
for seed in $seeds; do
  for wire in fp32 bf16; do
    "${mpi[@]}" "$trainer" --wire $wire --seed "$seed" -e "$epochs" --progress lines \
      --csv "$tmp/acc.csv" >/dev/null
    tail -n +2 "$tmp/acc.csv" | awk -F, -v w=$wire -v s="$seed" \
      '{ print w "," s "," $5 "," $7 "," $10 "," $11 }' >> "$out/accuracy.csv"
    echo "  seed $seed $wire: final accuracy $(tail -n 1 "$tmp/acc.csv" | cut -d, -f10)"
  done
done

echo "== 3. merge rules over $epochs epochs (4 in-process workers, seed 1)"
echo "merge,epoch,wall_seconds,test_accuracy" > "$out/merge.csv"
run_merge() {
  local name=$1; shift
  "$trainer" "$@" -e "$epochs" --progress lines --csv "$tmp/m.csv" >/dev/null
  tail -n +2 "$tmp/m.csv" | awk -F, -v m="$name" '{ print m "," $5 "," $7 "," $10 }' >> "$out/merge.csv"
  echo "  $name: final accuracy $(tail -n 1 "$tmp/m.csv" | cut -d, -f10)"
}
run_merge mix --merge mix
run_merge additive --merge additive
run_merge outer_lr0.7_nesterov0.9 --merge outer --outer-lr 0.7 --outer-momentum 0.9
run_merge outer_lr1_m0 --merge outer --outer-lr 1 --outer-momentum 0
echo "results in $out"
