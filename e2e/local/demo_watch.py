#!/usr/bin/env python3
"""Watches a Pipeline while the demo's load runs: one line per poll, then a chart.

Reads the Pipeline's status through kubectl (lag, desired and ready receivers) and Redis
through redis-cli, prints a line every poll, and at the end draws lag and replicas over
time as ASCII in the terminal and as an SVG file. Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def kubectl_json(args):
    kubectl = os.path.join(os.environ.get("FERRY_BIN", ""), "kubectl")
    out = subprocess.run([kubectl, *args, "-o", "json"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def redis(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def sample(namespace, pipeline, port):
    obj = kubectl_json(["get", "pipeline", pipeline, "-n", namespace]) or {}
    status = obj.get("status", {})
    receiver = next((s for s in status.get("stages", []) if s.get("name") == "receiver"), {})
    try:
        keys = int(redis(port, "DBSIZE") or 0)
    except ValueError:
        keys = 0
    return {
        "lag": status.get("lag") if status.get("lag") is not None else receiver.get("lag", 0) or 0,
        "desired": receiver.get("desiredReplicas", 0),
        "ready": receiver.get("readyReplicas", 0),
        "keys": keys,
    }


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie (exited, not yet reaped by the shell) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def ascii_chart(series, key, width=72, height=10, label=""):
    values = [s[key] for s in series]
    if not values:
        return ""
    top = max(values) or 1
    step = max(1, len(values) // width)
    cols = [max(values[i:i + step]) for i in range(0, len(values), step)][:width]
    rows = []
    for level in range(height, 0, -1):
        threshold = top * (level - 0.5) / height
        rows.append(f"{top * level / height:>10.0f} |" + "".join("#" if v >= threshold else " " for v in cols))
    rows.append(" " * 11 + "+" + "-" * len(cols))
    seconds = series[-1]["t"] if series else 0
    rows.append(" " * 12 + f"0s{' ' * max(0, len(cols) - 8)}{seconds:>5.0f}s")
    return f"{label}\n" + "\n".join(rows)


def svg_chart(series, path):
    width, height, pad = 800, 360, 50
    t_max = max((s["t"] for s in series), default=1) or 1
    lag_max = max((s["lag"] for s in series), default=1) or 1
    rep_max = max(max((s["desired"] for s in series), default=1), max((s["ready"] for s in series), default=1), 1)

    def x(t):
        return pad + (width - 2 * pad) * t / t_max

    def y(v, top):
        return height - pad - (height - 2 * pad) * v / top

    def line(key, top, color, dash=""):
        pts = " ".join(f"{x(s['t']):.1f},{y(s[key], top):.1f}" for s in series)
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" {dash} points="{pts}"/>'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{pad}" y="24" font-size="16">Ferry demo: receiver lag and replicas over time</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<line x1="{width - pad}" y1="{pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{pad - 4}" y="{pad}" text-anchor="end">{lag_max}</text>',
        f'<text x="{width - pad + 4}" y="{pad}">{rep_max}</text>',
        f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">seconds ({t_max:.0f}s)</text>',
        line("lag", lag_max, "#d62728"),
        line("desired", rep_max, "#1f77b4", 'stroke-dasharray="6,4"'),
        line("ready", rep_max, "#2ca02c"),
        f'<text x="{pad + 10}" y="{pad + 14}" fill="#d62728">lag (left axis, records)</text>',
        f'<text x="{pad + 10}" y="{pad + 30}" fill="#1f77b4">desired receivers (right axis)</text>',
        f'<text x="{pad + 10}" y="{pad + 46}" fill="#2ca02c">ready receivers (right axis)</text>',
        "</svg>",
    ]
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(parts))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--sim-pid", type=int, required=True)
    parser.add_argument("--settle", type=float, default=120, help="seconds to keep watching after the load ends")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--svg", required=True)
    args = parser.parse_args()

    start = time.monotonic()
    series = []
    load_ended_at = None
    print(f"{'time':>6}  {'lag':>9}  {'desired':>7}  {'ready':>5}  {'keys in Redis':>13}  load", flush=True)
    while True:
        now = time.monotonic() - start
        point = sample(args.namespace, args.pipeline, args.redis_port)
        point["t"] = now
        series.append(point)
        running = alive(args.sim_pid)
        if not running and load_ended_at is None:
            load_ended_at = now
        print(
            f"{now:>5.0f}s  {point['lag']:>9}  {point['desired']:>7}  {point['ready']:>5}  {point['keys']:>13}  "
            f"{'simulator running' if running else 'load over'}",
            flush=True,
        )
        if load_ended_at is not None and now - load_ended_at >= args.settle:
            break
        time.sleep(args.interval)

    print()
    print(ascii_chart(series, "lag", label="receiver lag (records)"))
    print()
    print(ascii_chart(series, "desired", height=6, label="desired receivers"))
    svg_chart(series, args.svg)
    peak = max((s["desired"] for s in series), default=0)
    print(f"\npeak desired receivers: {peak}; final: {series[-1]['desired']}; chart: {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
