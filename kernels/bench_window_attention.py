"""Benchmark: fused Triton window attention vs the eager reference and SDPA, then the whole UNet
and the one-step pipeline with and without the kernels.

    python -m rsd_deploy.kernels.bench_window_attention            # on a CUDA GPU (not yet run on one)
    python -m rsd_deploy.kernels.bench_window_attention --out DIR  # JSON (+ PNG) into DIR

Per op (this model's attention: 6 heads x 32, windows of 8x8), for each map size (64/32/16/8 tokens
per side, the UNet levels at a 64x64 latent, and 128 for a 128x128 latent), batch 1 and 16, shift 0 / 4:
median time of the eager reference, SDPA with an additive float mask (the model's ``sdpa``
backend, the strongest library baseline) and the Triton kernel (default launch, and with two neighbouring windows per program
as a tuning comparison), measured side by side in one run (:class:`rsd_deploy.timing.Timer`: CUDA
events, 10 warm-up calls, then the median over the calls made within the time budget, L2 flushed
before each call, as ``triton.testing.do_bench``; ``--graphs`` adds CUDA-graph timings, which remove
launch overhead at batch 1 and keep L2 warm). Achieved bandwidth counts the bytes the op must move (qkv in, out
back, the bias once) and is reported against this device's measured copy bandwidth and against
a 3.0 TB/s H100 figure (the project's kernel targets). Every timed configuration is first checked against
the reference (relative error column).

Then the official x4 UNet (RSD student config) forward and the one-step pipeline (encode ->
UNet -> decode, 64x64 LR tiles) at batch 1 and 16, with the ``reference``, ``sdpa`` and
``triton`` backends. Prints markdown tables, writes JSON and, when matplotlib is there, a PNG.

``--smoke`` runs a tiny version on the CPU (the kernel under TRITON_INTERPRET=1, wall-clock
timing): it checks that the script works, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

H100_HBM_TBPS = 3.0  # the measured H100 HBM bandwidth the project's kernel targets quote
TARGETS = {"vs_eager": 3.0, "vs_sdpa": 1.5, "roofline_b16": 0.5}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--grids", type=int, nargs="+", default=[64, 32, 16, 8, 128], help="map sides (tokens); 64/32/16/8 are the levels of a 64x64 latent")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--graphs", action="store_true", help="also time each op inside a CUDA graph")
    p.add_argument("--num-warps", type=int, default=None, help="override the kernel's warps per program")
    p.add_argument("--skip-model", action="store_true", help="per-op table only")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="folder for JSON / PNG")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (interpreter) to test the script")
    return p.parse_args(argv)


GRAPH_CALLS = 10  # calls captured in one CUDA graph for the --graphs timings


def median_ms(device, fn, graph: bool = False, budget_s: float = 0.2) -> float:
    """Median milliseconds of a call, by :mod:`rsd_deploy.timing`: on a GPU, CUDA events after 10
    warm-up calls, as many calls as fit in ``budget_s`` (at least 10), L2 flushed before each;
    ``graph=True`` times replays of :data:`GRAPH_CALLS` calls captured in one CUDA graph (no launch
    overhead, L2 kept warm). In a smoke run (CPU): one warm-up call, then three wall-clock calls."""
    from rsd_deploy import timing

    if device.type == "cpu":
        return timing.Timer(device, warmup=1, min_iters=3, max_iters=3, budget_s=0.0).measure(fn)[0].p50_ms
    if graph:
        replay = timing.cuda_graph(fn, GRAPH_CALLS)
        timer = timing.Timer(device, warmup=3, min_iters=10, max_iters=100_000, budget_s=min(budget_s, 0.1))
        return timer.measure(replay)[0].p50_ms / GRAPH_CALLS
    timer = timing.Timer(device, warmup=10, min_iters=10, max_iters=100_000, budget_s=budget_s, flush_l2=True)
    return timer.measure(fn)[0].p50_ms


def copy_bandwidth_tbps(device) -> float | None:
    """Device-to-device copy of 1 GiB: reads + writes per second, this GPU's practical roofline."""
    import torch

    if device.type != "cuda":
        return None
    src = torch.empty(2**29, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(device, lambda: dst.copy_(src), budget_s=0.5)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e12


def bench_ops(args, device, roofline_tbps):
    import torch

    from rsd_deploy.kernels.window_attention import window_attention
    from rsd_deploy.models.attention import reference_window_attention, sdpa_window_attention

    dtype = getattr(torch, args.dtype)
    heads, head_dim, window = 6, 32, 8
    c = heads * head_dim
    rows = []
    for grid in args.grids:
        for batch in args.batches:
            # at a 64x64 latent the 8x8 level is a single window, never shifted (see swin.py)
            for shift in ((0,) if grid <= window else (0, 4)):
                gen = torch.Generator(device=device).manual_seed(grid * 1000 + batch * 10 + shift)
                qkv = torch.randn(batch, 3 * c, grid, grid, device=device, dtype=dtype, generator=gen)
                bias = torch.randn(heads, window**2, window**2, device=device, dtype=dtype, generator=gen)
                kw = dict(num_heads=heads, window=window, shift=shift, scale=head_dim**-0.5)
                fns = {
                    "eager": lambda: reference_window_attention(qkv, bias, **kw),
                    "sdpa": lambda: sdpa_window_attention(qkv, bias, **kw),
                    "triton": lambda: window_attention(qkv, bias, num_warps=args.num_warps, **kw),
                }
                if (grid // window) % 2 == 0:  # tuning knob: two neighbouring windows per program
                    fns["triton2w"] = lambda: window_attention(
                        qkv, bias, num_warps=args.num_warps, windows_per_program=2, **kw
                    )
                ref = reference_window_attention(qkv.double(), bias.double(), **kw)
                errs = {name: ((fn().double() - ref).norm() / ref.norm()).item() for name, fn in fns.items()}
                err = max(e for name, e in errs.items() if name.startswith("triton"))
                row = {"grid": grid, "batch": batch, "shift": shift, "rel_err": err}
                for name, fn in fns.items():
                    row[f"{name}_us"] = median_ms(device, fn) * 1e3
                    if args.graphs and device.type == "cuda":
                        row[f"{name}_graph_us"] = median_ms(device, fn, graph=True) * 1e3
                moved = (4 * c * batch * grid * grid + bias.numel()) * qkv.element_size()
                row["bytes"] = moved
                row["triton_tbps"] = moved / (row["triton_us"] * 1e-6) / 1e12
                row["vs_eager"] = row["eager_us"] / row["triton_us"]
                row["vs_sdpa"] = row["sdpa_us"] / row["triton_us"]
                if roofline_tbps:
                    row["roofline_frac"] = row["triton_tbps"] / roofline_tbps
                row["h100_frac"] = row["triton_tbps"] / H100_HBM_TBPS
                rows.append(row)
                print(_op_line(row), flush=True)
    return rows


def _op_line(r):
    frac = f"{100 * r['roofline_frac']:.0f}%" if "roofline_frac" in r else "n/a"
    two = f"{r['triton2w_us']:.1f}" if "triton2w_us" in r else "-"
    graphs = ""
    if "triton_graph_us" in r:
        graphs = f" | {r['eager_graph_us']:.1f} | {r['sdpa_graph_us']:.1f} | {r['triton_graph_us']:.1f}"
    return (
        f"| {r['grid']}x{r['grid']} | {r['batch']} | {r['shift']} | {r['eager_us']:.1f} | {r['sdpa_us']:.1f} | "
        f"{r['triton_us']:.1f} | {two} | {r['vs_eager']:.2f}x | {r['vs_sdpa']:.2f}x | {r['triton_tbps']:.2f} | {frac} | "
        f"{100 * r['h100_frac']:.0f}% | {r['rel_err']:.1e}{graphs} |"
    )


def _op_header(graphs: bool) -> str:
    cols = ["map", "batch", "shift", "eager us", "sdpa us", "triton us", "triton 2w us", "vs eager", "vs sdpa", "triton TB/s",
            "of copy BW", "of 3.0 TB/s", "rel err"]
    if graphs:
        cols += ["eager graph us", "sdpa graph us", "triton graph us"]
    return "| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|"


def bench_models(args, device):
    import torch

    from rsd_deploy.checkpoints import build_pipeline

    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    pipe = build_pipeline("tiny-rsd" if args.smoke else "rsd-x4", seed=0).to(device=device, dtype=dtype)
    unet = pipe.unet
    size = 32 if args.smoke else 64
    rows = []
    batches = [1] if args.smoke else args.batches
    for batch in batches:
        gen = torch.Generator(device=device).manual_seed(batch)
        lq = torch.rand(batch, 3, size, size, device=device, generator=gen).mul(2).sub(1).to(dtype)
        x = torch.randn(batch, 3, size, size, device=device, generator=gen).to(dtype)
        noise_map = torch.randn(batch, 1, size, size, device=device, generator=gen).to(dtype)
        t = torch.full((batch,), 14, device=device, dtype=torch.int64)

        def noise(stream, channels=3):
            return torch.randn(batch, channels, size, size, device=device, generator=gen).to(dtype)

        for backend in ("reference", "sdpa", "triton"):
            unet.set_attention_backend(backend)
            with torch.no_grad():
                unet_ms = median_ms(device, lambda: unet(x, t, lq=lq, noise=noise_map), budget_s=1.0)
                pipe_ms = median_ms(device, lambda: pipe.decode(pipe.generate(pipe.encode(lq), lq, noise, 1)), budget_s=1.0)
            rows.append({"batch": batch, "backend": backend, "unet_ms": unet_ms, "pipeline_ms": pipe_ms})
            print(f"| {batch} | {backend} | {unet_ms:.2f} | {pipe_ms:.2f} |", flush=True)
        unet.set_attention_backend("reference")
    for r in rows:
        base = next(b for b in rows if b["batch"] == r["batch"] and b["backend"] == "reference")
        r["unet_speedup"] = base["unet_ms"] / r["unet_ms"]
        r["pipeline_speedup"] = base["pipeline_ms"] / r["pipeline_ms"]
    return rows


def summarize(op_rows):
    """Worst case over the configurations each target is about: all of them for the speed-ups,
    the 64x64 map at batch 16 (the model's largest level) for bandwidth."""
    out = {
        "min_vs_eager": min(r["vs_eager"] for r in op_rows),
        "min_vs_sdpa": min(r["vs_sdpa"] for r in op_rows),
        "max_rel_err": max(r["rel_err"] for r in op_rows),
    }
    big = [r for r in op_rows if r["batch"] == 16 and r["grid"] == 64]
    if big:
        out["h100_hbm_frac_b16_64x64"] = min(r["h100_frac"] for r in big)
        if all("roofline_frac" in r for r in big):
            out["copy_bw_frac_b16_64x64"] = min(r["roofline_frac"] for r in big)
    out["targets"] = TARGETS
    return out


def plot(op_rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [f"{r['grid']}/b{r['batch']}/s{r['shift']}" for r in op_rows]
    xs = range(len(op_rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(op_rows)), 3.5))
    ax.bar([x - 0.2 for x in xs], [r["vs_eager"] for r in op_rows], width=0.4, label="vs eager")
    ax.bar([x + 0.2 for x in xs], [r["vs_sdpa"] for r in op_rows], width=0.4, label="vs SDPA")
    ax.axhline(TARGETS["vs_eager"], color="C0", ls="--", lw=0.8)
    ax.axhline(TARGETS["vs_sdpa"], color="C1", ls="--", lw=0.8)
    ax.set_xticks(list(xs), labels, rotation=60, fontsize=7)
    ax.set_ylabel("speed-up of the Triton kernel")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = _parse(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    if args.smoke:
        device = torch.device("cpu")
        args.grids = [g for g in args.grids if g <= 16] or [8]
        args.batches = [1]
        args.dtype = "float32" if args.dtype == "bfloat16" else args.dtype
    elif not torch.cuda.is_available():
        print("No CUDA GPU here: nothing to measure. Run this on a GPU machine (or --smoke to test the script).")
        return 2
    else:
        device = torch.device("cuda")
    from rsd_deploy.kernels.window_attention import INTERPRET

    if INTERPRET and device.type == "cuda":
        print("TRITON_INTERPRET=1 is set: unset it to time the compiled kernel.")
        return 2
    from rsd_deploy.environment import environment

    env = {**environment(device), "smoke_run": args.smoke}
    print("## Window-attention kernels\n")
    gpu = ", ".join(f"{k} {v}" for k, v in env.get("gpu", {}).items())
    print(f"Device: {env['device']}{' (smoke run: the numbers mean nothing)' if args.smoke else ''}; {gpu + '; ' if gpu else ''}"
          + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "\n")
    roofline = copy_bandwidth_tbps(device)
    if roofline:
        print(f"Measured device-to-device copy bandwidth: {roofline:.2f} TB/s\n")
    print(f"Attention op, {args.dtype}, 6 heads x 32, 8x8 windows (times: median microseconds):\n")
    print(_op_header(args.graphs and device.type == "cuda"))
    op_rows = bench_ops(args, device, roofline)
    summary = summarize(op_rows)
    print("\nSummary vs targets (>= 3x eager, >= 1.5x SDPA, >= 50% of HBM at batch 16):")
    print(json.dumps(summary, indent=1))
    model_rows = []
    if not args.skip_model:
        print(f"\nWhole UNet (RSD x4 config) and one-step pipeline (encode -> UNet -> decode), {args.dtype}, LR/latent 64x64 (median ms):\n")
        print("| batch | backend | UNet ms | pipeline ms |\n|---|---|---|---|")
        model_rows = bench_models(args, device)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"environment": env, "copy_tbps": roofline, "dtype": args.dtype, "ops": op_rows, "summary": summary, "models": model_rows}
    json_path = args.out / "bench_window_attention.json"
    json_path.write_text(json.dumps(result, indent=1))
    png = plot(op_rows, args.out / "bench_window_attention.png")
    print(f"\nwrote {json_path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
