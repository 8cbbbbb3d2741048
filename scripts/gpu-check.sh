#!/usr/bin/env bash
# One-shot GPU check of rsd-deploy: run it once, from the repository root, on a machine with one
# NVIDIA GPU. It needs no network and finishes within 8 minutes on an H100-class GPU (every step
# runs under its own time limit inside that budget; a step that runs out is recorded as such).
#
#   scripts/gpu-check.sh [--out DIR] [--dry-run]
#
# Steps:
#   1. install   nothing from the network: when the project does not import, the wheels carried
#                in .whl/ (if any) go into a scratch site folder and the checkout is installed
#                with pip --no-index; then it checks that everything the later steps import is there.
#   2. tests     the GPU-only tests (pytest -m gpu) and the kernel tests (tests/kernels: the
#                Triton kernels compiled for this GPU, not the CPU interpreter).
#   3. kernels   the window-attention kernel benchmark, per op (eager / SDPA / Triton).
#   4. bench     rsd-bench at full size (the official x4 architecture, random weights): PyTorch
#                fp32 / fp16 / bf16 with the official, SDPA and Triton attention, ONNX Runtime CUDA
#                when installed, the upstream procedures at the official scripts' precision;
#                batch 1 and 4 at 64x64 LR. Peak GPU memory per case (64x64 LR, batch 1: the RSD
#                paper reports 539 MB).
#   5. compile   rsd-bench torch.compile (fp16, SDPA attention), batch 1.
#   6. tensorrt  when TensorRT 10/11 is installed and time is left: rsd-export fp16 graphs and
#                engines for the bench's shapes, then rsd-bench tensorrt-fp16.
#   7. report    DIR/gpu-check.md and DIR/gpu-check.json (each step's status, time and log).
#
# --dry-run runs the CPU side of the steps here, with the bundled demo model (the GPU tests skip,
# the kernel benchmark's --smoke, GPU rows reported as unavailable, no kernel tests / compile /
# TensorRT): it checks the script, its numbers mean nothing.
#
# Exit codes: 0 every step ran; 1 a step failed or ran out of time (the report says which); 2 a bad
# option, an output folder in the way, no GPU (without --dry-run), or the project cannot be imported.
set -uo pipefail

OUT=gpu-check-out
DRY_RUN=0
BUDGET_S=470  # 8 minutes minus what the report and the shell need
while (($#)); do
    case $1 in
        --out) OUT=${2:?--out needs a folder}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu-check: error: unknown option $1 (expected --out DIR, --dry-run)" >&2; exit 2 ;;
    esac
done

if [[ ! -f pyproject.toml || ! -d export ]]; then
    echo "gpu-check: error: run it from the repository root (scripts/gpu-check.sh)" >&2
    exit 2
fi
if [[ -e $OUT && -n $(ls -A "$OUT" 2>/dev/null) ]]; then
    echo "gpu-check: error: --out $OUT exists and is not empty; give a new folder (nothing is overwritten)" >&2
    exit 2
fi
mkdir -p "$OUT/logs" || exit 2
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs
STEPS=$OUT/steps.tsv
: >"$STEPS"
STARTED=$(date +%s)
DEADLINE=$((STARTED + BUDGET_S))
PY=${PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

record() {  # name status seconds
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$LOGS/$1.log" >>"$STEPS"
    printf 'gpu-check: %-9s %s (%s s)\n' "$1" "$2" "$3"
}

# run_step NAME BUDGET_S COMMAND...: the command with its output in logs/NAME.log, stopped after
# BUDGET_S seconds or when the whole run's budget is spent, whichever comes first.
run_step() {
    local name=$1 budget=$2 left began rc status
    shift 2
    left=$((DEADLINE - $(date +%s)))
    if ((left < 15)); then
        record "$name" "skipped: the 8-minute budget is spent" 0
        return 0
    fi
    ((budget > left)) && budget=$left
    began=$(date +%s)
    timeout --kill-after=10 "$budget" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out after $budget s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    record "$name" "$status" $(($(date +%s) - began))
}

skip_step() {  # name reason
    record "$1" "skipped: $2" 0
}

# --- 1. install: what the checkout carries or the machine has -----------------------------------
# shellcheck disable=SC2317  # run through bash -c under timeout (export -f), not called directly
install_project() {
    if "$PY" -c "import rsd_deploy.export.bench" 2>/dev/null; then
        echo "rsd_deploy imports: nothing to install"
    else
        shopt -s nullglob
        local wheels=(.whl/*.whl)
        shopt -u nullglob
        if ((${#wheels[@]})); then
            "$PY" -m pip install --no-index --no-deps --target "$OUT/site" "${wheels[@]}" || return 1
        fi
        "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . || return 1
    fi
    # everything the later steps import; one line naming what is missing
    "$PY" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "onnx", "diffusers", "lpips", "skimage", "safetensors", "yaml", "pytest", "matplotlib")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing: {', '.join(missing)}")
try:
    import rsd_deploy.export.bench, rsd_deploy.kernels.bench_window_attention  # noqa: F401
except Exception as error:  # noqa: BLE001
    sys.exit(f"rsd_deploy does not import: {type(error).__name__}: {error}")
print("everything the check imports is installed")
EOF
}

export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
export PY OUT
export -f install_project  # timeout runs commands, not shell functions: through bash -c
run_step install 90 bash -c install_project
if ! grep -q $'^install\tok\t' "$STEPS"; then
    echo "gpu-check: error: the project or what it needs does not import here and nothing carried installs it ($(tail -n 1 "$LOGS/install.log")); see $LOGS/install.log" >&2
    exit 2
fi

if ((DRY_RUN)); then
    DEVICE=cpu
    MODEL=()  # the bundled demo model: seconds on a CPU
    TIMING=(--warmup 1 --min-iters 1 --iters 1 --budget-s 0)
    BATCHES=1
    KERNEL_ARGS=(--smoke --skip-model)
    echo "gpu-check: dry run on the CPU with the bundled demo model: the numbers mean nothing"
else
    DEVICE=cuda
    MODEL=(--preset rsd-x4)
    TIMING=(--warmup 2 --min-iters 5 --iters 50 --budget-s 0.5)
    BATCHES=1,4
    KERNEL_ARGS=(--skip-model)
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu-check: error: torch sees no CUDA GPU here (use --dry-run to check the script on a CPU)" >&2
        exit 2
    fi
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/nvidia-smi.txt" 2>&1
fi

# --- 2. GPU-only tests and the kernel tests ------------------------------------------------------
run_step tests 75 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests --junitxml "$OUT/tests-gpu.xml"
if ((DRY_RUN)); then
    skip_step kernel-tests "dry run (on a CPU they run under Triton's interpreter, minutes; the test suite covers that)"
else
    run_step kernel-tests 60 "$PY" -m pytest -q -p no:cacheprovider tests/kernels --junitxml "$OUT/tests-kernels.xml"
fi

# --- 3. the kernel benchmark --------------------------------------------------------------------
run_step kernels 60 "$PY" -m rsd_deploy.kernels.bench_window_attention "${KERNEL_ARGS[@]}" --out "$OUT/kernels"

# --- 4. / 5. rsd-bench at full size --------------------------------------------------------------
BENCH=("$PY" -m rsd_deploy.export.bench "${MODEL[@]}" --device "$DEVICE" --lr-size 64 "${TIMING[@]}" --seed 0)
run_step bench 150 "${BENCH[@]}" --batch "$BATCHES" --out "$OUT/bench" \
    --backends pytorch-fp32,pytorch-fp32-sdpa,pytorch-fp32-triton,pytorch-fp16-sdpa,pytorch-fp16-triton,pytorch-bf16,onnxruntime-cuda,upstream-rsd-1step,upstream-resshift
if ((DRY_RUN)); then
    skip_step compile "dry run (torch.compile takes minutes on a CPU; the bench step checks the same plumbing)"
else
    run_step compile 120 "${BENCH[@]}" --batch 1 --out "$OUT/compile" --backends pytorch-fp32,torch-compile
fi

# --- 6. TensorRT, when installed: fp16 graphs and engines for the bench's shapes, then their rows --
if ((DRY_RUN)); then
    skip_step tensorrt "dry run (TensorRT engines run on a GPU)"
elif ! "$PY" -c "import tensorrt" 2>/dev/null; then
    skip_step tensorrt "TensorRT 10/11 is not installed"
elif ((DEADLINE - $(date +%s) < 150)); then
    skip_step tensorrt "less than 150 s of the budget left for full-size engine builds"
else
    run_step tensorrt-export $((DEADLINE - $(date +%s) - 45)) "$PY" -m rsd_deploy.export.cli "${MODEL[@]}" --precision fp16 \
        --engine tensorrt --lr-size 64 --batch 1 --calib-count 2 --eval-count 1 --seed 0 --out "$OUT/tensorrt-export"
    if [[ -f $OUT/tensorrt-export/report.json && ! -e $OUT/tensorrt-export/INCOMPLETE ]]; then
        run_step tensorrt 45 "${BENCH[@]}" --batch 1 --out "$OUT/tensorrt" --onnx-dir "$OUT/tensorrt-export" \
            --backends pytorch-fp32,tensorrt-fp16
    else
        skip_step tensorrt "rsd-export did not finish (see logs/tensorrt-export.log)"
    fi
fi

# --- 7. one markdown and one JSON ---------------------------------------------------------------
"$PY" - "$OUT" "$DRY_RUN" "$(($(date +%s) - STARTED))" <<'EOF'
import json, os, sys, xml.etree.ElementTree as ET
from pathlib import Path

import torch

from rsd_deploy.environment import environment

out, dry_run, seconds = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
PAPER_MB = 539  # RSD paper: GPU memory of the one-step model for a 64x64 LR input
steps = [dict(zip(("step", "status", "seconds", "log"), line.split("\t"))) for line in (out / "steps.tsv").read_text().splitlines()]
for step in steps:
    step["seconds"] = int(step["seconds"])


def tests(path):
    if not path.is_file():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                        if case.find("failure") is not None or case.find("error") is not None]
    return counts


def bench(name):
    path = out / name / "bench.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    rows = [{"backend": r["backend"], "batch": r["batch"], "lr": r["lr_size"], "p50_ms": r["end_to_end"]["p50_ms"],
             "images_per_s": r["end_to_end"]["images_per_s"], **{f"{s}_ms": v["p50_ms"] for s, v in r["stages"].items()},
             "peak_gpu_mib": r["memory"].get("peak_gpu_allocated_mib", r["memory"].get("gpu_in_use_mib")),
             "psnr_db": r["quality"].get("psnr_db")} for r in report["results"]]
    not_run = [u for u in report["unavailable"] if not u["reason"].startswith("not selected")]
    return {"model": report["model"], "rows": rows, "not_run": not_run,
            "notes": {k: v["notes"] for k, v in report["backends"].items()}}


kernels = out / "kernels" / "bench_window_attention.json"
result = {
    "dry_run": dry_run,
    "seconds": seconds,
    "environment": environment("cuda" if torch.cuda.is_available() and not dry_run else "cpu"),
    "nvidia_smi": (out / "nvidia-smi.txt").read_text().strip() if (out / "nvidia-smi.txt").is_file() else None,
    "steps": steps,
    "tests": {"gpu": tests(out / "tests-gpu.xml"), "kernels": tests(out / "tests-kernels.xml")},
    "kernels": json.loads(kernels.read_text())["summary"] if kernels.is_file() else None,
    "bench": {name: bench(name) for name in ("bench", "compile", "tensorrt")},
}
memory = [r for r in (result["bench"]["bench"] or {}).get("rows", []) if r["batch"] == 1 and r["lr"] == 64 and r["peak_gpu_mib"]]
result["peak_memory_64x64"] = {"paper_mb": PAPER_MB, "rows": [{"backend": r["backend"], "peak_gpu_mib": r["peak_gpu_mib"],
                                                                "peak_gpu_mb": round(r["peak_gpu_mib"] * 2**20 / 1e6, 1)} for r in memory]}

lines = ["# rsd-deploy GPU check" + (" (DRY RUN on the CPU, demo model: the numbers mean nothing)" if dry_run else ""), "",
         f"Device: {result['environment']['device']}" + (f" ({result['nvidia_smi']})" if result["nvidia_smi"] else "")
         + f"; {', '.join(f'{k} {v}' for k, v in result['environment']['versions'].items())}. Total {seconds} s.", "",
         "| step | status | seconds | log |", "|---|---|---|---|"]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {os.path.relpath(s['log'], out)} |" for s in steps]
for name, counts in result["tests"].items():
    if counts:
        lines += ["", f"Tests ({name}): {counts['tests']} run, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
                  + (": " + ", ".join(counts["failed"]) if counts["failed"] else ".")]
if result["kernels"]:
    lines += ["", "Kernel benchmark summary: `" + json.dumps(result["kernels"]) + "`"]
for name, report in result["bench"].items():
    if not report:
        continue
    stages = ("encoder", "generator", "decoder")
    lines += ["", f"## rsd-bench: {name} ({report['model']})", "",
              "| backend | batch | LR | end-to-end p50 ms | img/s | " + " | ".join(f"{s} p50 ms" for s in stages) + " | peak GPU MiB | PSNR dB |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        cells = [r["backend"], r["batch"], r["lr"], f"{r['p50_ms']:.2f}", f"{r['images_per_s']:.2f}",
                 *(f"{r[f'{s}_ms']:.2f}" if f"{s}_ms" in r else "-" for s in stages),
                 "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}", "-" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Not run: " + ("; ".join(f"`{u['backend']}`: {u['reason']}" for u in report["not_run"]) or "none")]
    lines += [f"- `{k}`: {v}" for k, v in report["notes"].items()]
if memory:
    lines += ["", f"Peak GPU memory at 64x64 LR, batch 1 (the RSD paper: {PAPER_MB} MB): "
              + ", ".join(f"{m['backend']} {m['peak_gpu_mb']:.0f} MB" for m in result["peak_memory_64x64"]["rows"]) + "."]
for name, text in (("gpu-check.json", json.dumps(result, indent=1) + "\n"), ("gpu-check.md", "\n".join(lines) + "\n")):
    partial = out / f".{name}.partial"
    partial.write_text(text)
    os.replace(partial, out / name)
print(f"gpu-check: wrote {out / 'gpu-check.md'} and {out / 'gpu-check.json'}")
EOF
report_rc=$?
if ((report_rc)); then
    echo "gpu-check: error: the report was not written (exit $report_rc)" >&2
    exit 1
fi
if grep -qv $'\tok\t\|\tskipped' "$STEPS"; then
    exit 1
fi
exit 0
