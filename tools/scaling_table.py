"""Print the README's table of predicted step time and scaling efficiency (core/scaling.py).

    PYTHONPATH=. python tools/scaling_table.py [--bucket-mb MB] [--network ib|eth]

Strong scaling: the global batch stays 3200 (each of P ranks computes 3200 / P samples); weak
scaling: each rank keeps 800 samples (global batch 800 P). P <= 8 on NVLink inside one node,
beyond it the network's link.
"""

from __future__ import annotations

import argparse

from core.buckets import DEFAULT_BUCKET_MB
from core.scaling import LINKS, efficiency, predict

RANKS = (2, 4, 8, 16, 64)


def rows(hidden: int, network: str, bucket_mb: float):
    strong1 = predict(hidden, 3200, 1)
    weak1 = predict(hidden, 800, 1)
    for p in RANKS:
        s = predict(hidden, 3200, p, network, bucket_mb)
        w = predict(hidden, 800 * p, p, network, bucket_mb)
        yield p, s, efficiency(s, strong1, False), w, efficiency(w, weak1, True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bucket-mb", type=float, default=DEFAULT_BUCKET_MB)
    ap.add_argument("--network", choices=("ib", "eth"), default="ib")
    args = ap.parse_args()
    link = LINKS[args.network]
    print(f"beyond 8 GPUs: {link.name} ({link.bandwidth / 1e9:g} GB/s, alpha "
          f"{link.alpha * 1e6:g} us); --bucket-mb {args.bucket_mb:g}\n")
    print("| H | P | link | strong: us/rank-step (compute + exposed of allreduce) | strong eff. "
          "| weak: us/step (compute + exposed of allreduce) | weak eff. |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for hidden in (1024, 4096):
        for p, s, se, w, we in rows(hidden, args.network, args.bucket_mb):
            where = "NVLink" if p <= 8 else args.network.upper()
            print(f"| {hidden} | {p} | {where} | {s['step_us']:.0f} ({s['compute_us']:.0f} + "
                  f"{s['exposed_us']:.0f} of {s['exchange_us']:.0f}) | {100 * se:.0f}% "
                  f"| {w['step_us']:.0f} ({w['compute_us']:.0f} + {w['exposed_us']:.0f} of "
                  f"{w['exchange_us']:.0f}) | {100 * we:.0f}% |")


if __name__ == "__main__":
    main()
