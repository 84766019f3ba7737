#!/usr/bin/env bash
# Overlap on one GPU with no MPI and no traffic shaping: the GPU MLP example
# with 4 worker threads averaging through the host-staged communicator over
# the in-process host communicator, whose link is emulated (--comm staged
# --link-gbps). For each link speed: the model alone (compute), Local SGD
# (delay 0), DaSGD with delay 1 and 2, and synchronous SGD, tau = 4, 1 epoch
# each, in one session; then summarize.py (hidden fraction).
#
#   bench/gpu_overlap/run.sh <dasgd_gpu_fashion_mnist> <data dir> <out dir> [link Gbit/s ...]
# Default links: 2 8 32. Writes gpu_overlap.csv, gpu_overlap.log and
# gpu_overlap.md in <out dir>. Exit 77 when the example finds no device.
set -u -o pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ $# -lt 3 ]]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
bin=$1 data=$2 out=$3
shift 3
links=("$@")
(( ${#links[@]} )) || links=(2 8 32)
mkdir -p "$out"
csv="$out/gpu_overlap.csv" log="$out/gpu_overlap.log"
echo "link_gbps,config,tau,delay,step_ms,accuracy" >"$csv"
: >"$log"
configs=("compute --tau 1000000 --delay 1" "local --tau 4 --delay 0" "d1 --tau 4 --delay 1"
         "d2 --tau 4 --delay 2" "sync --algo sync --tau 1 --delay 0")
for link in "${links[@]}"; do
  for cfg in "${configs[@]}"; do
    read -r name args <<<"$cfg"
    # shellcheck disable=SC2086
    "$bin" --comm staged --link-gbps "$link" --workers 4 --epochs 1 --data-dir "$data" $args >"$out/.run.log" 2>&1
    rc=$?
    cat "$out/.run.log" >>"$log"
    (( rc == 77 )) && { rm -f "$out/.run.log"; echo "no CUDA device: skipped"; exit 77; }
    line=$(grep -E '^final test accuracy' "$out/.run.log" | tail -n1)
    if (( rc != 0 )) || [[ -z "$line" ]]; then
      echo "run failed (exit $rc): link $link, $cfg; see $log" >&2
      rm -f "$out/.run.log"
      exit 1
    fi
    acc=$(sed -E 's/^final test accuracy ([0-9.]+).*/\1/' <<<"$line")
    ms=$(sed -E 's/.*mean step time ([0-9.]+) ms.*/\1/' <<<"$line")
    tau=$(grep -oE -- '--tau [0-9]+' <<<"$args" | cut -d' ' -f2)
    delay=$(grep -oE -- '--delay [0-9]+' <<<"$args" | cut -d' ' -f2)
    echo "$link,$name,$tau,$delay,$ms,$acc" >>"$csv"
    echo "link $link Gbit/s, $name: $ms ms/step, accuracy $acc"
  done
done
rm -f "$out/.run.log"
python3 "$here/summarize.py" "$csv" -o "$out/gpu_overlap.md"
