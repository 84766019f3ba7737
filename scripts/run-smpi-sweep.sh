#!/usr/bin/env bash
# The SMPI scale-up sweep of docs/scaling.md ("Scale-up under SMPI"): the
# library's MPI path (bench/smpi) on simulated fat trees at 1, 10 and
# 100 Gbit/s, 8 to 1024 ranks, the Fashion-MNIST MLP and a ResNet-50-sized
# buffer (its messages through --wire-scale 100, checked against unscaled
# runs at 8 and 64 ranks), and the two-datacenter platform, flat and
# hierarchical. Appends rows to <out>/sweep.csv and the program's output,
# host time and peak RSS to <out>/sweep_log.txt; prints one progress line
# per run.
#
# usage: scripts/run-smpi-sweep.sh [--build build/default] [--out bench/results/smpi]
#                                  [--only <regex on the run name>] [--list]
# Needs smpirun and the dasgd_bench_smpi target built in the build folder.
# The full sweep takes about three hours of host time (a 1024-rank run about
# 15 minutes, the unscaled 64-rank ResNet check about 25); --only selects runs.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/default
out=bench/results/smpi
only=.
list=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --list) list=1; shift ;;
    *) sed -n '9,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
bin=$build/bench/smpi/bin/dasgd_bench_smpi
plat=bench/smpi/platforms
[[ $list == 1 || -x $bin ]] || { echo "no $bin: cmake --build $build --target dasgd_bench_smpi" >&2; exit 1; }
command -v smpirun > /dev/null || { echo "smpirun not found (Debian package libsimgrid-dev)" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
seq 0 1023 | sed 's/^/node-/' > "$tmp/fat_tree"
seq 0 7 | sed 's/^/node-/' > "$tmp/netns"
# Two datacenters: the first half of the ranks in dc0, the second in dc1.
twodc() { { seq 0 $(($1 / 2 - 1)) | sed 's/^/dc0-/'; seq 0 $(($1 - $1 / 2 - 1)) | sed 's/^/dc1-/'; } > "$tmp/two_dc_$1"; }

# Simulator settings (docs/scaling.md): only smpi_execute costs simulated
# time; links as declared (no SMPI piecewise factors); MPI_Test costs no
# simulated time (the shim turns spins into waits); one shared-memory block
# for every SMPI_SHARED_MALLOC; TCP windows of 64 MiB (the WAN would be
# window-limited with Linux defaults).
cfg=(--cfg=smpi/simulate-computation:no --cfg=smpi/bw-factor:0:1 --cfg=smpi/lat-factor:0:1
     --cfg=smpi/test:0 --cfg=smpi/privatization:dlopen --cfg=smpi/shared-malloc:global
     --cfg=network/TCP-gamma:67108864)

all=compute,sync,local,dasgd-d1,dasgd-d2,dasgd-d3,adaptive
few=compute,sync,local,adaptive
mlp="--params 235146 --compute-ms 5"
# ResNet-50: 102 MB on the wire; the library holds a hundredth (--wire-scale).
resnet="--params 25557032 --compute-ms 100 --shared"
runs=()
for rate in 1g 10g 100g; do
  for n in 8 64 256 1024; do
    runs+=("mlp_${rate}_$n|fat_tree_$rate|$n|$mlp --shared --algorithms $all")
    runs+=("resnet_${rate}_$n|fat_tree_$rate|$n|$resnet --wire-scale 100 --algorithms $all")
  done
done
# The wire scale against the real thing: the same runs, the library holding
# all 102 MB (host time grows with ranks x model).
for n in 8 64; do
  for k in 1 100; do
    runs+=("resnet_scale${k}_10g_$n|fat_tree_10g|$n|$resnet --wire-scale $k --warmup-steps 4 --steps 4 --algorithms $few")
  done
done
# Two datacenters: flat averaging crosses the WAN every round; hierarchical
# averaging (groups = datacenters, group rounds every tau = 4 steps with
# delay 1, across the WAN every 4th or 16th round with delay 3) does not.
# Longer runs: an across-WAN round comes every 16 or 64 steps.
for n in 16 64 256 1024; do runs+=("mlp_twodc_$n|two_dc_10g|$n|$mlp --shared --algorithms $all"); done
hier="$mlp --shared --groups 2 --hier-delay 1 --outer-delay 3 --warmup-steps 64 --steps 128"
for n in 16 64 256 1024; do
  for k in 4 16; do runs+=("mlp_twodc_hier${k}_$n|two_dc_10g|$n|$hier --outer-every $k --algorithms compute,hier"); done
done
# Validation: the configurations bench/overlap measured on the emulated links
# (bench/results/overlap_runs.csv: 4 MiB, 120 ms / 25 ms compute, ring).
for n in 2 4 8; do
  runs+=("val_1gbit_$n|netns_1gbit|$n|--params 1048576 --compute-ms 120 --warmup-steps 8 --steps 16 --algorithms $all")
  runs+=("val_10gbit_$n|netns_10gbit|$n|--params 1048576 --compute-ms 25 --warmup-steps 8 --steps 16 --algorithms $all")
done

selected=()
for r in "${runs[@]}"; do [[ ${r%%|*} =~ $only ]] && selected+=("$r"); done
if [[ $list == 1 ]]; then printf '%s\n' "${selected[@]%%|*}"; exit 0; fi
k=0
start=$SECONDS
for r in "${selected[@]}"; do
  IFS='|' read -r name platform n args <<< "$r"
  k=$((k + 1))
  hosts=$tmp/fat_tree
  if [[ $platform == two_dc_* ]]; then twodc "$n"; hosts=$tmp/two_dc_$n; fi
  if [[ $platform == netns_* ]]; then hosts=$tmp/netns; fi
  for alg in rabenseifner ring; do
    # The ring has 2(n-1) rounds: at 1024 ranks each average takes >= 2046
    # poll pauses; it is run up to 256 ranks and on the two-DC platform.
    if [[ $alg == ring && $n -gt 256 ]]; then continue; fi
    if [[ $alg == ring && $platform == two_dc_* && $n -gt 64 ]]; then continue; fi  # 2(n-1) WAN waits
    if [[ $alg == ring && ($name == resnet_* || $name == *hier*) ]]; then continue; fi
    if [[ $alg == rabenseifner && $name == val_* ]]; then continue; fi  # the real runs used the ring
    printf '[%d/%d] %-16s %-9s %4d ranks %-12s (%d s so far) ... ' "$k" "${#selected[@]}" "$name" "$platform" "$n" \
      "$alg" $((SECONDS - start))
    {
      echo "### $name $platform $n $alg: smpirun -np $n -platform $plat/$platform.xml ${cfg[*]} $bin $args"
      /usr/bin/time -f "### host %e s, peak RSS %M KB" smpirun -np "$n" -platform "$plat/$platform.xml" \
        -hostfile "$hosts" "${cfg[@]}" "$bin" $args --allreduce "$alg" --label "$name" --csv "$out/sweep.csv" 2>&1 |
        grep -v 'xbt_cfg/INFO\|smpi_config/INFO'
    } >> "$out/sweep_log.txt" 2>&1 || echo -n "FAILED "
    tail -n 1 "$out/sweep_log.txt"
  done
done
echo "done in $((SECONDS - start)) s: $out/sweep.csv"
