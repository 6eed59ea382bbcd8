#!/usr/bin/env python3
"""Ferry's receiver against the peers a user would pick instead, side by side in one run.

Run through `make bench` (bench/run.sh builds everything and starts the stack first).
Python standard library only. Method and caveats: bench/README.md.

Environment knobs (defaults in brackets):
  BENCH_RECORDS [2000000]  BENCH_KEYS [1000]  BENCH_PARTITIONS [6]  BENCH_RUNS [3]
  BENCH_DB [9]             Redis database the contenders write to (FLUSHDB'd between runs;
                           never db 0, where the other tests live)
  BENCH_CONTENDERS         comma list, default: ferry,redpanda-connect,bare-consume,
                           redis-writer,redis-benchmark; also: redpanda-connect-notrim
                           (LPUSH only, not the same job; ~4 more minutes)
  BENCH_LATENCY_S [30]     measured seconds per latency run (after BENCH_WARMUP_S [10])
  BENCH_QUIET_WAIT_S [600] how long to wait for load average < 1.5 before starting
  BENCH_OUT [bench/results]
  BENCH_PERF               a file: `perf record` the Ferry receiver's runs into it (profiling)
  BENCH_BASELINE_BIN       a ferry-worker built from another commit: the contender
                           `ferry-baseline` runs it, interleaved with `ferry` in every run, for
                           before/after comparisons of one change, e.g.
                           BENCH_CONTENDERS=ferry,ferry-baseline,bare-consume BENCH_LATENCY_S=0
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = Path(os.environ.get("FERRY_CACHE", Path.home() / ".cache" / "ferry"))
STACK_DIR = Path(os.environ.get("FERRY_STACK_DIR", "/tmp/ferry-stack"))

RECORDS = int(os.environ.get("BENCH_RECORDS", "2000000"))
KEYS = int(os.environ.get("BENCH_KEYS", "1000"))
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "6"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
DB = int(os.environ.get("BENCH_DB", "9"))
DEPTH = 100
BATCH = int(os.environ.get("BENCH_BATCH", "2000"))  # the CRD's default maxRecords
FLOATS = 4
LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "30"))
WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", "10"))
QUIET_WAIT_S = float(os.environ.get("BENCH_QUIET_WAIT_S", "600"))
OUT = Path(os.environ.get("BENCH_OUT", BENCH_DIR / "results"))
PERF_OUT = os.environ.get("BENCH_PERF", "")
STALL_S = 4.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

BASELINE_BIN = os.environ.get("BENCH_BASELINE_BIN", "")

ALL = [
    "ferry",
    "ferry-baseline",
    "redpanda-connect",
    "redpanda-connect-notrim",
    "bare-consume",
    "redis-writer",
    "redis-benchmark",
]
PIPELINES = ["ferry", "redpanda-connect"]  # same job: Kafka -> Redis lists, trimmed
LABELS = {
    "ferry": "Ferry receiver",
    "ferry-baseline": "Ferry receiver, baseline build (BENCH_BASELINE_BIN)",
    "redpanda-connect": "Redpanda Connect",
    "redpanda-connect-notrim": "Redpanda Connect, LPUSH only (no trim)",
    "kafka-connect": "Kafka Connect + Redis sink",
    "bare-consume": "limit: bare rdkafka consumer (worker/benches/bare_consume.rs)",
    "redis-writer": "limit: bare Redis writer (pipelined LPUSH+LTRIM)",
    "redis-benchmark": "limit: redis-benchmark -P 64 -t lpush",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stack_env() -> dict[str, str]:
    env = {}
    path = STACK_DIR / "env"
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export ") :].split("=", 1)
            env[k] = v.strip().strip('"')
    return env


ENV = stack_env()
BOOTSTRAP = ENV.get("KAFKA_BOOTSTRAP", "127.0.0.1:19092")
REDIS_HOST = ENV.get("REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(ENV.get("REDIS_PORT", "16379"))
FERRY_BIN = Path(ENV.get("FERRY_BIN", STACK_DIR / "bin"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
RPC_VERSION = next(
    line.split()[1]
    for line in (BENCH_DIR / "contenders/redpanda-connect/go.mod").read_text().splitlines()
    if "github.com/redpanda-data/connect/v4 " in line
)
RPC_BIN = CACHE / f"bench-redpanda-connect-{RPC_VERSION}" / "redpanda-connect"


# ------------------------------------------------------------------ a small Redis client
class Redis:
    def __init__(self, db: int = DB):
        self.sock = socket.create_connection((REDIS_HOST, REDIS_PORT))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb", buffering=1 << 20)
        if db:
            self.call("SELECT", str(db))

    @staticmethod
    def _encode(args) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def _read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"bad reply {line!r}")

    def call(self, *args):
        self.sock.sendall(self._encode(args))
        return self._read()

    def pipeline(self, commands):
        self.sock.sendall(b"".join(self._encode(c) for c in commands))
        return [self._read() for _ in commands]

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------ processes and /proc
def proc_cpu_s(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def daemon_pid(name: str) -> int | None:
    try:
        return int((STACK_DIR / "pids" / f"{name}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_to_exit(cmd: list[str], log_path: Path, timeout: float = 900, env=None) -> tuple[str, float, float, float]:
    """Runs cmd, returns (stdout, wall seconds, child CPU seconds, child peak RSS MiB)."""
    with open(log_path, "ab") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        deadline = started + timeout
        out = b""
        # wait4 gives this child's own rusage (CPU of all its threads, peak RSS).
        assert proc.stdout is not None
        out = proc.stdout.read()
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}; see {log_path}")
    return out.decode(), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def kafka_cli(tool: str, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [str(FERRY_BIN / tool), *args], capture_output=True, text=True, timeout=180
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)}: {result.stderr.strip()[-500:]}")
    return result.stdout


def topic_end_offsets(topic: str) -> int | None:
    out = kafka_cli("kafka-get-offsets", "--bootstrap-server", BOOTSTRAP, "--topic", topic, check=False)
    total, seen = 0, False
    for line in out.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] == topic:
            total += int(parts[2] or 0)
            seen = True
    return total if seen else None


def create_topic(topic: str) -> None:
    kafka_cli(
        "kafka-topics", "--bootstrap-server", BOOTSTRAP, "--create", "--if-not-exists",
        "--topic", topic, "--partitions", str(PARTITIONS), "--replication-factor", "1",
    )


def delete_topic(topic: str) -> None:
    kafka_cli("kafka-topics", "--bootstrap-server", BOOTSTRAP, "--delete", "--topic", topic, check=False)


def delete_group(group: str) -> None:
    kafka_cli("kafka-consumer-groups", "--bootstrap-server", BOOTSTRAP, "--delete", "--group", group, check=False)


def loadavg() -> float:
    return os.getloadavg()[0]


def wait_quiet(notes: list[str]) -> None:
    deadline = time.monotonic() + QUIET_WAIT_S
    while loadavg() >= 1.5 and time.monotonic() < deadline:
        log(f"load average {loadavg():.2f} >= 1.5: waiting for a quiet machine "
            f"({int(deadline - time.monotonic())} s left)")
        time.sleep(20)
    la = loadavg()
    if la >= 1.5:
        notes.append(f"The machine never got quiet: 1-minute load average {la:.2f} at the start "
                     f"(waited {QUIET_WAIT_S:.0f} s); other engineers were building and testing.")
    else:
        notes.append(f"Started at a 1-minute load average of {la:.2f}.")


# ------------------------------------------------------------------ contenders
@dataclass
class Result:
    contender: str
    run: int
    records: int
    seconds: float  # first write to drained (pipelines) or the tool's own active time
    rate: float
    cpu_s: float
    rss_mib: float
    wall_s: float = 0.0
    redis_cpu_s: float = float("nan")
    kafka_cpu_s: float = float("nan")
    heads_wrong: int = 0
    lengths: dict = field(default_factory=dict)
    load: float = 0.0


def ferry_config(path: Path, topic: str, group: str) -> None:
    path.write_text(
        f"""pipeline: bench
kafka:
  bootstrap_servers: {BOOTSTRAP}
  topic: {topic}
  consumer_group: {group}
  auto_offset_reset: earliest
redis:
  url: redis://{REDIS_HOST}:{REDIS_PORT}/{DB}
  key_prefix: ferry
format: dsdata
http:
  listen: 127.0.0.1:0
stage:
  receiver:
    storage: {{type: list, history_depth: {DEPTH}}}
    batch: {{max_records: {BATCH}, max_wait: 50ms}}
"""
    )


def rpc_config(path: Path, topic: str, group: str, trim: bool) -> None:
    template = (BENCH_DIR / "contenders/redpanda-connect" /
                ("connect.yaml" if trim else "connect-notrim.yaml")).read_text()
    values = {
        "KAFKA": BOOTSTRAP, "TOPIC": topic, "GROUP": group, "BATCH": str(BATCH),
        "REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}", "TRIM_STOP": str(DEPTH - 2),
    }
    for k, v in values.items():
        template = template.replace("@@" + k + "@@", v)
    path.write_text(template)


def pipeline_cmd(name: str, topic: str, group: str, workdir: Path) -> list[str]:
    if name in ("ferry", "ferry-baseline"):
        cfg = workdir / f"ferry-{group}.yaml"
        ferry_config(cfg, topic, group)
        binary = TARGET / "ferry-worker"
        if name == "ferry-baseline":
            if not BASELINE_BIN or not Path(BASELINE_BIN).is_file():
                raise SystemExit("the ferry-baseline contender needs BENCH_BASELINE_BIN: a ferry-worker binary")
            binary = Path(BASELINE_BIN)
        return [str(binary), "--log-format", "json", "receive", "--config", str(cfg)]
    cfg = workdir / f"connect-{group}.yaml"
    rpc_config(cfg, topic, group, trim=(name == "redpanda-connect"))
    return [str(RPC_BIN), "run", str(cfg)]


def run_pipeline(name: str, run: int, topic: str, expected: dict[bytes, bytes], workdir: Path) -> Result:
    """Starts a contender on a fresh group, returns when Redis holds the topic's last
    record at every list head (or when the lists stop changing for STALL_S)."""
    r = Redis()
    r.call("FLUSHDB")
    group = f"ferry-bench-{name}-{run}-{int(time.time())}"
    cmd = pipeline_cmd(name, topic, group, workdir)
    keys = sorted(expected)
    pending = set(keys)
    prev: dict[bytes, bytes | None] = {}
    redis_pid, kafka_pid = daemon_pid("redis"), daemon_pid("kafka")
    redis_cpu0 = proc_cpu_s(redis_pid) if redis_pid else float("nan")
    kafka_cpu0 = proc_cpu_s(kafka_pid) if kafka_pid else float("nan")
    load = loadavg()
    log(f"{name} run {run}: {shlex.join(cmd)}")
    with open(workdir / f"{name}-{run}.log", "wb") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=err, stderr=err)
        perf = None
        if PERF_OUT and name == "ferry":
            # Profiling (BENCH_PERF=file): sample the receiver's stacks while it drains.
            perf = subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", "299", "--call-graph", "dwarf,16384",
                 "-p", str(proc.pid), "-o", PERF_OUT], stdout=err, stderr=err)
        try:
            t_first = None
            last_change = None
            full = False
            sample = keys[:: max(1, len(keys) // 50)]
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}; see {workdir}/{name}-{run}.log")
                now = time.monotonic()
                if now - started > 900:
                    raise RuntimeError(f"{name} did not drain the topic in 900 s")
                if t_first is None:
                    if r.call("DBSIZE") > 0:
                        t_first = last_change = now
                    time.sleep(0.01)
                    continue
                # A sample of 50 keys while nothing is finished (each key's last record
                # comes near the end of its partition), all unfinished keys after that:
                # cheap for the machine and exact at the end.
                batch = sorted(pending) if full else sample
                heads = r.pipeline([("LINDEX", k, 0) for k in batch])
                changed = False
                for k, v in zip(batch, heads):
                    if v == expected[k]:
                        pending.discard(k)
                        changed = True
                    elif prev.get(k) != v:
                        prev[k] = v
                        changed = True
                if changed:
                    last_change = now
                if len(pending) < len(keys):
                    full = True
                if not pending:
                    t_done = now
                    break
                if now - last_change > STALL_S:
                    t_done = last_change
                    break
                time.sleep(0.1 if not full else 0.02)
            cpu = proc_cpu_s(proc.pid)
            rss = proc_hwm_mib(proc.pid)
            redis_cpu = proc_cpu_s(redis_pid) - redis_cpu0 if redis_pid else float("nan")
            kafka_cpu = proc_cpu_s(kafka_pid) - kafka_cpu0 if kafka_pid else float("nan")
        finally:
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait(timeout=120)
            stop(proc)
    lengths = r.pipeline([("LLEN", k) for k in keys])
    r.close()
    delete_group(group)
    seconds = t_done - t_first
    res = Result(name, run, RECORDS, seconds, RECORDS / seconds, cpu, rss,
                 wall_s=t_done - started, redis_cpu_s=redis_cpu, kafka_cpu_s=kafka_cpu,
                 heads_wrong=len(pending),
                 lengths={"min": min(lengths), "max": max(lengths)}, load=load)
    log(f"{name} run {run}: {res.rate:,.0f} records/s ({seconds:.2f} s first write to drained, "
        f"{res.wall_s:.1f} s from start), CPU {cpu:.1f} s, peak RSS {rss:.0f} MiB, "
        f"list lengths {res.lengths}, wrong heads {res.heads_wrong}")
    return res


def run_tool(name: str, run: int, topic: str, text_bytes: int, workdir: Path) -> Result:
    load = loadavg()
    logp = workdir / f"{name}-{run}.log"
    if name == "bare-consume":
        # The worker engineer's baseline (worker/benches/bare_consume.rs): a StreamConsumer
        # in its own group, counting; its clock starts at the first record.
        exe = (TARGET / "ferry-bench-bare-consume.path").read_text().strip()
        env = dict(os.environ, KAFKA_BOOTSTRAP=BOOTSTRAP, BENCH_TOPIC=topic, BENCH_COUNT=str(RECORDS))
        out, wall, cpu, rss = run_to_exit([exe], logp, env=env)
        # "bare_consume: N records (B bytes) in S s: R records/s"
        words = out.split()
        seen, seconds = int(words[1]), float(words[words.index("in") + 1])
        if seen != RECORDS:
            raise RuntimeError(f"bare_consume read {seen} records, expected {RECORDS}")
        res = Result(name, run, seen, seconds, seen / seconds, cpu, rss, wall_s=wall)
    elif name == "redis-writer":
        Redis().call("FLUSHDB")
        cmd = [str(TARGET / "bench-redis-writer"), "--redis", f"{REDIS_HOST}:{REDIS_PORT}", "--db", str(DB),
               "--records", str(RECORDS), "--keys", str(KEYS), "--batch", str(BATCH),
               "--depth", str(DEPTH), "--floats", str(FLOATS), "--text-bytes", str(text_bytes)]
        out, wall, cpu, rss = run_to_exit(cmd, logp)
        data = json.loads(out)
        res = Result(name, run, data["records"], data["seconds"], data["records_per_s"], cpu, rss, wall_s=wall)
    elif name == "redis-benchmark":
        Redis().call("FLUSHDB")
        # The command, plus --dbnum so its 2M-element list stays out of db 0.
        cmd = ["redis-benchmark", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "--dbnum", str(DB),
               "-P", "64", "-t", "lpush", "-n", str(RECORDS), "-q"]
        out, wall, cpu, rss = run_to_exit(cmd, logp)
        rate = None
        for chunk in out.replace("\r", "\n").splitlines():
            if chunk.startswith("LPUSH:") and "requests per second" in chunk:
                rate = float(chunk.split(":")[1].split("requests")[0].strip())
        if rate is None:
            raise RuntimeError(f"cannot parse redis-benchmark output: {out!r}")
        res = Result(name, run, RECORDS, RECORDS / rate, rate, cpu, rss, wall_s=wall)
    else:
        raise ValueError(name)
    res.load = load
    log(f"{name} run {run}: {res.rate:,.0f} records/s, CPU {res.cpu_s:.1f} s, peak RSS {res.rss_mib:.0f} MiB")
    return res


def run_latency(name: str, offered: float, workdir: Path) -> dict:
    """Fixed offered load from the simulator (timestamps = now) on a fresh topic; the
    latency tool watches 20 keys' lists through keyspace notifications."""
    topic = f"ferry-bench-lat-{name}-{int(time.time())}"
    create_topic(topic)
    Redis().call("FLUSHDB")
    group = f"{topic}-g"
    cmd = pipeline_cmd(name, topic, group, workdir)
    per_source = offered / KEYS
    total_s = WARMUP_S + LATENCY_S + 2
    log(f"latency {name}: {offered:,.0f} records/s offered ({per_source:.2f}/s per source) for {total_s:.0f} s")
    with open(workdir / f"latency-{name}.log", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=err)
        try:
            time.sleep(3)  # join the group before the load starts; warm-up covers the rest
            from_ms = time.time() * 1000 + WARMUP_S * 1000
            probe = subprocess.Popen(
                [str(TARGET / "bench-latency"), "--redis", f"{REDIS_HOST}:{REDIS_PORT}", "--db", str(DB),
                 "--from-ms", f"{from_ms:.0f}", "--duration-s", str(LATENCY_S), "--keys", "20",
                 "--key-space", str(KEYS)], stdout=subprocess.PIPE, stderr=err)
            sim = subprocess.Popen(
                [str(TARGET / "ferry-worker"), "--log-format", "json", "simulate",
                 "--bootstrap-servers", BOOTSTRAP, "--topic", topic, "--sources", str(KEYS),
                 "--rate", f"{per_source:.4f}", "--floats", str(FLOATS), "--format", "dsdata",
                 "--duration", f"{int(total_s)}s", "--progress-interval", "10s"],
                stdout=err, stderr=err)
            sim.wait(timeout=total_s + 120)
            out, _ = probe.communicate(timeout=120)
            if probe.returncode != 0:
                raise RuntimeError(f"bench-latency failed; see {workdir}/latency-{name}.log")
            data = json.loads(out)
            data["offered"] = offered
            data["rss_mib"] = proc_hwm_mib(proc.pid)
        finally:
            stop(proc)
    delete_topic(topic)
    delete_group(group)
    log(f"latency {name}: p50 {data['p50_ms']:.1f} ms, p99 {data['p99_ms']:.1f} ms over {data['samples']} samples")
    return data


# ------------------------------------------------------------------ data
def prepare_topic(topic: str, workdir: Path) -> tuple[dict[bytes, bytes], int]:
    end = topic_end_offsets(topic)
    if end != RECORDS:
        if end is not None:
            log(f"topic {topic} holds {end} records, not {RECORDS}: recreating it")
            delete_topic(topic)
            time.sleep(3)
        create_topic(topic)
        log(f"preloading {RECORDS:,} dsdata records over {KEYS} keys into {topic} (simulator, --rate 0)")
        subprocess.run(
            [str(TARGET / "ferry-worker"), "--log-format", "json", "simulate", "--bootstrap-servers", BOOTSTRAP,
             "--topic", topic, "--sources", str(KEYS), "--rate", "0", "--floats", str(FLOATS),
             "--format", "dsdata", "--count", str(RECORDS), "--progress-interval", "5s"],
            check=True, stdout=subprocess.DEVNULL, stderr=open(workdir / "preload.log", "wb"))
        end = topic_end_offsets(topic)
        if end != RECORDS:
            raise RuntimeError(f"topic {topic} holds {end} records after the preload, expected {RECORDS}")
    else:
        log(f"topic {topic} already holds the {RECORDS:,} records: reusing it")
    heads_file = workdir / "expected-heads.tsv"
    out, _, _, _ = run_to_exit(
        [str(TARGET / "bench-last-per-key"), "--bootstrap", BOOTSTRAP, "--topic", topic,
         "--out", str(heads_file)], workdir / "expected-heads.log")
    info = json.loads(out)
    expected = {}
    for line in heads_file.read_text().splitlines():
        key, value = line.split("\t")
        expected[f"ferry:list:{key}".encode()] = bytes.fromhex(value)
    if len(expected) != KEYS:
        raise RuntimeError(f"expected {KEYS} keys in {topic}, found {len(expected)}")
    avg = float(info["value_bytes_avg"])
    text_bytes = max(0, round(avg - (16 + 8 * FLOATS)))
    log(f"expected heads of {len(expected)} lists read; values average {avg:.1f} bytes")
    return expected, text_bytes


# ------------------------------------------------------------------ report
def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def median(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def summarize(results: list[Result]) -> dict[str, dict]:
    out = {}
    for name in dict.fromkeys(r.contender for r in results):
        rs = [r for r in results if r.contender == name]
        out[name] = {
            "runs": [round(r.rate) for r in rs],
            "rate": median([r.rate for r in rs]),
            "cpu_per_m": median([r.cpu_s / (r.records / 1e6) for r in rs]),
            "rss": max(r.rss_mib for r in rs),
            "redis_cpu_per_m": median([r.redis_cpu_s / (r.records / 1e6) for r in rs]),
            "kafka_cpu_per_m": median([r.kafka_cpu_s / (r.records / 1e6) for r in rs]),
            "heads_wrong": max(r.heads_wrong for r in rs),
            "lengths": rs[-1].lengths,
            "load": [round(r.load, 2) for r in rs],
        }
    return out


def svg_chart(summary: dict, path: Path, subtitle: str) -> None:
    rows = [(LABELS[n], s["rate"], n) for n, s in summary.items()]
    width, left, bar_h, gap, top = 980, 390, 26, 12, 70
    height = top + len(rows) * (bar_h + gap) + 40
    peak = max(r for _, r, _ in rows) or 1
    scale = (width - left - 150) / peak
    colors = {"ferry": "#1f6feb", "redpanda-connect": "#d1242f", "redpanda-connect-notrim": "#f08c8c"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="20" y="30" font-size="18" font-weight="bold">Kafka → Redis lists: records/s, median of {RUNS} runs (higher is better)</text>',
        f'<text x="20" y="52" font-size="12" fill="#555">{subtitle}</text>',
    ]
    for i, (label, rate, name) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(1, rate * scale)
        color = colors.get(name, "#8c959f")
        parts.append(f'<text x="{left - 10}" y="{y + bar_h * 0.68:.0f}" font-size="13" text-anchor="end">{label}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 8:.1f}" y="{y + bar_h * 0.68:.0f}" font-size="13">{fmt_rate(rate)}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def machine_notes() -> list[str]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    redis_v = next((w.split("=")[1] for w in redis_v if w.startswith("v=")), "?")
    return [
        f"{os.cpu_count()} vCPUs ({cpu}), {int(mem) / 1024 / 1024:.0f} GiB, {platform.system()} {platform.release()}",
        f"Kafka {ENV.get('KAFKA_VERSION', '?')} (one KRaft broker, JVM), Redis {redis_v}, both local processes "
        f"on loopback, shared with the other engineers' tests (the benchmark writes to Redis db {DB} only)",
    ]


def write_report(summary, latency, results, notes, evidence, started_at, text_bytes) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    s = summary
    lines = [
        "# Ferry benchmark: Kafka → Redis lists, side by side",
        "",
        f"Generated by `bench/bench.py` (what `make bench` runs) on {started_at} (UTC). Method, configurations and caveats: "
        "[bench/README.md](../README.md). Raw numbers: `results.json` (not committed).",
        "",
        f"Job: {RECORDS:,} `dsdata` records ({FLOATS} floats + {text_bytes} bytes of text, "
        f"~{16 + 8 * FLOATS + text_bytes} bytes each), {KEYS} keys, {PARTITIONS} partitions, preloaded once; "
        f"each contender drains the topic into Redis lists `ferry:list:<key>`, newest first, "
        f"trimmed to {DEPTH}; FLUSHDB between contenders; {RUNS} runs each, interleaved.",
        "",
        "![records/s](throughput.svg)",
        "",
        "| contender | records/s (median) | runs | CPU s / M records | peak RSS MiB | latency p50 / p99 ms | "
        "Redis CPU s / M | heads wrong / list len |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, row in s.items():
        lat = latency.get(name)
        lat_text = f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f}" if lat else "–"
        is_pipe = name in ("ferry", "ferry-baseline", "redpanda-connect", "redpanda-connect-notrim")
        redis_cpu = f"{row['redis_cpu_per_m']:.1f}" if is_pipe else "–"
        heads = f"{row['heads_wrong']} / {row['lengths'].get('min')}–{row['lengths'].get('max')}" if is_pipe else "–"
        lines.append(
            f"| {LABELS[name]} | {fmt_rate(row['rate'])} | {', '.join(fmt_rate(r) for r in row['runs'])} | "
            f"{row['cpu_per_m']:.2f} | {row['rss']:.0f} | {lat_text} | {redis_cpu} | {heads} |"
        )
    for name, why in evidence.items():
        lines.append(f"| {LABELS[name]} | not measured | – | – | – | – | – | {why} |")
    lines += ["", "## Ratios (same run)", ""]
    if "ferry" in s:
        f = s["ferry"]
        for peer in s:
            if peer == "ferry":
                continue
            p = s[peer]
            extra = ""
            if peer in ("redpanda-connect", "redpanda-connect-notrim"):
                extra = (f"; CPU per record {f['cpu_per_m'] / p['cpu_per_m']:.2f}×; peak RSS {f['rss'] / p['rss']:.2f}×")
            lines.append(f"- Ferry ÷ {LABELS[peer]}: records/s **{f['rate'] / p['rate']:.2f}×**{extra}")
        if "ferry-baseline" in s and "bare-consume" in s:
            # Per run, each build against the bare consume measured beside it, then medians.
            now = [a / b for a, b in zip(f["runs"], s["bare-consume"]["runs"])]
            before = [a / b for a, b in zip(s["ferry-baseline"]["runs"], s["bare-consume"]["runs"])]
            lines.append(f"- Ferry ÷ bare consume, per run: {', '.join(f'{r:.3f}' for r in now)} "
                         f"(median **{median(now):.3f}×**); baseline build: "
                         f"{', '.join(f'{r:.3f}' for r in before)} (median **{median(before):.3f}×**); "
                         f"this build keeps **{median(now) / median(before):.3f}×** of the baseline's ratio")
        if "ferry" in latency and "redpanda-connect" in latency:
            fl, pl = latency["ferry"], latency["redpanda-connect"]
            lines.append(f"- Latency at {fmt_rate(fl['offered'])} records/s offered: p50 Ferry "
                         f"{fl['p50_ms']:.1f} ms vs {pl['p50_ms']:.1f} ms, p99 {fl['p99_ms']:.1f} ms vs "
                         f"{pl['p99_ms']:.1f} ms")
        goals = []
        if "redpanda-connect" in s:
            ratio = f["rate"] / s["redpanda-connect"]["rate"]
            goals.append(f"Ferry ≥ 3× Redpanda Connect: {ratio:.2f}× — {'met' if ratio >= 3 else 'NOT met'}")
        if "redis-benchmark" in s:
            ratio = f["rate"] / s["redis-benchmark"]["rate"]
            goals.append(f"Ferry ≥ 0.5× the pipelined-LPUSH limit: {ratio:.2f}× — {'met' if ratio >= 0.5 else 'NOT met'}")
        if goals:
            lines += ["", "Goals: " + "; ".join(goals) + "."]
    lines += ["", "## Machine and noise", ""] + [f"- {n}" for n in machine_notes() + notes]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    (OUT / "results.json").write_text(json.dumps(
        {"summary": summary, "latency": latency, "runs": [r.__dict__ for r in results], "notes": notes},
        indent=2, default=str) + "\n")
    svg_chart(summary, OUT / "throughput.svg",
              f"{RECORDS:,} records, {KEYS} keys, {PARTITIONS} partitions, lists trimmed to {DEPTH}; "
              f"one run of make bench on {started_at}")
    log(f"wrote {OUT / 'results.md'} and {OUT / 'throughput.svg'}")


def main() -> int:
    default = [c for c in ALL if c not in ("redpanda-connect-notrim", "ferry-baseline")]
    wanted = [c.strip() for c in os.environ.get("BENCH_CONTENDERS", ",".join(default)).split(",") if c.strip()]
    for w in wanted:
        if w not in ALL:
            raise SystemExit(f"unknown contender {w!r}; known: {', '.join(ALL)}")
    started_at = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    log(f"logs and configs in {workdir}")
    notes: list[str] = []
    evidence = {}
    kc = BENCH_DIR / "kafka-connect" / "maven-evidence.txt"
    if kc.exists():
        evidence["kafka-connect"] = ("connector not on Maven Central: "
                                     "[kafka-connect/maven-evidence.txt](../kafka-connect/maven-evidence.txt)")
    topic = f"ferry-bench-{RECORDS}"
    expected, text_bytes = prepare_topic(topic, workdir)
    wait_quiet(notes)

    results: list[Result] = []
    for run in range(1, RUNS + 1):
        for name in wanted:
            if name in ("ferry", "ferry-baseline", "redpanda-connect", "redpanda-connect-notrim"):
                results.append(run_pipeline(name, run, topic, expected, workdir))
            else:
                results.append(run_tool(name, run, topic, text_bytes, workdir))
    summary = summarize(results)

    latency = {}
    pipes = [p for p in PIPELINES if p in summary]
    if pipes and LATENCY_S > 0:
        offered = 0.5 * min(summary[p]["rate"] for p in pipes)
        for name in pipes:
            latency[name] = run_latency(name, offered, workdir)
        notes.append(f"Latency: {fmt_rate(offered)} records/s offered = half the slowest pipeline's median "
                     f"records/s; {LATENCY_S:.0f} s measured after {WARMUP_S:.0f} s of warm-up.")
    la = loadavg()
    notes.append(f"1-minute load average at the end: {la:.2f}.")
    Redis().call("FLUSHDB")
    write_report(summary, latency, results, notes, evidence, started_at, text_bytes)
    print((OUT / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
