"""The checks that need the real gateway running: openapi.yaml against its answers (schemathesis) and
its /metrics against Prometheus's naming rules (promtool check metrics). Run by `deploy/check live`.

    python deploy/live_check.py --gateway target/debug/box-upload-gateway --promtool PATH --venv VENV --out DIR

Starts `serve --emulator` on a loopback port (port 0) with the emulator overlay's settings file
(deploy/overlays/emulator/gateway.toml), uploads a chunked and a direct file with curl,
runs schemathesis against openapi.yaml (every check but two, see EXCLUDED_CHECKS) and, side by side,
once more against a second gateway with an API key configured (the 401/403/413 answers of the access
rules), scrapes /metrics and runs promtool on it, and checks the emulators hold no session left open. Every step has a time limit; the gateways are
stopped at the end whatever happens. Exits 1 on any failure.
"""

import argparse
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Bounds of the schemathesis runs: per operation, and for a whole run (all phases).
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "25"))
MAX_TIME_SECS = int(os.environ.get("SCHEMATHESIS_MAX_TIME_SECS", "60"))
# Every check but two, which judge a request by its schema alone: whether this API accepts a request
# depends on how its parts relate (the body against the declared size and SHA-1, the name against
# Box's rules, the size against the API key's limit), which a schema cannot say; so schema-valid
# requests get 400/413 (`positive_data_acceptance`), and a request with an unknown header, which HTTP
# allows, is accepted (`negative_data_rejection`). The status, headers and body of every answer are
# still checked against openapi.yaml, and no answer may be a 5xx.
EXCLUDED_CHECKS = "positive_data_acceptance,negative_data_rejection"
SEED = "20261122"
# The key of the second run, and the one folder it may upload into.
API_KEY = "live-check-key-0123456789abcdef"
KEY_FOLDER = "0"


class Gateway:
    """`serve --emulator` on 127.0.0.1:0, its port and the emulator's URL read from its JSON log."""

    def __init__(self, binary, workdir, log, env=()):
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--emulator", f"--emulator-data-dir={workdir}/emulator"],
            env={
                "PATH": os.environ["PATH"],
                "GATEWAY_LISTEN": "127.0.0.1:0",
                "GATEWAY_LOG_FORMAT": "json",
                "GATEWAY_SPOOL_DIR": f"{workdir}",
                # One embedded state store per process (two run side by side).
                "GATEWAY_STATE_DIR": f"{workdir}/state",
                "RUST_LOG": "info",
                **dict(env),
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.port = self.emulator = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise SystemExit(f"the gateway exited with {self.proc.returncode}: see {log}")
            for line in pathlib.Path(log).read_text().splitlines():
                try:
                    entry = json.loads(line)
                    fields = {**entry, **entry.get("fields", {})}
                except ValueError:
                    continue
                self.emulator = fields.get("emulator", self.emulator)
                self.port = fields.get("port", self.port)
            time.sleep(0.1)
        if self.port is None:
            self.stop()
            raise SystemExit(f"the gateway logged no port within 30 s: see {log}")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def run(step, cmd, timeout, **kw):
    print(f"== {step}", flush=True)
    started = time.monotonic()
    result = subprocess.run(cmd, timeout=timeout, **kw)
    print(f"-- {step}: exit {result.returncode} in {time.monotonic() - started:.1f} s", flush=True)
    return result


def upload(gateway, path, how):
    if how == "multipart":
        cmd = ["curl", "-sS", "--max-time", "120", "-F", f"file=@{path}", f"{gateway.url}/v1/folders/0/files"]
    else:
        cmd = ["curl", "-sS", "--max-time", "120", "-T", str(path), f"{gateway.url}/v1/folders/0/files/{path.name}"]
    answer = json.loads(subprocess.run(cmd, check=True, capture_output=True, timeout=130).stdout)
    expected = hashlib.sha1(path.read_bytes()).hexdigest()
    if answer.get("upload", {}).get("sha1") != expected:
        raise SystemExit(f"upload of {path.name} ({how}) did not land: {answer}")
    return answer["upload"]["method"]


def schemathesis(venv, gateway, out, name, extra=()):
    """Starts schemathesis against `gateway`, its output into out/schemathesis-NAME.txt; `finish` waits."""
    report = out / f"schemathesis-{name}.xml"
    step = f"schemathesis ({name}): openapi.yaml against {gateway.url}, at most {MAX_EXAMPLES} examples per operation, {MAX_TIME_SECS} s"
    print(f"== {step} (started)", flush=True)
    output = open(out / f"schemathesis-{name}.txt", "w")
    proc = subprocess.Popen(
        [
            f"{venv}/bin/schemathesis", "run", str(ROOT / "openapi.yaml"),
            "--url", gateway.url,
            "--checks", "all",
            "--exclude-checks", EXCLUDED_CHECKS,
            # A tus PATCH body is application/offset+octet-stream, which schemathesis cannot generate;
            # tests/api/tus.rs drives it with tuspy and curl.
            "--exclude-operation-id", "tusPatch",
            "--max-examples", str(MAX_EXAMPLES),
            "--max-time", str(MAX_TIME_SECS),
            "--seed", SEED,
            # One worker: with two, Python 3.11's ast.parse (hypothesis calls it) fails now and then with
            # "AST constructor recursion depth mismatch".
            "--workers", "1",
            "--request-timeout", "30",
            "--generation-database", "none",
            "--no-color",
            "--report", "junit", "--report-junit-path", str(report),
            *extra,
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
        # Whatever schemathesis keeps for itself goes there, not into the work tree.
        cwd=out,
    )
    return step, proc, output, time.monotonic()


def finish(run):
    """Waits for a schemathesis run `schemathesis` started, prints its output; its exit code."""
    step, proc, output, started = run
    try:
        code = proc.wait(timeout=MAX_TIME_SECS + 120 - (time.monotonic() - started))
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    output.close()
    print(f"== {step}", flush=True)
    print(pathlib.Path(output.name).read_text(), end="", flush=True)
    print(f"-- {step}: exit {code} in {time.monotonic() - started:.1f} s", flush=True)
    return code


def open_sessions(gateway):
    state = json.load(urllib.request.urlopen(f"{gateway.emulator}/_emulator/state", timeout=10))
    return [s["id"] for s in state["sessions"] if s["state"] == "open"]


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--gateway", required=True)
    args.add_argument("--promtool", required=True)
    args.add_argument("--venv", required=True)
    args.add_argument("--out", required=True)
    args = args.parse_args()
    out = pathlib.Path(args.out).resolve()
    venv = pathlib.Path(args.venv).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = {}  # check -> None when it passed, else what failed

    with tempfile.TemporaryDirectory(prefix="live-check-") as tmp:
        tmp = pathlib.Path(tmp)
        big, small = tmp / "big.bin", tmp / "small.bin"
        big.write_bytes(os.urandom(21_000_000))
        small.write_bytes(os.urandom(100_000))

        keys = tmp / "api-keys.toml"
        keys.write_text(
            "[[keys]]\n"
            'name = "live-check"\n'
            f'sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"\n'
            f'folders = ["{KEY_FOLDER}"]\n'
            "max_file_size_bytes = 1000\n"
        )
        # With the emulator overlay's settings file, so the real binary accepts it (unknown keys and bad
        # values are refused at start); the environment moves only the port, the spool and the state store.
        anonymous = Gateway(
            args.gateway,
            tmp / "anonymous",
            out / "gateway-anonymous.log",
            {"GATEWAY_CONFIG": str(ROOT / "deploy/overlays/emulator/gateway.toml")},
        )
        keyed = None
        try:
            keyed = Gateway(args.gateway, tmp / "keyed", out / "gateway-keyed.log", {"GATEWAY_API_KEYS_FILE": str(keys)})
            # Every series exists before the scrape: a chunked upload (parts, sessions, commit) and a
            # direct one.
            print(f"== uploads through {anonymous.url}: {upload(anonymous, big, 'multipart')}, {upload(anonymous, small, 'raw')}")
            # The two schemathesis runs side by side (each one Python process against its own gateway,
            # and each stopped by its --max-time): one --max-time of wall time instead of two, each run with
            # about one core.
            runs = [
                schemathesis(venv, anonymous, out, "anonymous"),
                schemathesis(venv, keyed, out, "api-key", ["--header", f"X-API-Key: {API_KEY}"]),
            ]
            results["schemathesis, anonymous"] = finish(runs[0]) and "see above"
            results["schemathesis, with an API key"] = finish(runs[1]) and "see above"
            metrics = out / "metrics.txt"
            metrics.write_bytes(urllib.request.urlopen(f"{anonymous.url}/metrics", timeout=10).read())
            promtool = run(
                f"promtool check metrics on a live scrape ({metrics.stat().st_size} bytes)",
                [args.promtool, "check", "metrics"],
                timeout=60,
                stdin=open(metrics, "rb"),
                capture_output=True,
                text=True,
            )
            # promtool exits 0 on some lint findings but prints them: both count.
            findings = (promtool.stdout + promtool.stderr).strip()
            results["promtool check metrics"] = (promtool.returncode or findings) and findings
            results["no session left open, anonymous"] = open_sessions(anonymous)
            results["no session left open, with an API key"] = open_sessions(keyed)
        finally:
            anonymous.stop()
            if keyed:
                keyed.stop()

    failed = {check: why for check, why in results.items() if why}
    for check, why in failed.items():
        print(f"FAILED: {check}: {why}", file=sys.stderr)
    print(f"live checks: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
