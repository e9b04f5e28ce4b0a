"""Size, FLOPs, throughput and memory of the nowcasting networks, per preset.

    python bench/models.py --presets tau-tiny stlight-tiny --device cpu \
        --out bench/results/models-cpu.md

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on one sample of the
  preset's geometry (multiply and add counted apart, so GFLOPs = 2 × GMACs;
  papers quoting fvcore/thop "FLOPs" quote GMACs), traced on the meta device.
  Depthwise convolutions are included; the column "no dw" leaves them out, as
  the STLight paper's counter did.
* Saved activations: bytes autograd keeps for backward on one sample in fp32
  (meta-device trace, a device-independent memory estimate).
* Throughput: samples/s of an eval forward and of a training step (forward,
  paper loss, backward, Adam) at ``--batch`` on random frames. Each preset runs
  in a fresh process. On CUDA the variants are eager fp32, bf16 autocast +
  channels_last, and that plus ``torch.compile``; ratios are against eager
  fp32 of the same run. Peak memory is ``torch.cuda.max_memory_allocated`` on
  CUDA and, on CPU, the growth of the process's peak RSS (``ru_maxrss``) over
  the training steps.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from nowcast.models import PRESETS, build, forward_flops, macs, paper_loss, parameter_count

VARIANTS = {"eager": "eager fp32", "amp": "bf16 autocast + channels_last",
            "compile": "bf16 + channels_last + torch.compile"}


def _geometry(name: str) -> tuple[int, int, int, int]:
    p = PRESETS[name]
    return p.kwargs["t_in"], p.kwargs["in_channels"], p.height, p.width


def saved_activation_bytes(name: str) -> int:
    """Bytes saved for backward by a training forward of one fp32 sample (each tensor once)."""
    t_in, c, h, w = _geometry(name)
    saved: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[id(t)] = t
        return t

    with torch.device("meta"):
        model = build(name).train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.empty(1, t_in, c, h, w))
    return sum(t.numel() * t.element_size() for t in saved.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


MIN_SECONDS, MAX_SECONDS, MIN_STEPS = 2.0, 10.0, 3


def _rate(fn, batch: int, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Samples per wall-clock second and process CPU seconds per sample, after ``warmup`` steps.

    Times at least ``steps`` steps and :data:`MIN_SECONDS`, or stops at
    :data:`MAX_SECONDS` once :data:`MIN_STEPS` are done (slow presets on a CPU).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    start, cpu, done = time.perf_counter(), _cpu_seconds(), 0
    while True:
        fn()
        done += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if (done >= steps and elapsed >= MIN_SECONDS) or (done >= MIN_STEPS and elapsed >= MAX_SECONDS):
            break
    return batch * done / elapsed, (_cpu_seconds() - cpu) / (batch * done)


def measure(name: str, variant: str, device_name: str, batch: int, steps: int,
            warmup: int, threads: int | None) -> dict:
    """Throughput and peak memory of one preset and variant (runs in a worker process)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    t_in, c, h, w = _geometry(name)
    model = build(name).to(device)
    x = torch.rand(batch, t_in, c, h, w, device=device)
    y = torch.rand(batch, model.t_out, c, h, w, device=device)
    amp = variant in ("amp", "compile")
    if amp:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if variant == "compile" else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    loss_fn = paper_loss(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)

    def forward() -> None:
        with torch.no_grad(), autocast:
            run(x)

    def train_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            pred = run(x, target=y, sampling_ratio=0.5)
        loss_fn(pred, y).backward()
        optimiser.step()

    model.eval()
    fwd, _ = _rate(forward, batch, steps, warmup, device)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train, train_cpu = _rate(train_step, batch, steps, warmup, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) * 1024
    return {"forward": fwd, "train": train, "peak_bytes": peak,
            "train_cpu": train_cpu if device.type == "cpu" else None}


def machine(device: str, threads: int | None = None) -> str:
    """One line naming the hardware and software of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = threads or torch.get_num_threads()
    text = (f"{cpu}, {os.cpu_count()} logical CPUs, {threads} torch thread(s) per run, "
            f"torch {torch.__version__}, {platform.system()}")
    if device.startswith("cuda"):
        text = f"{torch.cuda.get_device_name(torch.device(device))}; host " + text
    return text


def _fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def layer_macs(name: str) -> float:
    """Forward MACs of one sample from the weight and output shapes of every convolution and linear
    map (``torch.nn.functional`` calls, so modules and functional convs alike), as thop and fvcore
    count them (depthwise included, element-wise operations not): a count independent of
    ``FlopCounterMode``'s operator tracing (meta device)."""
    t_in, c, h, w = _geometry(name)
    total = 0
    originals = {fn: getattr(F, fn) for fn in ("conv2d", "conv_transpose2d", "linear")}

    def counted(fn: str):
        def call(x, weight, *args, **kwargs):
            nonlocal total
            out = originals[fn](x, weight, *args, **kwargs)
            if fn == "linear":
                total += out.numel() * weight.shape[1]
            else:  # each output (input, transposed) cell of a channel multiplies one slice of weights
                total += (x if fn == "conv_transpose2d" else out).numel() * weight[0].numel()
            return out
        return call

    try:
        for fn in originals:
            setattr(F, fn, counted(fn))
        with torch.device("meta"):
            build(name).eval()(torch.empty(1, t_in, c, h, w))
    finally:
        for fn, original in originals.items():
            setattr(F, fn, original)
    return float(total)


def static_row(name: str) -> dict:
    """Parameters, FLOPs, MACs and saved activations of one preset (meta device, no compute)."""
    flops, dw = forward_flops(name)
    with torch.device("meta"):
        params = parameter_count(build(name))
    published = PRESETS[name].published_macs
    return {"preset": name, "params": params, "published": PRESETS[name].published_parameters,
            "gflops": flops / 1e9, "gflops_no_dw": (flops - dw) / 1e9, "gmacs_paper": macs(name) / 1e9,
            "gmacs_layers": layer_macs(name) / 1e9, "gmacs_published": published / 1e9 if published else None,
            "act_gib": saved_activation_bytes(name) / 2**30}


def time_presets(presets: list[str], device: str, variants: list[str], batch: int, steps: int,
                 warmup: int, threads: int | None) -> list[dict]:
    """One timing row per preset and variant, each measured in a fresh process."""
    rows = []
    ctx = mp.get_context("spawn")
    for name in presets:
        base = None
        for variant in variants:
            with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
                r = pool.submit(measure, name, variant, device, batch, steps, warmup,
                                threads).result()
            base = r if variant == "eager" else base
            r.update(preset=name, variant=variant,
                     fwd_ratio=r["forward"] / base["forward"] if base else None,
                     train_ratio=r["train"] / base["train"] if base else None)
            rows.append(r)
            print(f"{name:20s} {VARIANTS[variant]:38s} fwd {r['forward']:8.2f}/s  "
                  f"train {r['train']:8.2f}/s  peak {r['peak_bytes'] / 2**20:8.0f} MiB", flush=True)
    return rows


def to_markdown(static: list[dict], timing: list[dict], command: str, device: str, batch: int,
                steps: int, memory_kind: str, load: str, threads: int | None = None) -> str:
    lines = [
        "# Nowcasting networks: size, FLOPs and throughput", "",
        f"Machine: {machine(device, threads)}. {load}", "",
        f"Command: `{command}`", "",
        "GFLOPs per sample and forward pass (FlopCounterMode; multiply and add counted apart, "
        "so papers' fvcore/thop \"FLOPs\" are half of these); \"no dw\" leaves depthwise "
        "convolutions out like the STLight paper's counter. GMACs: as the paper counts them (half the "
        "GFLOPs, without depthwise convolutions for STLight); \"layers\": an independent count from each "
        "convolution's and linear layer's output shape, as thop/fvcore count (depthwise included, "
        "element-wise operations not); \"published\": the paper's figure. Activations: bytes saved for "
        "backward per fp32 training sample.", "",
        "| preset | params | published | GFLOPs | GFLOPs no dw | GMACs | GMACs layers | GMACs published "
        "| activations GiB/sample |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in static:
        pub = f"{r['published']:,}" if r["published"] else "–"
        lines.append(f"| {r['preset']} | {r['params']:,} | {pub} | {r['gflops']:.2f} | "
                     f"{r['gflops_no_dw']:.2f} | {r['gmacs_paper']:.2f} | {r['gmacs_layers']:.2f} | "
                     f"{_fmt(r['gmacs_published'], 2)} | {r['act_gib']:.2f} |")
    lines += [
        "", f"Throughput at batch {batch} (at least {steps} timed steps and 2 s after warm-up, or 10 s "
        "once 3 steps are done), samples per "
        "wall-clock second; \"train CPU-s/sample\" is the process CPU time per trained "
        f"sample (robust to other load on a shared machine); peak memory: {memory_kind}.", "",
        "| preset | variant | forward/s | train/s | train CPU-s/sample | fwd × eager "
        "| train × eager | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in timing:
        lines.append(
            f"| {r['preset']} | {VARIANTS[r['variant']]} | {r['forward']:.2f} | "
            f"{r['train']:.2f} | {_fmt(r['train_cpu'], 3)} | {_fmt(r['fwd_ratio'], 2)} | "
            f"{_fmt(r['train_ratio'], 2)} | {r['peak_bytes'] / 2**20:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tau-tiny", "stlight-tiny", "mslstm-tiny"],
                        choices=sorted(PRESETS), metavar="PRESET")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: eager on CPU, all three on CUDA")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps at least (stops at 10 s after 3)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads in the workers")
    parser.add_argument("--all-sizes", action="store_true",
                        help="size and FLOPs table for every preset, not only the timed ones")
    parser.add_argument("--out", type=Path, help="markdown file to write")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    variants = args.variants or (list(VARIANTS) if cuda else ["eager"])
    if "eager" in variants:
        variants = ["eager"] + [v for v in variants if v != "eager"]
    static = [static_row(n) for n in (sorted(PRESETS) if args.all_sizes else args.presets)]
    load_before = _load()
    timing = time_presets(args.presets, args.device, variants, args.batch, args.steps,
                          args.warmup, args.threads)
    memory_kind = ("torch.cuda.max_memory_allocated during the training steps" if cuda else
                   "growth of peak RSS (resource ru_maxrss) during the training steps, "
                   "fresh process per preset")
    load = f"Load average (1 min) {load_before} before and {_load()} after timing."
    command = "python bench/models.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = to_markdown(static, timing, command, args.device, args.batch, args.steps,
                       memory_kind, load, args.threads)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
