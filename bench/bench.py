#!/usr/bin/env python3
"""Ferry's receiver against the peers a user would pick instead, side by side in one run.

Run through `make bench` (bench/run.sh builds everything and starts the stack first).
Python standard library only. Method and caveats: bench/README.md.

Environment knobs (defaults in brackets):
  BENCH_RECORDS [2000000]  BENCH_KEYS [1000]  BENCH_PARTITIONS [6]  BENCH_RUNS [3]
  BENCH_DB [9]             Redis database the contenders write to (FLUSHDB'd between runs;
                           never db 0, where the other tests live)
  BENCH_CONTENDERS         comma list, default: ferry,redpanda-connect-notrim,
                           redpanda-connect,bare-pipe,bare-consume,redis-writer,redis-benchmark
  BENCH_LATENCY_S [10]     measured seconds per latency point (after BENCH_WARMUP_S [5]);
                           0 skips the latency curve
  BENCH_CURVE              comma list of offered loads (records/s) for the latency curve; default:
                           1000,10000,100000, half Ferry's max and 80% of each contender's max
                           (each contender runs only the points up to 80% of its own max)
  BENCH_RPC_COUNT [250] BENCH_RPC_PERIOD [1ms] BENCH_RPC_MAX_IN_FLIGHT [64]
  BENCH_RPC_CHECKPOINT_LIMIT [1024]
                           Redpanda Connect's input batching, output max_in_flight and the
                           kafka_franz input's checkpoint_limit (tuning: bench/README.md)
  BENCH_SIM_X              comma list of librdkafka producer settings for the latency curve's
                           simulator (e.g. linger.ms=10); BENCH_BARE_RDKAFKA the same for the
                           bare-pipe limit's consumer (e.g. fetch.wait.max.ms=10)
  BENCH_QUIET_WAIT_S [600] how long to wait for load average < 1.5 before starting
  BENCH_WARM_POINTS [4]    at most this many discarded bare-pipe points at the curve's lowest
                           load warm the broker first (until Kafka's CPU share settles); 0: none
  BENCH_IDLE_BUSY [0.3] BENCH_IDLE_WAIT_S [120]
                           before each latency point, wait up to IDLE_WAIT_S for the cores to
                           be less than IDLE_BUSY busy over 2 s
  BENCH_OUT [bench/results]
  BENCH_PERF               a file: `perf record` the Ferry receiver's runs into it (profiling)
  BENCH_BASELINE_BIN       a ferry-worker built from another commit: the contender
                           `ferry-baseline` runs it, interleaved with `ferry` in every run and
                           at every latency point, for before/after comparisons of one change,
                           e.g. BENCH_CONTENDERS=ferry,ferry-baseline,bare-consume BENCH_LATENCY_S=0
  BENCH_BASELINE_BATCH     the baseline's maxRecords instead of BENCH_BATCH; without
                           BENCH_BASELINE_BIN it runs Ferry's own build, so one setting is
                           compared with another on one binary
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
LATENCY_S = float(os.environ.get("BENCH_LATENCY_S", "10"))
WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", "5"))
SIM_X = [x for x in os.environ.get("BENCH_SIM_X", "").split(",") if "=" in x]
BARE_RDKAFKA = os.environ.get("BENCH_BARE_RDKAFKA", "")
CURVE_LOADS = [float(x) for x in os.environ.get("BENCH_CURVE", "").split(",") if x.strip()]
QUIET_WAIT_S = float(os.environ.get("BENCH_QUIET_WAIT_S", "600"))
OUT = Path(os.environ.get("BENCH_OUT", BENCH_DIR / "results"))
PERF_OUT = os.environ.get("BENCH_PERF", "")
STALL_S = 4.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

BASELINE_BIN = os.environ.get("BENCH_BASELINE_BIN", "")
BASELINE_BATCH = int(os.environ.get("BENCH_BASELINE_BATCH", str(BATCH)))
# Without a binary of its own, a baseline with another maxRecords runs Ferry's own build.
BASELINE_OWN_BUILD = not BASELINE_BIN and BASELINE_BATCH != BATCH

ALL = [
    "ferry",
    "ferry-baseline",
    "redpanda-connect",
    "redpanda-connect-notrim",
    "bare-pipe",
    "bare-consume",
    "redis-writer",
    "redis-benchmark",
]
# Drain the topic into Redis lists (bare-pipe: the limit of that, see LABELS).
PIPELINES = ["ferry", "ferry-baseline", "redpanda-connect-notrim", "redpanda-connect", "bare-pipe"]
# The latency curve's contenders, in the chart's order.
CURVE = ["ferry", "ferry-baseline", "redpanda-connect-notrim", "redpanda-connect", "bare-pipe"]
# Its best of the settings tried (bench/README.md, "Tuning Redpanda Connect").
RPC_COUNT = os.environ.get("BENCH_RPC_COUNT", "250")
RPC_PERIOD = os.environ.get("BENCH_RPC_PERIOD", "1ms")
RPC_MAX_IN_FLIGHT = os.environ.get("BENCH_RPC_MAX_IN_FLIGHT", "64")
RPC_CHECKPOINT_LIMIT = os.environ.get("BENCH_RPC_CHECKPOINT_LIMIT", "1024")
LABELS = {
    "ferry": "Ferry receiver",
    "ferry-baseline": (f"Ferry receiver, maxRecords {BASELINE_BATCH}" if BASELINE_OWN_BUILD
                       else "Ferry receiver, baseline build (BENCH_BASELINE_BIN)"),
    "redpanda-connect": "Redpanda Connect",
    "redpanda-connect-notrim": "Redpanda Connect, LPUSH only (lists not trimmed)",
    "bare-pipe": "limit: bare consume → LPUSH+LTRIM as soon as read",
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


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds busy and in total over all cores since boot (/proc/stat; idle and
    iowait count as not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - fields[3] - fields[4]) / CLK_TCK, total / CLK_TCK


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


def wait_with_rusage(proc: subprocess.Popen, deadline: float):
    """Reaps proc (killed past `deadline`) with wait4, which gives its own rusage (CPU of all
    its threads, peak RSS); sets its returncode."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.01)


def run_to_exit(cmd: list[str], log_path: Path, timeout: float = 900, env=None) -> tuple[str, float, float, float]:
    """Runs cmd, returns (stdout, wall seconds, child CPU seconds, child peak RSS MiB)."""
    with open(log_path, "ab") as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        deadline = started + timeout
        out = b""
        assert proc.stdout is not None
        out = proc.stdout.read()
        usage = wait_with_rusage(proc, deadline)
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


def ferry_config(path: Path, topic: str, group: str, batch: int = BATCH) -> None:
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
    batch: {{max_records: {batch}, max_wait: 50ms}}
"""
    )


def rpc_config(path: Path, topic: str, group: str, trim: bool) -> None:
    template = (BENCH_DIR / "contenders/redpanda-connect" /
                ("connect.yaml" if trim else "connect-notrim.yaml")).read_text()
    values = {
        "KAFKA": BOOTSTRAP, "TOPIC": topic, "GROUP": group, "BATCH": str(BATCH),
        "REDIS_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/{DB}", "TRIM_STOP": str(DEPTH - 2),
        "COUNT": RPC_COUNT, "PERIOD": RPC_PERIOD, "MAX_IN_FLIGHT": RPC_MAX_IN_FLIGHT,
        "CHECKPOINT_LIMIT": RPC_CHECKPOINT_LIMIT,
    }
    for k, v in values.items():
        template = template.replace("@@" + k + "@@", v)
    path.write_text(template)


def pipeline_cmd(name: str, topic: str, group: str, workdir: Path) -> list[str]:
    if name in ("ferry", "ferry-baseline"):
        cfg = workdir / f"ferry-{group}.yaml"
        baseline = name == "ferry-baseline"
        ferry_config(cfg, topic, group, BASELINE_BATCH if baseline else BATCH)
        binary = TARGET / "ferry-worker"
        if baseline and not BASELINE_OWN_BUILD:
            if not BASELINE_BIN or not Path(BASELINE_BIN).is_file():
                raise SystemExit("the ferry-baseline contender needs BENCH_BASELINE_BIN (a ferry-worker "
                                 "binary) or BENCH_BASELINE_BATCH (another maxRecords)")
            binary = Path(BASELINE_BIN)
        return [str(binary), "--log-format", "json", "receive", "--config", str(cfg)]
    if name == "bare-pipe":
        return [str(TARGET / "bench-kafka-to-redis"), "--bootstrap", BOOTSTRAP, "--topic", topic,
                "--group", group, "--redis", f"{REDIS_HOST}:{REDIS_PORT}", "--db", str(DB),
                "--depth", str(DEPTH), "--max-batch", str(BATCH), "--rdkafka", BARE_RDKAFKA]
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


IDLE_BUSY = float(os.environ.get("BENCH_IDLE_BUSY", "0.3"))
IDLE_WAIT_S = float(os.environ.get("BENCH_IDLE_WAIT_S", "120"))


def wait_idle() -> tuple[float, float]:
    """Waits (up to IDLE_WAIT_S) until the cores are less than IDLE_BUSY busy over 2 s: after
    a heavy point the broker goes on deleting topics and collecting garbage for a while (1.3
    cores at the next point once), which the next point would otherwise measure. Returns the
    seconds waited and the last busy share."""
    started = time.monotonic()
    while True:
        b0, t0 = machine_busy_s()
        time.sleep(2)
        b1, t1 = machine_busy_s()
        busy = (b1 - b0) / max(t1 - t0, 1e-9)
        waited = time.monotonic() - started
        if busy < IDLE_BUSY or waited > IDLE_WAIT_S:
            return waited, busy


def run_latency(name: str, offered: float, workdir: Path) -> dict:
    """Fixed offered load from the simulator (timestamps = now) on a fresh topic; the
    latency tool watches a sample of keys' lists through keyspace notifications."""
    idle_s, idle_busy = wait_idle()
    topic = f"ferry-bench-lat-{name}-{int(time.time())}"
    create_topic(topic)
    Redis().call("FLUSHDB")
    group = f"{topic}-g"
    cmd = pipeline_cmd(name, topic, group, workdir)
    per_source = offered / KEYS
    total_s = WARMUP_S + LATENCY_S + 2
    # About 200 samples a second whatever the load: more keys watched at low loads.
    sample_keys = int(min(KEYS, max(20, 200_000 / offered)))
    log(f"machine {idle_busy:.0%} busy after waiting {idle_s:.0f} s for it to settle")
    log(f"latency {name}: {offered:,.0f} records/s offered ({per_source:.2f}/s per source) for "
        f"{total_s:.0f} s, {sample_keys} keys watched")
    with open(workdir / f"latency-{name}-{offered:.0f}.log", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=err)
        try:
            time.sleep(3)  # join the group before the load starts; warm-up covers the rest
            from_ms = time.time() * 1000 + WARMUP_S * 1000
            probe = subprocess.Popen(
                [str(TARGET / "bench-latency"), "--redis", f"{REDIS_HOST}:{REDIS_PORT}", "--db", str(DB),
                 "--from-ms", f"{from_ms:.0f}", "--duration-s", str(LATENCY_S), "--keys", str(sample_keys),
                 "--key-space", str(KEYS)], stdout=subprocess.PIPE, stderr=err)
            cpu0 = proc_cpu_s(proc.pid)
            daemons = {d: daemon_pid(d) for d in ("kafka", "redis")}
            daemons_cpu0 = {d: proc_cpu_s(pid) for d, pid in daemons.items() if pid}
            busy0, total0 = machine_busy_s()
            sim_started = time.monotonic()
            sim = subprocess.Popen(
                [str(TARGET / "ferry-worker"), "--log-format", "json", "simulate",
                 "--bootstrap-servers", BOOTSTRAP, "--topic", topic, "--sources", str(KEYS),
                 "--rate", f"{per_source:.4f}", "--floats", str(FLOATS), "--format", "dsdata",
                 "--duration", f"{int(total_s)}s", "--progress-interval", "10s",
                 *[a for x in SIM_X for a in ("-X", x)]],
                stdout=err, stderr=err)
            # wait4, not wait: the simulator's own CPU comes with its exit status.
            usage = wait_with_rusage(sim, time.monotonic() + total_s + 120)
            sim_s = time.monotonic() - sim_started
            busy1, total1 = machine_busy_s()
            # What kept the machine's cores busy while the simulator ran: all of it, and
            # each process of the point (cores = CPU seconds / wall seconds).
            data_cores = {
                "machine_busy": (busy1 - busy0) / max(total1 - total0, 1e-9),
                "contender": (proc_cpu_s(proc.pid) - cpu0) / sim_s,
                "simulator": (usage.ru_utime + usage.ru_stime) / sim_s,
                **{d: (proc_cpu_s(daemons[d]) - c0) / sim_s for d, c0 in daemons_cpu0.items()},
            }
            out, _ = probe.communicate(timeout=120)
            if probe.returncode != 0:
                raise RuntimeError(f"bench-latency failed; see {workdir}/latency-{name}-{offered:.0f}.log")
            data = json.loads(out)
            data["cores"] = data_cores
            data["idle_wait"] = {"seconds": idle_s, "busy_at_start": idle_busy}
            data["offered"] = offered
            data["cpu_s"] = proc_cpu_s(proc.pid) - cpu0
            data["rss_mib"] = proc_hwm_mib(proc.pid)
        finally:
            stop(proc)
    sent = topic_end_offsets(topic) or 0
    data["achieved"] = sent / sim_s
    data["cpu_per_m"] = data["cpu_s"] / (sent / 1e6) if sent else float("nan")
    delete_topic(topic)
    delete_group(group)
    log(f"latency {name} at {offered:,.0f}/s (achieved {data['achieved']:,.0f}/s): p50 {data['p50_ms']:.1f} ms, "
        f"p99 {data['p99_ms']:.1f} ms over {data['samples']} samples")
    return data


WARM_POINTS_MAX = int(os.environ.get("BENCH_WARM_POINTS", "4"))


def warm_broker(offered: float, workdir: Path, notes: list[str]) -> None:
    """Discarded bare-pipe points at the curve's lowest load until Kafka's CPU share settles.

    A broker that has served only the bulk load has not yet run (or compiled) its path for
    small produce and fetch requests: on a freshly started broker, the first 1,000 records/s
    point took 1.09 of the two cores for Kafka against 0.57 and 0.40 for the two after it, and
    that first point is always Ferry's. A point counts as settled when Kafka's cores moved by
    less than a fifth from the point before."""
    shares = []
    for _ in range(WARM_POINTS_MAX):
        data = run_latency("bare-pipe", offered, workdir)
        if "kafka" not in data["cores"]:
            log("broker warm-up: Kafka's process not found, so its CPU share cannot settle; one point only")
            notes.append("Before the latency curve, one discarded bare-pipe point; Kafka's process was "
                         "not found, so whether the broker had settled is unknown.")
            return
        shares.append(data["cores"]["kafka"])
        if len(shares) >= 2 and abs(shares[-1] - shares[-2]) <= 0.2 * shares[-2]:
            break
    cells = ", ".join(f"{s:.2f}" for s in shares)
    log(f"broker warm-up at {offered:,.0f} records/s: Kafka cores per point {cells}")
    notes.append(f"Before the latency curve, {len(shares)} discarded bare-pipe point(s) at "
                 f"{offered:,.0f} records/s warmed the broker; Kafka's cores per point: {cells}.")


def curve_loads(summary: dict) -> dict[str, list[float]]:
    """Offered loads per curve contender: the common points up to 80% of its own max, then
    80% of its max. Half Ferry's max is a common point, so Ferry and the limit meet there."""
    pipes = [p for p in CURVE if p in summary]
    if CURVE_LOADS:
        common = CURVE_LOADS
    else:
        common = [1000.0, 10000.0, 100000.0]
        if "ferry" in summary:
            common.append(0.5 * summary["ferry"]["rate"])
    out = {}
    for p in pipes:
        top = 0.8 * summary[p]["rate"]
        points = sorted({round(x) for x in common if x < top * 0.95})
        if not CURVE_LOADS:
            points.append(round(top))
        out[p] = [float(x) for x in points]
    return out


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
        color = COLORS.get(name, "#8c959f")
        parts.append(f'<text x="{left - 10}" y="{y + bar_h * 0.68:.0f}" font-size="13" text-anchor="end">{label}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 8:.1f}" y="{y + bar_h * 0.68:.0f}" font-size="13">{fmt_rate(rate)}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


COLORS = {"ferry": "#1f6feb", "redpanda-connect": "#d1242f", "redpanda-connect-notrim": "#f08c8c",
          "bare-pipe": "#57606a"}


def svg_latency(latency: dict, path: Path, subtitle: str) -> None:
    """p99 (solid) and p50 (dashed) against offered load, both axes logarithmic."""
    import math
    width, height, left, right, top, bottom = 980, 520, 80, 330, 70, 60
    pts = [(d["offered"], d[q]) for c in latency.values() for d in c for q in ("p50_ms", "p99_ms")]
    if not pts:
        return
    x0, x1 = math.log10(min(x for x, _ in pts)), math.log10(max(x for x, _ in pts))
    y0 = math.floor(math.log10(max(0.1, min(y for _, y in pts))))
    y1 = math.ceil(math.log10(max(y for _, y in pts)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    pw, ph = width - left - right, height - top - bottom

    def px(x):
        return left + (math.log10(x) - x0) / (x1 - x0) * pw

    def py(y):
        return top + ph - (math.log10(max(y, 10 ** y0)) - y0) / (y1 - y0) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="20" y="30" font-size="18" font-weight="bold">Produce → visible in Redis: p99 (solid) and p50 '
        '(dashed) ms vs offered records/s (lower is better)</text>',
        f'<text x="20" y="52" font-size="12" fill="#555">{subtitle}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#d0d7de"/>',
    ]
    for e in range(int(y0), int(y1) + 1):
        y = py(10 ** e)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" font-size="12" text-anchor="end">{10 ** e:g}</text>')
    for e in range(math.ceil(x0), math.floor(x1) + 1):
        x = px(10 ** e)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 18}" font-size="12" text-anchor="middle">{10 ** e:,.0f}</text>')
    parts.append(f'<text x="{left + pw / 2:.0f}" y="{height - 15}" font-size="12" text-anchor="middle">'
                 'offered records/s (log)</text>')
    parts.append(f'<text x="20" y="{top + ph / 2:.0f}" font-size="12" transform="rotate(-90 20 {top + ph / 2:.0f})" '
                 'text-anchor="middle">ms (log)</text>')
    for i, (name, points) in enumerate(latency.items()):
        color = COLORS.get(name, "#8c959f")
        for q, dash in (("p99_ms", ""), ("p50_ms", ' stroke-dasharray="5,4"')):
            path_d = " ".join(f"{px(d['offered']):.1f},{py(d[q]):.1f}" for d in points)
            parts.append(f'<polyline points="{path_d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for d in points:
                parts.append(f'<circle cx="{px(d["offered"]):.1f}" cy="{py(d[q]):.1f}" r="3" fill="{color}"/>')
        ly = top + 10 + i * 22
        parts.append(f'<line x1="{width - right + 20}" x2="{width - right + 44}" y1="{ly}" y2="{ly}" '
                     f'stroke="{color}" stroke-width="3"/>')
        parts.append(f'<text x="{width - right + 50}" y="{ly + 4}" font-size="12">{LABELS[name]}</text>')
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


def at_load(points: list[dict], offered: float) -> dict | None:
    return next((d for d in points if abs(d["offered"] - offered) < 1), None)


def cores_cells(point: dict) -> str:
    """A latency point's machine busy share and the cores each process used."""
    cores = point.get("cores")
    if not cores:
        return "– | –"
    each = " / ".join(f"{cores[k]:.2f}" if k in cores else "–" for k in ("contender", "simulator", "kafka", "redis"))
    return f"{cores['machine_busy']:.0%} | {each}"


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
        f"trimmed to {DEPTH} (Redpanda Connect LPUSH-only: not trimmed); FLUSHDB between contenders; "
        f"{RUNS} runs each, interleaved. Redpanda Connect: input batching count {RPC_COUNT}, period "
        f"{RPC_PERIOD}, output max_in_flight {RPC_MAX_IN_FLIGHT}, checkpoint_limit {RPC_CHECKPOINT_LIMIT}.",
        "",
        "![records/s](throughput.svg)",
        "",
        "| contender | records/s (median) | runs | CPU s / M records | peak RSS MiB | "
        "Redis CPU s / M | heads wrong / list len |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for name, row in s.items():
        is_pipe = name in PIPELINES
        redis_cpu = f"{row['redis_cpu_per_m']:.1f}" if is_pipe else "–"
        heads = f"{row['heads_wrong']} / {row['lengths'].get('min')}–{row['lengths'].get('max')}" if is_pipe else "–"
        lines.append(
            f"| {LABELS[name]} | {fmt_rate(row['rate'])} | {', '.join(fmt_rate(r) for r in row['runs'])} | "
            f"{row['cpu_per_m']:.2f} | {row['rss']:.0f} | {redis_cpu} | {heads} |"
        )
    for name, why in evidence.items():
        lines.append(f"| {LABELS[name]} | not measured | – | – | – | – | {why} |")
    lines += ["", "## Ratios (same run)", ""]
    if "ferry" in s:
        f = s["ferry"]
        for peer in s:
            if peer == "ferry":
                continue
            p = s[peer]
            extra = ""
            if peer in ("redpanda-connect", "redpanda-connect-notrim"):
                extra = (f"; CPU per record {p['cpu_per_m'] / f['cpu_per_m']:.2f}× Ferry's; "
                         f"peak RSS {p['rss'] / f['rss']:.2f}× Ferry's")
            lines.append(f"- Ferry ÷ {LABELS[peer]}: records/s **{f['rate'] / p['rate']:.2f}×**{extra}")
        if "ferry-baseline" in s and "bare-consume" in s:
            # Per run, each build against the bare consume measured beside it, then medians.
            now = [a / b for a, b in zip(f["runs"], s["bare-consume"]["runs"])]
            before = [a / b for a, b in zip(s["ferry-baseline"]["runs"], s["bare-consume"]["runs"])]
            lines.append(f"- Ferry ÷ bare consume, per run: {', '.join(f'{r:.3f}' for r in now)} "
                         f"(median **{median(now):.3f}×**); baseline: "
                         f"{', '.join(f'{r:.3f}' for r in before)} (median **{median(before):.3f}×**); "
                         f"this build keeps **{median(now) / median(before):.3f}×** of the baseline's ratio")
    if latency:
        lines += ["", "## Latency against offered load (same run)", "",
                  "![latency](latency.svg)", "",
                  "Produce → visible in Redis, per record of a sample of keys; the simulator paces the load "
                  f"({WARMUP_S:.0f} s warm-up, {LATENCY_S:.0f} s measured per point). "
                  "CPU s / M: the contender's own CPU over the point, per million records sent. "
                  f"Before each point the run waits (up to {IDLE_WAIT_S:.0f} s) for the cores to be less than "
                  f"{IDLE_BUSY:.0%} busy over 2 s. "
                  f"Machine busy: the share of all {os.cpu_count()} cores not idle while the simulator ran "
                  "(/proc/stat); cores: each process's CPU seconds per second over the same time.", "",
                  "| contender | offered records/s | achieved | p50 ms | p99 ms | p99.9 ms | samples | "
                  "CPU s / M | peak RSS MiB | machine busy | cores: contender / simulator / Kafka / Redis |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for name, points in latency.items():
            for d in points:
                lines.append(f"| {LABELS[name]} | {fmt_rate(d['offered'])} | {fmt_rate(d['achieved'])} | "
                             f"{d['p50_ms']:.1f} | {d['p99_ms']:.1f} | {d['p999_ms']:.1f} | {d['samples']:,} | "
                             f"{d['cpu_per_m']:.2f} | {d['rss_mib']:.0f} | {cores_cells(d)} |")
        fl, bl = latency.get("ferry", []), latency.get("bare-pipe", [])
        checks = []
        if fl and "ferry" in s:
            half = at_load(fl, round(0.5 * s["ferry"]["rate"]))
            bare_half = at_load(bl, round(0.5 * s["ferry"]["rate"]))
            if half and bare_half:
                checks.append(f"at half Ferry's max ({fmt_rate(half['offered'])} records/s) Ferry's p99 is "
                              f"{half['p99_ms']:.1f} ms, {half['p99_ms'] / bare_half['p99_ms']:.2f}× the limit's "
                              f"{bare_half['p99_ms']:.1f} ms"
                              + (f" (cores {half['cores']['machine_busy']:.0%} busy)" if half.get("cores") else ""))
            low = at_load(fl, 1000)
            if low:
                checks.append(f"at 1,000 records/s Ferry's p99 is {low['p99_ms']:.1f} ms "
                              f"(limit: {at_load(bl, 1000)['p99_ms']:.1f} ms)" if at_load(bl, 1000) else
                              f"at 1,000 records/s Ferry's p99 is {low['p99_ms']:.1f} ms")
        if "ferry" in s and "bare-consume" in s:
            checks.append(f"Ferry drains at {s['ferry']['rate'] / s['bare-consume']['rate']:.2f}× the bare consume")
        if checks:
            lines += ["", "In this run: " + "; ".join(checks) + "."]
    lines += ["", "## Machine and noise", ""] + [f"- {n}" for n in machine_notes() + notes]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    (OUT / "results.json").write_text(json.dumps(
        {"summary": summary, "latency": latency, "runs": [r.__dict__ for r in results], "notes": notes},
        indent=2, default=str) + "\n")
    subtitle = (f"{RECORDS:,} records, {KEYS} keys, {PARTITIONS} partitions, lists trimmed to {DEPTH}; "
                f"one run of make bench on {started_at}")
    svg_chart(summary, OUT / "throughput.svg", subtitle)
    if latency:
        svg_latency(latency, OUT / "latency.svg",
                    f"{KEYS} keys, {PARTITIONS} partitions, simulator-paced; one run of make bench on {started_at}")
    log(f"wrote {OUT / 'results.md'}, {OUT / 'throughput.svg'} and {OUT / 'latency.svg'}")


def main() -> int:
    default = [c for c in ALL if c != "ferry-baseline"]
    wanted = [c.strip() for c in os.environ.get("BENCH_CONTENDERS", ",".join(default)).split(",") if c.strip()]
    for w in wanted:
        if w not in ALL:
            raise SystemExit(f"unknown contender {w!r}; known: {', '.join(ALL)}")
    began = time.monotonic()
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
            if name in PIPELINES:
                results.append(run_pipeline(name, run, topic, expected, workdir))
            else:
                results.append(run_tool(name, run, topic, text_bytes, workdir))
    summary = summarize(results)

    latency: dict[str, list[dict]] = {}
    if LATENCY_S > 0:
        loads = curve_loads(summary)
        offered_loads = sorted({x for xs in loads.values() for x in xs})
        if WARM_POINTS_MAX > 0 and offered_loads:
            warm_broker(offered_loads[0], workdir, notes)
        # Interleaved by load, lowest first, so a noisy minute hits every contender alike.
        for offered in offered_loads:
            for name in loads:
                if offered in loads[name]:
                    latency.setdefault(name, []).append(run_latency(name, offered, workdir))
    la = loadavg()
    notes.append(f"1-minute load average at the end: {la:.2f}; the run took {(time.monotonic() - began) / 60:.0f} min.")
    Redis().call("FLUSHDB")
    write_report(summary, latency, results, notes, evidence, started_at, text_bytes)
    print((OUT / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
