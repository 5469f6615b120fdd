"""How the NLG terms' cost grows with trained positions M, vocabulary V and hidden size d.

Synthetic hidden states ``H`` (M x d) and a random frozen output layer ``W`` (V x d). Each term is timed
for forward + backward (process CPU seconds, one intra-op thread by default) and its transient peak
memory taken with :func:`balora.profiling.measure`:

* ``fused_ce``      the chunked fused cross-entropy alone (what any method needs; baseline of the next two)
* ``kl``            the increment of adding the consistency KL (teacher logits per chunk) to the fused pass
* ``entropy``       the increment of adding the entropy term to the fused pass
* ``svd_small``     the SVD term on the small ``H R^T`` factor (randomised, q = k + 5, niter 2)
* ``svd_rand_full`` the same estimator on the full ``M x V`` logits (logits given; their matmul not counted)
* ``svd_exact_full`` exact singular values of the full logits
* ``qr_once``       the thin QR of ``W`` behind ``svd_small``, done once per training run

A size whose predicted time exceeds ``--max-op-seconds`` or whose tensors would not fit in half the
available memory is skipped and reported as "extrapolated" from the op's measured seconds per FLOP
(every op here is a fixed number of dense passes, so time ~ c * FLOPs holds closely). The plot draws
measured points filled and extrapolated ones hollow.

    python benchmarks/scaling.py --out docs/scaling.png --json docs/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from balora import regularizers as R
from balora.config import BALoRAConfig
from balora.fused import OutputFactor, fused_lm_terms
from balora.profiling import measure

K, Q, NITER = 10, 15, 2
OPS = ("fused_ce", "kl", "entropy", "svd_small", "svd_rand_full", "svd_exact_full", "qr_once")


def flops(op: str, m: int, v: int, d: int) -> float:
    """Dense FLOPs of one forward + backward of ``op`` (the cost model used to extrapolate)."""
    return {
        "fused_ce": 4.0 * m * v * d + 10.0 * m * v,
        "kl": 2.0 * m * v * d + 10.0 * m * v,
        "entropy": 6.0 * m * v,
        "svd_small": 4.0 * m * d * d + 2.0 * m * d * Q * (2 + 2 * NITER) + 4.0 * min(m, d) ** 2 * max(m, d) / 50,
        "svd_rand_full": 2.0 * m * v * Q * (2 + 2 * NITER),
        "svd_exact_full": 8.0 * min(m, v) ** 2 * max(m, v),
        "qr_once": 2.0 * v * d * d,
    }[op]


def bytes_needed(op: str, m: int, v: int, d: int, chunk: int) -> float:
    """Rough peak bytes of ``op``'s inputs and transients (for the memory skip)."""
    full = 4.0 * m * v
    return {"fused_ce": 4.0 * (v * d + 6 * chunk * v), "kl": 4.0 * (v * d + 8 * chunk * v),
            "entropy": 4.0 * (v * d + 7 * chunk * v), "svd_small": 4.0 * (d * d + 4 * m * d),
            "svd_rand_full": 3 * full, "svd_exact_full": 4 * full + 4.0 * min(m, v) ** 2 * 2,
            "qr_once": 4.0 * 2 * v * d}[op]


def input_bytes(op: str, m: int, v: int, d: int) -> float:
    """Bytes of the op's inputs (W, or the full logits), allocated before the measured block."""
    return 4.0 * m * v if op in ("svd_rand_full", "svd_exact_full") else 4.0 * d * d if op == "svd_small" else 4.0 * v * d


def _available_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return 8 * 2.0**30


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    cpu = time.process_time()
    with measure("cpu") as m:
        fn()
    return time.process_time() - cpu, max(m.transient_mb, 0.0)


def run_op(op: str, m: int, v: int, d: int, chunk: int, gen: torch.Generator) -> tuple[float, float]:
    """(cpu seconds, transient peak MiB) of one fwd+bwd of ``op`` at size (m, v, d)."""
    h = torch.randn(m, d, generator=gen).requires_grad_(True)
    cfg = BALoRAConfig(task="nlg")
    if op == "svd_small":  # the step's work: H R^T and the SVD term; R (d x d) comes from qr_once
        r = torch.randn(d, d, generator=gen).triu_()
        ones = torch.ones(1, m, dtype=torch.bool)  # the trainer's SVD term on the small factor, public formula

        def svd_small() -> None:
            R.nlg_svd((h @ r.T)[None], ones, cfg.svd_top_k, cfg.svd_estimator, cfg.svd_oversampling, cfg.svd_niter,
                      cfg.svd_normalizer).backward()
        return _timed(svd_small)
    w = torch.randn(v, d, generator=gen) / d**0.5
    t = torch.randint(0, v, (m,), generator=gen)
    if op in ("fused_ce", "kl", "entropy"):
        ref = (h.detach() + 0.1 * torch.randn(m, d, generator=gen)) if op == "kl" else None
        l1, l2 = (1.0 if op == "kl" else 0.0), (1.0 if op == "entropy" else 0.0)
        sec, mb = _timed(lambda: fused_lm_terms(h, w, t, ref, None, l1, l2, chunk_size=chunk).loss.backward())
        if op != "fused_ce":  # report the increment over the plain fused CE
            base, _ = _timed(lambda: fused_lm_terms(h, w, t, chunk_size=chunk).loss.backward())
            sec = max(sec - base, 0.0)
        return sec, mb
    if op == "qr_once":
        return _timed(lambda: OutputFactor().r_factor(w))
    with torch.no_grad():
        z = (h @ w.T).requires_grad_(True)
    mask = torch.ones(1, m, dtype=torch.bool)
    estimator = "randomized" if op == "svd_rand_full" else "exact"
    return _timed(lambda: R.nlg_svd(z[None], mask, K, estimator).backward())


def sweep(points: list[tuple[int, int, int]], ops: tuple[str, ...], max_op_s: float, chunk: int,
          log: Callable[[str], None] = print) -> list[dict]:
    """Measure every (op, point) that fits the time and memory limits; extrapolate the rest."""
    gen = torch.Generator().manual_seed(0)
    avail = _available_bytes() / 2
    rows, rate = [], {}
    for op in ops:  # calibrate each op's seconds per FLOP on the smallest point
        m, v, d = min(points, key=lambda p: flops(op, *p))
        run_op(op, m, v, d, chunk, gen)  # warm-up
        sec, _ = run_op(op, m, v, d, chunk, gen)
        rate[op] = [sec / flops(op, m, v, d)]
    for m, v, d in points:
        for op in ops:
            predicted = statistics.median(rate[op]) * flops(op, m, v, d)
            # kl / entropy are increments: measuring them runs the fused CE pass twice more
            cost = predicted + (2 * statistics.median(rate["fused_ce"]) * flops("fused_ce", m, v, d)
                                if op in ("kl", "entropy") and "fused_ce" in rate else 0.0)
            row = {"op": op, "m": m, "v": v, "d": d, "predicted_s": predicted, "est_bytes": bytes_needed(op, m, v, d, chunk)}
            transient_mb = max(row["est_bytes"] - input_bytes(op, m, v, d), 0.0) / 2**20
            if row["est_bytes"] > avail:
                row.update(status="skipped: memory", seconds=predicted, peak_mb=transient_mb)
            elif cost > max_op_s:
                row.update(status="skipped: time", seconds=predicted, peak_mb=transient_mb)
            else:
                sec, mb = run_op(op, m, v, d, chunk, gen)
                rate[op].append(sec / flops(op, m, v, d))
                row.update(status="measured", seconds=sec, peak_mb=mb)
            rows.append(row)
            log(f"  d={d:<5} M={m:<6} V={v:<7} {op:<15} {row['seconds']:9.4f} s  {row['peak_mb']:8.0f} MiB  {row['status']}")
    for row in rows:  # final extrapolation with all measured rates
        if row["status"] != "measured":
            row["seconds"] = statistics.median(rate[row["op"]]) * flops(row["op"], row["m"], row["v"], row["d"])
    return rows


def plot(rows: list[dict], out: Path, base_m: int, base_v: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["d"] for r in rows})
    fig, axes = plt.subplots(len(dims), 3, figsize=(15, 4.2 * len(dims)), squeeze=False)
    colors = dict(zip(OPS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for i, d in enumerate(dims):
        panels = [("m", "v", base_v, "seconds", f"time vs trained positions (d={d}, V={base_v})"),
                  ("v", "m", base_m, "seconds", f"time vs vocabulary (d={d}, M={base_m})"),
                  ("m", "v", base_v, "peak_mb", f"transient peak memory vs positions (d={d}, V={base_v})")]
        for ax, (x, fixed, val, y, title) in zip(axes[i], panels):
            for op in OPS:
                sel = sorted((r for r in rows if r["op"] == op and r["d"] == d and r[fixed] == val
                              and not (op == "qr_once" and x == "m")), key=lambda r: r[x])
                sel = [r for r in sel if r[y] > 0]  # an increment below the timing noise measures as 0
                if not sel:
                    continue
                xs, ys = [r[x] for r in sel], [r[y] for r in sel]
                ax.plot(xs, ys, "-", color=colors[op], alpha=0.6, label=op)
                for r, xv, yv in zip(sel, xs, ys):
                    filled = r["status"] == "measured"
                    ax.plot(xv, yv, "o", color=colors[op], mfc=colors[op] if filled else "none")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("M (positions)" if x == "m" else "V (vocabulary)")
            ax.set_ylabel("CPU seconds (fwd+bwd)" if y == "seconds" else "MiB")
            ax.grid(True, which="both", alpha=0.3)
        axes[i][0].legend(fontsize=7)
        axes[i][1].legend(fontsize=7)
    fig.suptitle("BA-LoRA NLG terms: filled = measured, hollow = extrapolated (c x FLOPs) or skipped", fontsize=10)
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, out)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--positions", type=int, nargs="+", default=[256, 1024, 4096, 8192])
    p.add_argument("--vocabs", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--dims", type=int, nargs="+", default=[576, 4096])
    p.add_argument("--base-m", type=int, default=1024, help="M of the vocabulary sweep")
    p.add_argument("--base-v", type=int, default=32768, help="V of the positions sweep")
    p.add_argument("--max-op-seconds", type=float, default=3.0, help="skip (and extrapolate) ops predicted slower")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--predict", type=int, nargs=3, metavar=("M", "V", "D"), default=[8192, 128256, 4096],
                   help="also print the extrapolated cost at this size (default: 8k positions, Llama-3 vocab, 7B d)")
    p.add_argument("--out", default="docs/scaling.png")
    p.add_argument("--json", default="docs/scaling.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    points = sorted({(m, args.base_v, d) for m in args.positions for d in args.dims}
                    | {(args.base_m, v, d) for v in args.vocabs for d in args.dims})
    rows = sweep(points, OPS, args.max_op_seconds, args.chunk_size)
    # every row's seconds (measured, or extrapolated with the op's calibrated rate) gives a rate
    rates = {op: statistics.median([r["seconds"] / flops(op, r["m"], r["v"], r["d"]) for r in rows if r["op"] == op])
             for op in OPS}
    m, v, d = args.predict
    prediction = {op: rates[op] * flops(op, m, v, d) for op in OPS}
    print(f"\nextrapolated CPU seconds at M={m}, V={v}, d={d} (this machine, {args.threads} thread(s)):")
    for op, sec in prediction.items():
        print(f"  {op:<15} {sec:10.1f} s   (needs ~{bytes_needed(op, m, v, d, args.chunk_size) / 2**30:.1f} GiB)")
    plot(rows, Path(args.out), args.base_m, args.base_v)
    payload = {"rows": rows, "seconds_per_flop": rates, "prediction": {"m": m, "v": v, "d": d, "seconds": prediction},
               "threads": args.threads, "wall_s": time.perf_counter() - start}
    out = Path(args.json)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out)
    print(f"wall {payload['wall_s']:.0f} s; plot {args.out}; data {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
