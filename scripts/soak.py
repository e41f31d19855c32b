#!/usr/bin/env python3
"""Soak test for `cascade serve` (issue 6; a script, not CI).

Starts the daemon with CONFIG, runs CLIENTS concurrent clients for SECONDS (mixed
streaming / non-streaming, sampled, random lengths, some disconnecting mid-stream),
and reports the resident memory of the daemon and its stages at the start and the end,
requests done and failed.

  python3 scripts/soak.py --config examples/demo.toml --clients 64 --seconds 600
"""
import argparse, http.client, json, os, random, socket, subprocess, sys, threading, time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def get(sock, path):
    c = UnixConnection(sock)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/demo.toml")
    ap.add_argument("--binary", default="build/cascade")
    ap.add_argument("--socket", default="cascade.sock", help="server.socket as the config resolves it")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=600)
    a = ap.parse_args()
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    log = open("soak-daemon.log", "w")
    daemon = subprocess.Popen([a.binary, "serve", "--config", a.config], stderr=log, env=env)
    for _ in range(300):
        if os.path.exists(a.socket):
            break
        time.sleep(0.1)
    time.sleep(0.3)
    health = json.loads(get(a.socket, "/health")[1])
    pids = [health["pid"]] + [s["pid"] for s in health["stages"]]
    rss0 = {p: rss_kib(p) for p in pids}
    stop = time.time() + a.seconds
    counts = {"ok": 0, "failed": 0, "disconnected": 0, "tokens": 0}
    errors = []
    lock = threading.Lock()

    def client(i):
        rnd = random.Random(i)
        while time.time() < stop:
            stream = rnd.random() < 0.5
            body = {"prompt": rnd.choice(["def ", "import ", "class A:\n", "for x in "]) + str(rnd.randint(0, 999)),
                    "max_tokens": rnd.randint(1, 96), "temperature": rnd.choice([0, 0.7, 1.0]),
                    "seed": rnd.randint(0, 1 << 30), "stream": stream}
            try:
                c = UnixConnection(a.socket)
                c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
                r = c.getresponse()
                if stream and rnd.random() < 0.1:  # leave mid-stream
                    r.read(200)
                    c.close()
                    with lock:
                        counts["disconnected"] += 1
                    continue
                data = r.read()
                ok = r.status == 200 and (not stream or data.rstrip().endswith(b"data: [DONE]"))
                with lock:
                    if ok:
                        counts["ok"] += 1
                    else:
                        counts["failed"] += 1
                        errors.append(f"{r.status} {data[:200]!r}")
            except Exception as e:  # noqa: BLE001 - a soak counts every failure
                with lock:
                    counts["failed"] += 1
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    metrics = get(a.socket, "/metrics")[1].decode()
    gen = [l for l in metrics.splitlines() if l.startswith("cascade_generated_tokens_total")]
    rss1 = {p: rss_kib(p) for p in pids}
    daemon.terminate()
    rc = daemon.wait(timeout=60)
    print(f"soak: {a.clients} clients, {elapsed:.0f} s, config {a.config}")
    print(f"requests: {counts['ok']} ok, {counts['failed']} failed, {counts['disconnected']} left mid-stream on purpose")
    print(gen[0] if gen else "no token counter")
    for p in pids:
        role = "daemon" if p == pids[0] else "stage"
        print(f"RSS {role} pid {p}: start {rss0[p] / 1024:.1f} MiB, end {rss1[p] / 1024:.1f} MiB")
    print(f"daemon exit code after SIGTERM: {rc}")
    for e in errors[:10]:
        print("error:", e)
    return 0 if counts["failed"] == 0 and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
