#!/usr/bin/env bash
# runner serve under load, beside the PyTorch web demo (bench/serve_torch.py: FastAPI, uvicorn,
# torchvision) on the same checkpoint, image and CPU threads, one after the other in one run.
#   bench/serve_load.sh CHECKPOINT IMAGE [--arch A] [--build DIR] [--threads T] [--seconds S]
#                       [--connections "1 8 64"] [--max-batch B] [--max-wait-ms W] [--no-torch]
#                       [--rounds R] [--round-seconds RS] [--workers W]
# wrk (scripts/deps test) posts IMAGE as the body of POST /v1/predict on each of C connections, for
# S seconds, after a 3-second warm-up. For each server and each C: requests per second, latency
# p50/p99, non-2xx answers and socket errors; for runner serve also the mean batch it ran (from
# /metrics). Below them, the network alone (runner bench --inference) at batch 1 and at the largest
# mean batch seen: what the server would reach with nothing but the network to run.
# The server's cost is measured apart, in R alternated rounds (default 3) of about RS seconds each
# (default 10): the network alone at the batch the server reached under the most connections, then
# the server under those connections, counted over whole batches. Each round's ratio sets the two
# side by side within seconds, so the machine's drift over the run (other tenants, clocks) falls on
# both alike; the median is reported, and beside each round the network's own rate inside the
# server (images per second of forward time, from /metrics), which tells the time the network lost
# to the threads around it from the time spent outside it.
# --workers W serves with W copies of the network (runner serve --workers), the threads split among
# them; the network alone keeps all the threads, and "its network" is then the workers' summed rate.
# wrk takes one core of its own; on a small machine it competes with both servers alike.
# Logs go to $OUT (default: a folder under /tmp); the table goes to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
(($# >= 2)) || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
checkpoint=$(realpath "$1") image=$(realpath "$2")
shift 2
build=build arch="" threads=$(nproc) seconds=30 connections="1 8 64" max_batch=32 max_wait="" torch=1
rounds=3 round_seconds=10 workers=1
while (($#)); do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --max-batch) max_batch=$2; shift 2 ;;
    --max-wait-ms) max_wait=$2; shift 2 ;;
    --no-torch) torch=0; shift ;;
    --rounds) rounds=$2; shift 2 ;;
    --round-seconds) round_seconds=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    *) echo "bench/serve_load.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
runner="$build/runner/runner"
[[ -x $runner ]] || { echo "bench/serve_load.sh: no $runner; build first (meson setup $build && ninja -C $build)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "bench/serve_load.sh: wrk is missing (scripts/deps test installs it)" >&2; exit 2; }
export TESSERA_PLUGIN_PATH="$build/plugins"
out=${OUT:-$(mktemp -d /tmp/tessera-serve-load.XXXXXX)}
mkdir -p "$out"
case "${image,,}" in *.png) type=image/png ;; *.jpg | *.jpeg) type=image/jpeg ;; *) type=application/octet-stream ;; esac

# wrk's script: the image as every request's body; at the end, one JSON line of the figures.
cat >"$out/post.lua" <<EOF
local f = assert(io.open("$image", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "$type"
done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  io.write(string.format('{"rps": %.2f, "p50_ms": %.1f, "p99_ms": %.1f, "requests": %d, "non2xx": %d, "socket_errors": %d}\n',
    summary.requests / s, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
wait_for() {  # URL: until it answers, for up to 120 s
  for _ in $(seq 1200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "bench/serve_load.sh: nothing answered at $1; see the logs in $out" >&2; exit 1
}
field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
metric() {  # PORT NAME: a Prometheus sample's value
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}
load() {  # NAME PORT C: a warm-up, then S seconds of load; appends a row to the table
  local name=$1 port=$2 c=$3 line batches0=0 images0=0 batch="-"
  wrk -t1 -c"$c" -d3s --timeout 30s -s "$out/post.lua" "http://127.0.0.1:$port/v1/predict" >/dev/null
  if [[ $name == tessera ]]; then
    batches0=$(metric "$port" tessera_batch_size_count) images0=$(metric "$port" tessera_batch_size_sum)
  fi
  wrk -t1 -c"$c" -d"${seconds}s" --timeout 30s --latency -s "$out/post.lua" "http://127.0.0.1:$port/v1/predict" \
    >"$out/wrk_${name}_c$c.log"
  line=$(tail -1 "$out/wrk_${name}_c$c.log")
  if [[ $name == tessera ]]; then
    batch=$(/usr/bin/python3 -c "import sys; a, b = map(float, sys.argv[1:]); print(f'{a / b:.1f}' if b else '-')" \
      "$(($(metric "$port" tessera_batch_size_sum) - images0))" "$(($(metric "$port" tessera_batch_size_count) - batches0))")
    mean_batches+=("$batch")
    mean_batch[$c]=$batch
  fi
  rps[$name$c]=$(field "$line" rps)
  printf '| %s | %s | %s | %s ms | %s ms | %s | %s |\n' "$name" "$c" "$(field "$line" rps)" "$(field "$line" p50_ms)" \
    "$(field "$line" p99_ms)" "$batch" "$(($(field "$line" non2xx) + $(field "$line" socket_errors)))"
}

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores here, $threads threads for each server" \
  "(runner serve: $workers worker(s))"
echo "model: $(basename "$checkpoint")${arch:+ ($arch)}, image: $(basename "$image") ($(stat -c %s "$image") bytes), logs in $out"
declare -A rps mean_batch
mean_batches=()
printf '\n| server | connections | requests/s | p50 | p99 | mean batch | errors |\n|---|---|---|---|---|---|---|\n'

"$runner" serve --checkpoint "$checkpoint" ${arch:+--arch "$arch"} --port 0 --threads "$threads" --workers "$workers" \
  --max-batch "$max_batch" ${max_wait:+--max-wait-ms "$max_wait"} --max-queue 4096 >"$out/tessera_serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do grep -q 'http://' "$out/tessera_serve.log" && break; sleep 0.1; done
port=$(grep -o 'http://[0-9.]*:[0-9]*/' "$out/tessera_serve.log" | head -1 | sed 's/.*:\([0-9]*\)\//\1/')
[[ -n $port ]] || { cat "$out/tessera_serve.log" >&2; exit 1; }
wait_for "http://127.0.0.1:$port/healthz"
card=$(curl -s "http://127.0.0.1:$port/v1/model")
for c in $connections; do load tessera "$port" "$c"; done
read -r net_arch size classes < <(/usr/bin/python3 -c "import json,sys; d = json.loads(sys.argv[1]); \
print(d['arch'], d['input']['height'], d['classes'])" "$card")
bench() {  # BATCH STEPS FILE: the network alone, inference at BATCH (3-channel input: runner bench has
  # no channel option; the stem's share of a grey model's work is small); prints images/s
  "$runner" bench --arch "$net_arch" --batch "$1" --image-size "$size" --num-classes "$classes" --inference \
    --threads "$threads" --steps "$2" --json >"$3" 2>"${3%.json}.log"
  field "$(tail -1 "$3")" infer_img_per_s
}

edge() {  # PORT: waits for the server's next batch to end; prints its image count, the network's
  # time so far (both from /metrics) and the time
  local before now
  before=$(metric "$1" tessera_images_total)
  while now=$(metric "$1" tessera_images_total); [[ $now == "$before" ]]; do sleep 0.005; done
  echo "$now $(metric "$1" tessera_forward_duration_seconds_sum) $(date +%s.%N)"
}
steady() {  # PORT C RAMP S LOG: under C connections, from the first batch to end after RAMP seconds
  # of load to the first to end S seconds later (whole batches: a count over a fixed window would be
  # off by up to a batch, 1.5 s of ResNet50's), prints the requests answered per second and the
  # network's own rate in the server (images per second of forward time); then waits until the
  # requests wrk leaves behind are answered, so that nothing runs on into the next round.
  local port=$1 c=$2 ramp=$3 s=$4 log=$5 n0 f0 t0 n1 f1 t1
  wrk -t1 -c"$c" -d"$((ramp + 2 * s))s" --timeout 60s -s "$out/post.lua" "http://127.0.0.1:$port/v1/predict" >"$log" &
  local load=$!
  sleep "$ramp"
  read -r n0 f0 t0 < <(edge "$port")
  sleep "$s"
  read -r n1 f1 t1 < <(edge "$port")
  kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true
  while (($(metric "$port" tessera_queue_depth) > 0)); do sleep 0.1; done
  /usr/bin/python3 -c "import sys; n0, f0, t0, n1, f1, t1, w = map(float, sys.argv[1:]); \
print(f'{(n1 - n0) / (t1 - t0):.2f} {w * (n1 - n0) / (f1 - f0):.2f}')" "$n0" "$f0" "$t0" "$n1" "$f1" "$t1" "$workers"
}

# The server's cost, in alternated rounds (see the top), with the server up and idle during the
# network's rounds.
most=$(printf '%s\n' $connections | sort -n | tail -1)
b=$(awk -v m="${mean_batch[$most]}" 'BEGIN { b = int(m + 0.5); print b < 1 ? 1 : b }')
steps=$(/usr/bin/python3 -c "import sys; r, s, b = map(float, sys.argv[1:]); print(max(5, round(r * s / b)))" \
  "${rps[tessera$most]}" "$round_seconds" "$b")
cost=$(printf '\n| round | the network alone, batch %s: images/s | runner serve, %s connections: requests/s | its network: images/s of forward time | ratio |\n|---|---|---|---|---|' \
  "$b" "$most")
ratios=()
ramp=$(/usr/bin/python3 -c "import sys; r, b = map(float, sys.argv[1:]); print(max(2, round(3 * b / r + 0.5)))" \
  "${rps[tessera$most]}" "$b")
for r in $(seq "$rounds"); do
  alone=$(bench "$b" "$steps" "$out/round${r}_bench.json")
  read -r served inside < <(steady "$port" "$most" "$ramp" "$round_seconds" "$out/round${r}_wrk.log")
  ratios+=("$(/usr/bin/python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$served" "$alone")")
  cost+=$(printf '\n| %s | %s | %s | %s | %sx |' "$r" "$alone" "$served" "$inside" "${ratios[-1]}")
done
median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2 }')
cost+=$(printf '\n| median | | | | %sx |' "$median")
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

if ((torch)); then
  python=$(scripts/venv)
  torch_port=$((20000 + RANDOM % 20000))
  "$python" bench/serve_torch.py "$checkpoint" ${arch:+--arch "$arch"} --port "$torch_port" --threads "$threads" \
    >"$out/torch_serve.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$torch_port/healthz"
  for c in $connections; do load pytorch "$torch_port" "$c"; done
  kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true  # its threads must not share the cores below
  printf '\n| connections | runner serve / PyTorch demo, requests/s |\n|---|---|\n'
  for c in $connections; do
    printf '| %s | %s |\n' "$c" "$(/usr/bin/python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" \
      "${rps[tessera$c]}" "${rps[pytorch$c]}")"
  done
fi

# The network alone, at batch 1 and at the largest mean batch the server ran.
largest=$(printf '%s\n' "${mean_batches[@]}" | sort -g | tail -1 | awk '{ b = int($1 + 0.5); print b < 1 ? 1 : b }')
printf '\n| the network alone (runner bench --inference, %s px) | images/s |\n|---|---|\n' "$size"
for b in $(printf '%s\n' 1 "$largest" | sort -un); do
  printf '| batch %s | %s |\n' "$b" "$(bench "$b" $((b == 1 ? 100 : 20)) "$out/bench_b$b.json")"
done
printf '\nWhat the server costs, in rounds alternated with the network alone:\n%s\n' "$cost"
