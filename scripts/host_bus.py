#!/usr/bin/env python3
"""The host side of the disk row (issue 17): how fast N threads read the page cache into
pinned memory, how fast pinned memory crosses PCIe, and both at once, on this machine.

Usage: python3 scripts/host_bus.py CHECKPOINT_DIR [READERS]
Needs torch with CUDA. Reads the first 1.5 GiB of the directory's *.safetensors
(warmed first) in 4 MiB chunks.

  A   readers only, into one large pinned buffer (the weight stream's staging)
  B   host-to-device copies only, 2 GiB pinned
  C   both at once: the readers' rate while a copy loop runs, and that loop's rate
  D   file -> GPU: everything read, then copied (the stream's order for one module);
      then through rings of small pinned chunks, one copier thread issuing the copies.
      The ring's figures carry Python's cost per 4 MiB chunk (event waits and the
      copier's turns under the GIL); they bound nothing a C++ ring would do.
"""
import glob, os, sys, threading, time
import torch

files = sorted(glob.glob(sys.argv[1] + "/*.safetensors"))
N = int(sys.argv[2]) if len(sys.argv) > 2 else 15
SIZE, CH = 1536 << 20, 4 << 20
chunks = []
for f in files:
    for o in range(0, os.path.getsize(f) - CH, CH):
        if len(chunks) * CH >= SIZE: break
        chunks.append((f, o))
SIZE = len(chunks) * CH
fds = {f: os.open(f, os.O_RDONLY) for f in files}
for f, o in chunks: os.pread(fds[f], CH, o)  # warm
big = torch.empty(SIZE, dtype=torch.uint8).pin_memory()
bigv = memoryview(big.numpy())
gpu = torch.empty(SIZE, dtype=torch.uint8, device="cuda")
src = torch.empty(2 << 30, dtype=torch.uint8).pin_memory()
gsrc = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
cs = torch.cuda.Stream()

def read_all(dst_of, n=N, before=None, after=None):
    nxt = [0]; lock = threading.Lock()
    def work():
        while True:
            with lock:
                i = nxt[0]; nxt[0] += 1
            if i >= len(chunks): return
            if before: before(i)
            f, o = chunks[i]
            os.preadv(fds[f], [dst_of(i)], o)
            if after: after(i)
    ts = [threading.Thread(target=work) for _ in range(n)]
    t0 = time.perf_counter()
    for t in ts: t.start()
    for t in ts: t.join()
    return SIZE / (time.perf_counter() - t0) / 1e9

def h2d(reps=3):
    with torch.cuda.stream(cs):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(reps): gsrc.copy_(src, non_blocking=True)
        cs.synchronize()
    return reps * src.numel() / (time.perf_counter() - t0) / 1e9

def with_h2d_loop(fn):
    stop = [False]; moved = [0]; span = [0]
    def loop():
        t0 = time.perf_counter()
        with torch.cuda.stream(cs):
            while not stop[0]:
                gsrc[: 256 << 20].copy_(src[: 256 << 20], non_blocking=True); cs.synchronize(); moved[0] += 256 << 20
        span[0] = time.perf_counter() - t0
    t = threading.Thread(target=loop); t.start(); time.sleep(0.05)
    r = fn(); stop[0] = True; t.join()
    return r, moved[0] / span[0] / 1e9

print(f"{len(files)} files, {SIZE >> 20} MiB in {len(chunks)} chunks of {CH >> 20} MiB, {N} readers")
print("A readers only into a big pinned buffer: " + " ".join(f"{read_all(lambda i: bigv[i*CH:(i+1)*CH]):.1f}" for _ in range(3)) + " GB/s")
for n in (4, 8):
    print(f"A' {n} readers: {read_all(lambda i: bigv[i*CH:(i+1)*CH], n):.1f} GB/s")
print("B H2D only (2 GiB pinned): " + " ".join(f"{h2d():.1f}" for _ in range(2)) + " GB/s")
r, c = with_h2d_loop(lambda: read_all(lambda i: bigv[i*CH:(i+1)*CH]))
print(f"C both at once: readers {r:.1f} GB/s while H2D {c:.1f} GB/s")
r, c = with_h2d_loop(lambda: read_all(lambda i: bigv[i*CH:(i+1)*CH], 4))
print(f"C' both at once, 4 readers: readers {r:.1f} GB/s while H2D {c:.1f} GB/s")

# D: file -> GPU through a ring of R chunks: a reader waits for its slot's last copy,
# reads, and marks the chunk ready; one copier issues the copies in order.
def ring_pass(R):
    ring = torch.empty(R * CH, dtype=torch.uint8).pin_memory(); ringv = memoryview(ring.numpy())
    ready = [threading.Event() for _ in chunks]; evs = [None] * len(chunks); evready = [threading.Event() for _ in chunks]
    def before(i):
        if i >= R:
            evready[i - R].wait(); evs[i - R].synchronize()
    def copier():
        with torch.cuda.stream(cs):
            for i in range(len(chunks)):
                ready[i].wait()
                s = i % R
                gpu[i*CH:(i+1)*CH].copy_(ring[s*CH:(s+1)*CH], non_blocking=True)
                e = torch.cuda.Event(); e.record(cs); evs[i] = e; evready[i].set()
            cs.synchronize()
    t = threading.Thread(target=copier); t0 = time.perf_counter(); t.start()
    read_all(lambda i: ringv[(i % R)*CH:(i % R + 1)*CH], N, before, lambda i: ready[i].set())
    t.join()
    return SIZE / (time.perf_counter() - t0) / 1e9

def staged_pass():  # the stream's way: read all into the big buffer, then copy it
    t0 = time.perf_counter(); read_all(lambda i: bigv[i*CH:(i+1)*CH])
    with torch.cuda.stream(cs):
        gpu.copy_(big, non_blocking=True); cs.synchronize()
    return SIZE / (time.perf_counter() - t0) / 1e9

print("D file->GPU, read all then copy: " + " ".join(f"{staged_pass():.1f}" for _ in range(2)) + " GB/s")
for R in (4, 8, 16, 64):
    print(f"D file->GPU through a ring of {R} x 4 MiB: " + " ".join(f"{ring_pass(R):.1f}" for _ in range(2)) + " GB/s")
