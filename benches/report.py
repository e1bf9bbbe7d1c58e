#!/usr/bin/env python3
"""Turns criterion's estimates (target/criterion) into BENCHMARKS.md's tables and an SVG
plot of hit throughput against requests in flight. Run after `cargo bench --bench hit_path`:

    python3 benches/report.py > benches/results/latest.md
"""
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRITERION = ROOT / "target" / "criterion"
OUT = ROOT / "benches" / "results"


def median_ns(*parts):
    path = CRITERION.joinpath(*parts, "new", "estimates.json")
    return json.loads(path.read_text())["median"]["point_estimate"]


def fmt(ns):
    return f"{ns / 1000:.1f} µs" if ns >= 1000 else f"{ns:.0f} ns"


def main():
    hit = {name: median_ns("hit_path", name) for name in
           ["raw_moka", "layer_memory", "raw_redis", "layer_redis", "cached_redis"]}
    print("| hit path | median | ratio | target |")
    print("|---|---|---|---|")
    rows = [
        ("raw_moka", None, ""),
        ("layer_memory", ("raw_moka",), "≤ 1.5 × raw_moka"),
        ("raw_redis", None, ""),
        ("layer_redis", ("raw_redis",), "≤ 1.10 × raw_redis"),
        ("cached_redis", None, ""),
    ]
    for name, base, target in rows:
        ratio = f"{hit[name] / hit[base[0]]:.2f} × {base[0]}" if base else "baseline"
        print(f"| `{name}` | {fmt(hit[name])} | {ratio} | {target} |")
    print(f"| `layer_redis` vs `cached_redis` | | {hit['layer_redis'] / hit['cached_redis']:.2f} | ≤ 1.0 |")
    print()

    batch = 2048
    levels = [1, 16, 64, 256]
    throughput = {
        kind: [batch / (median_ns("concurrency", kind, str(n)) / 1e9) for n in levels]
        for kind in ["raw_redis", "layer_redis"]
    }
    print("| in flight | raw redis-rs GET/s | layer GET/s | layer / raw |")
    print("|---|---|---|---|")
    for i, n in enumerate(levels):
        raw, layer = throughput["raw_redis"][i], throughput["layer_redis"][i]
        print(f"| {n} | {raw:,.0f} | {layer:,.0f} | {layer / raw:.0%} |")

    # A small line chart: x = requests in flight (log scale), y = hits per second.
    width, height, pad = 560, 320, 50
    top = max(max(v) for v in throughput.values()) * 1.1
    def x(i):
        return pad + i * (width - 2 * pad) / (len(levels) - 1)
    def y(v):
        return height - pad - v / top * (height - 2 * pad)
    colours = {"raw_redis": "#888", "layer_redis": "#0a6"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">requests in flight on one connection</text>',
             f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">hits per second</text>']
    for i, n in enumerate(levels):
        parts.append(f'<text x="{x(i)}" y="{height - pad + 16}" text-anchor="middle">{n}</text>')
    for k in range(5):
        v = top * k / 4
        parts.append(f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v / 1000:.0f}k</text>')
        parts.append(f'<line x1="{pad}" y1="{y(v)}" x2="{width - pad}" y2="{y(v)}" stroke="#eee"/>')
    for j, (kind, values) in enumerate(throughput.items()):
        points = " ".join(f"{x(i)},{y(v)}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colours[kind]}" stroke-width="2"/>')
        for i, v in enumerate(values):
            parts.append(f'<circle cx="{x(i)}" cy="{y(v)}" r="3" fill="{colours[kind]}"/>')
        parts.append(f'<text x="{pad + 10}" y="{pad + 14 * j}" fill="{colours[kind]}">{kind}</text>')
    parts.append("</svg>")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "concurrency.svg").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
