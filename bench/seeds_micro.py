"""K seeds on one GPU, three ways (issue 28): which design trains K small nets fastest?

Usage: python bench/seeds_micro.py [--seeds 5] [--json FILE]

1. One budget-net convolution (3x3, batch 512, C -> C channels, 32x32 and 16x16 maps, bf16, forward and
   backward), K times: as K separate convolutions one after another, as one grouped convolution
   (groups=K over K*C channels: what vmap and horizontal fusion lower to), and as K convolutions on K
   CUDA streams. Each variant is captured as one CUDA graph (as training steps are), so the figures are
   GPU time, not launch overhead.
2. Whole training steps of the studies' nets (TrainStep, as train.py builds it, captured): one seed's
   step K times in a row (what a study pays today per step of K runs, GPU time-sliced or not), the K
   seeds stacked as one vmapped step (design (a), what `--seeds-together on` runs), and K captured steps
   replayed on K streams, each graph in its own memory pool (design (b)).

Random data: speed does not depend on the pixels. Prints a table per part as it goes; not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# bench/ holds a profile.py that would shadow the standard library's (cProfile imports it).
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cifarlab.config import ModelConfig, OptimConfig, RegConfig, TrainConfig  # noqa: E402
from cifarlab.data import Split  # noqa: E402
from cifarlab.models import model_from_config  # noqa: E402
from cifarlab.optim import create_optimizer, penalty_terms  # noqa: E402
from cifarlab.stack import Stack  # noqa: E402
from cifarlab.step import StepPlan, TrainStep  # noqa: E402
from cifarlab.train import autocast_for, init_from_data, seed_everything  # noqa: E402


# --dry: every code path on the CPU with tiny shapes and no graphs or streams, to check the script
# before spending GPU time on it (its figures mean nothing).
DRY = False
BATCH = 512


def _sync() -> None:
    if not DRY:
        torch.cuda.synchronize()


class _NoStream:
    def wait_stream(self, other) -> None:
        pass


def _stream():
    return _NoStream() if DRY else torch.cuda.Stream()


def _on(stream):
    from contextlib import nullcontext

    return nullcontext() if DRY else torch.cuda.stream(stream)


def _here():
    return _NoStream() if DRY else torch.cuda.current_stream()


def _graph_ms(fn, reps: int = 50) -> float:
    """Capture `fn` once as a CUDA graph; ms per replay (median of 5 timings of `reps` replays)."""
    if DRY:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            g.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000 / reps)
    return sorted(times)[2]


def conv_part(k: int) -> list[dict]:
    out = []
    print(f"\n## One 3x3 convolution, batch 512, forward + backward, bf16, K={k} (ms of GPU time)", flush=True)
    print(f"{'C':>4} {'map':>5} {'one':>8} {'K separate':>11} {'grouped':>9} {'K streams':>10} {'best':>10}")
    for hw in (32, 16):
        for c in (16, 32, 64):
            dev = "cpu" if DRY else "cuda"
            xs = [torch.randn(BATCH, c, hw, hw, device=dev, dtype=torch.bfloat16, requires_grad=True)
                  for _ in range(k)]
            ws = [torch.randn(c, c, 3, 3, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(k)]
            xg = torch.randn(BATCH, k * c, hw, hw, device=dev, dtype=torch.bfloat16, requires_grad=True)
            wg = torch.randn(k * c, c, 3, 3, device=dev, dtype=torch.bfloat16, requires_grad=True)
            streams = [_stream() for _ in range(k)]

            def one(i=0):
                F.conv2d(xs[i], ws[i], padding=1).sum().backward()

            def separate():
                for i in range(k):
                    one(i)

            def grouped():
                F.conv2d(xg, wg, padding=1, groups=k).sum().backward()

            def on_streams():
                here = _here()
                for i, s in enumerate(streams):
                    s.wait_stream(here)
                    with _on(s):
                        one(i)
                for s in streams:
                    here.wait_stream(s)

            row = {"channels": c, "map": hw}
            for name, fn in (("one", one), ("separate", separate), ("grouped", grouped), ("streams", on_streams)):
                try:
                    row[name] = _graph_ms(fn)
                except Exception as exc:  # noqa: BLE001 - a variant that cannot be captured is reported, not fatal
                    row[name] = None
                    print(f"   {name}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}", flush=True)
            best = min(("separate", "grouped", "streams"), key=lambda n: row[n] if row[n] is not None else 1e9)
            f = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
            print(f"{c:>4} {hw:>5} {f(row['one']):>8} {f(row['separate']):>11} {f(row['grouped']):>9} "
                  f"{f(row['streams']):>10} {best:>10}", flush=True)
            out.append(row)
    return out


# The studies' recipes: budget study (BN with whitening at batch 512, GN's at 256) and the normalisation
# study's s8-net at 256.
NETS = {
    "budget-bn": ("budget-net", {"norm": "bn", "whiten": True}, 512),
    "budget-gn": ("budget-net", {"norm": "gn", "dirac": True, "pool": "late"}, 256),
    "s8-bn": ("s8-net", {"norm": "bn", "dropout": 0.0}, 256),
    "s8-gn": ("s8-net", {"norm": "gn", "dropout": 0.0}, 256),
    "s8-ln": ("s8-net", {"norm": "ln", "dropout": 0.0}, 256),
}


def _step(models: list, bs: int, stacked: bool):
    """A captured TrainStep over one model, or over the stack of `models`, and its static batch."""
    cfg = TrainConfig(batch_size=bs, optim=OptimConfig(lr=0.1), reg=RegConfig(label_smoothing=0.1))
    device = torch.device("cpu" if DRY else "cuda")
    autocast = autocast_for(device, "auto")
    if stacked:
        stack = Stack(models)
        core, net = stack.module, stack.net
    else:
        core = net = models[0]
    opt = create_optimizer(core, cfg.optim, device)
    plan = StepPlan(opt, cfg.optim, 20, 100)
    step = TrainStep(core, net, opt, None, penalty_terms(core, cfg.reg), 0.1, autocast, 100, device,
                     seeds=len(models) if stacked else 0)
    lead = (len(models),) if stacked else ()
    x = torch.randn(*lead, bs, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (*lead, bs), device=device)
    if not stacked:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # cuDNN's algorithm search, before the capture
        step(x, y)
    if not DRY:
        step.capture(x, y, plan.rows(1))
    step.start_epoch(plan.rows(1))
    return step, x, y


def _models(name: str, k: int) -> tuple[list, int]:
    model_name, options, bs = NETS[name]
    models = []
    for seed in range(k):
        seed_everything(seed)
        dev = "cpu" if DRY else "cuda"
        m = model_from_config(ModelConfig(name=model_name, options=options)).to(dev)
        if not DRY:
            m = m.to(memory_format=torch.channels_last)  # as train.py runs one seed alone on CUDA
        init_from_data(m, Split(torch.randn(512, 3, 32, 32, device=dev), torch.zeros(512, dtype=torch.long)))
        models.append(m)
    return models, (8 if DRY else bs)


def _time(fn, steps: int = 60) -> float:
    steps = 2 if DRY else steps
    for _ in range(5):
        fn(0)
    _sync()
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i % 90)
    _sync()
    return (time.perf_counter() - t0) * 1000 / steps


def step_part(k: int) -> list[dict]:
    out = []
    print(f"\n## Whole captured training steps, K={k} seeds (ms per step of all K; speed-up against K x one)",
          flush=True)
    print(f"{'net':<10} {'batch':>5} {'one seed':>9} {'K x one':>8} {'(a) stacked':>12} {'(b) K streams':>14} "
          f"{'a speed-up':>11} {'b speed-up':>11}")
    for name in NETS:
        row = {"net": name}
        models, bs = _models(name, k)
        row["batch"] = bs

        def one_seed():
            single, x1, y1 = _step([models[0]], bs, stacked=False)
            return _time(lambda i: single.run(x1, y1, i))

        def stacked():
            step, xk, yk = _step(_models(name, k)[0], bs, stacked=True)
            return _time(lambda i: step.run(xk, yk, i))

        def on_streams():
            # (b): K independent captured steps, each with its own graph and pool, replayed on K streams.
            steps = [_step([m], bs, stacked=False) for m in _models(name, k)[0]]
            streams = [_stream() for _ in range(k)]

            def replay_all(i):
                here = _here()
                for (s, x, y), stream in zip(steps, streams):
                    stream.wait_stream(here)
                    with _on(stream):
                        s.run(x, y, i)
                for stream in streams:
                    here.wait_stream(stream)

            return _time(replay_all)

        for key, fn in (("one", one_seed), ("stacked", stacked), ("streams", on_streams)):
            try:  # each design on its own: one that fails (vmap refusing a layer) leaves the others measured
                row[key] = fn()
            except Exception as exc:  # noqa: BLE001
                print(f"{name} {key}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}", flush=True)
        if "one" in row:
            seq = k * row["one"]
            f = lambda key: f"{row[key]:.3f}" if key in row else "-"  # noqa: E731
            x = lambda key: f"{seq / row[key]:.2f}x" if key in row else "-"  # noqa: E731
            print(f"{name:<10} {row['batch']:>5} {row['one']:>9.3f} {seq:>8.3f} {f('stacked'):>12} "
                  f"{f('streams'):>14} {x('stacked'):>11} {x('streams'):>11}", flush=True)
        out.append(row)
        if not DRY:
            torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--part", choices=("conv", "step", "both"), default="both")
    ap.add_argument("--dry", action="store_true", help="check the script on the CPU (tiny, meaningless figures)")
    args = ap.parse_args()
    global DRY, BATCH
    DRY = args.dry
    if DRY:
        BATCH = 4
    elif not torch.cuda.is_available():
        sys.exit("bench/seeds_micro.py: needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    device = "cpu (dry run)" if DRY else torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}", flush=True)
    result = {"device": device, "torch": torch.__version__, "seeds": args.seeds}
    if args.part in ("conv", "both"):
        result["conv"] = conv_part(args.seeds)
    if args.part in ("step", "both"):
        result["steps"] = step_part(args.seeds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
