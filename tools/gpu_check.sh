#!/usr/bin/env bash
# The CUDA path in one run: the demo (tools/demo.py) trains DBNet from disk and from the cache
# and evaluates it from disk, preload and cache, on the GPU when torch sees one (the configs'
# trainer.device is auto), while nvidia-smi samples GPU utilisation. Writes
# OUT/gpu_check.json and prints, per run: epoch time, data-wait share, GPU utilisation, H-mean;
# then ocr-predict of the val images from the folder and from the cache (the same file).
#
#   bash tools/gpu_check.sh            # the demo's size (about 2-4 minutes on one H100)
#   bash tools/gpu_check.sh --tiny     # a few images and epochs: the same path on a CPU (CI)
#
# OUT is $OUT when set (the device machine's result folder), else runs/gpu_check. Exit status:
# 1 when disk and cache disagree (training, evaluation or prediction) or it did not learn.
set -euo pipefail
cd "$(dirname "$0")/.."

demo_args=()
case "${1:-}" in
  "") ;;
  --tiny) demo_args=(--train-count 6 --val-count 3 --epochs 2 --min-hmean 0) ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "usage: bash tools/gpu_check.sh [--tiny]" >&2; exit 2 ;;
esac

out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
python - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
PY

sampler=""
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" || true
  # One line every 200 ms: unix time (ms), utilisation %, memory used MiB.
  ( while true; do
      printf '%s,' "$(date +%s%3N)"
      nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits | head -1
      sleep 0.2
    done ) > "$out/gpu_samples.csv" 2>/dev/null &
  sampler=$!
fi
status=0
python tools/demo.py --runs "$out/runs" --json "$out/demo.json" "${demo_args[@]}" || status=$?
# ocr-predict with the trained checkpoint on the val images, from the folder and from its
# cache (batched on the GPU when there is one): the two files must be the same.
if [ -f "$out/runs/cache/last.pt" ]; then
  for source in disk cache; do
    extra=()
    if [ "$source" = cache ]; then extra=(--cache data/demo/val.lmdb); fi
    ocr-predict -q --json -k "$out/runs/cache/last.pt" data/demo/val "${extra[@]}" \
      -o "$out/predict_$source.json" > "$out/predict_${source}_summary.json" || status=$?
  done
  if ! cmp -s "$out/predict_disk.json" "$out/predict_cache.json"; then
    echo "ocr-predict: the predictions from data/demo/val and from its cache differ" >&2
    status=1
  fi
fi
if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; fi

OUT_DIR="$out" python - <<'PY'
import json, os, statistics
from pathlib import Path

out = Path(os.environ["OUT_DIR"])
if not (out / "demo.json").exists():
    raise SystemExit("the demo did not finish; see its output above")
demo = json.loads((out / "demo.json").read_text())
samples = []
if (out / "gpu_samples.csv").exists():
    for line in (out / "gpu_samples.csv").read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            samples.append((int(parts[0]) / 1000, float(parts[1]), float(parts[2])))
        except (IndexError, ValueError):
            pass

def gpu(run):
    window = [s for s in samples if run["started"] <= s[0] <= run["ended"]]
    if not window:
        return None
    return {"util_mean_pct": statistics.mean(s[1] for s in window),
            "memory_max_mib": max(s[2] for s in window), "samples": len(window)}

rows = {}
for name, run in demo["train"].items():
    log = [json.loads(l) for l in (Path(run["output_dir"]) / "log.jsonl").read_text().splitlines()]
    epochs = [e["train"]["wall_s"] for e in log if "train" in e]  # epoch records, not steps
    steady = epochs[1:] or epochs
    rows[f"train/{name}"] = {
        "device": run["device"], "epochs": len(epochs),
        "epoch_s_median": statistics.median(steady), "first_epoch_s": epochs[0],
        "data_wait_share": run["data_wait_share"], "images_per_s": run["train_images_per_s"],
        "hmean": run["metrics"]["hmean"], "final_loss": run["final_loss"], "gpu": gpu(run)}
for name, ev in demo["eval"].items():
    rows[f"eval/{name}"] = {"loop_s": ev["timing"]["wall_s"],
                            "data_wait_share": ev["timing"]["data_wait_share"],
                            "hmean": ev["hmean"], "gpu": gpu(ev)}
predict = {}
for source in ("disk", "cache"):
    summary = out / f"predict_{source}_summary.json"
    if summary.exists() and summary.stat().st_size:
        predict[source] = json.loads(summary.read_text())
gpu_name = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else "no GPU"
doc = {"gpu": gpu_name, "runs": rows, "predict": predict}
(out / "gpu_check.json").write_text(json.dumps(doc, indent=2) + "\n")
print(f"\n{gpu_name}")
print("| run | epoch / loop (s) | data wait | GPU util | H-mean |")
print("|---|---:|---:|---:|---:|")
for name, r in rows.items():
    t = r.get("epoch_s_median", r.get("loop_s"))
    util = f"{r['gpu']['util_mean_pct']:.0f}%" if r["gpu"] else "n/a"
    print(f"| {name} | {t:.2f} | {100 * r['data_wait_share']:.0f}% | {util} | {r['hmean']:.4f} |")
for source, p in predict.items():
    rate = p["images"] / p["wall_s"] if p["wall_s"] else 0.0
    print(f"ocr-predict from {source}: {p['images']} images, {p['words']} detections, "
          f"{p['wall_s']:.2f} s ({rate:.1f} img/s)")
print(f"\nwritten: {out / 'gpu_check.json'}")
PY
exit "$status"
