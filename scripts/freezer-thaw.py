# What thawing a cgroup costs by itself, outside Wharf (docs/benchmarks.md, "Round 4").
# A one-thread echo server in a v1 freezer cgroup; each trial idles 50 ms, then one byte's round
# trip warm (never frozen), then again after freezing the cgroup, with `THAWED` written just
# before the send. ANCHOR=1 keeps a second, empty cgroup frozen meanwhile (what Wharf's
# FreezerAnchor does), which keeps the kernel's freezer static key on. Needs root and the v1
# freezer; removes its cgroups and process.
#   sudo python3 scripts/freezer-thaw.py [TRIALS]; sudo ANCHOR=1 python3 scripts/freezer-thaw.py
import os, socket, subprocess, sys, time
CG = "/sys/fs/cgroup/freezer/wharf-thawtest"
os.makedirs(CG, exist_ok=True)
KEEP = CG + "-anchor" if os.environ.get("ANCHOR") else None
if KEEP:
    os.makedirs(KEEP, exist_ok=True); open(f"{KEEP}/freezer.state", "w").write("FROZEN")
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
child = subprocess.Popen([sys.executable, "-c", f"""
import socket
s = socket.socket(); s.connect(("127.0.0.1", {port}))
while True:
    b = s.recv(1)
    if not b: break
    s.send(b)
"""])
conn, _ = srv.accept(); conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
try:
    open(f"{CG}/cgroup.procs", "w").write(str(child.pid))
    warm, thaw, write_only = [], [], []
    for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 200):
        time.sleep(0.05)
        t0 = time.perf_counter(); conn.send(b"x"); conn.recv(1); warm.append(time.perf_counter() - t0)
        open(f"{CG}/freezer.state", "w").write("FROZEN")
        while open(f"{CG}/freezer.state").read().strip() != "FROZEN": time.sleep(0.001)
        time.sleep(0.05)
        t0 = time.perf_counter()
        with open(f"{CG}/freezer.state", "w") as f: f.write("THAWED")
        t1 = time.perf_counter()
        conn.send(b"x"); conn.recv(1); thaw.append(time.perf_counter() - t0); write_only.append(t1 - t0)
    q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))] * 1e6
    for name, xs in [("warm round trip", warm), ("thaw write + round trip", thaw), ("thaw write alone", write_only)]:
        print(f"{name:26} p50 {q(xs, .5):7.0f} us  p99 {q(xs, .99):7.0f} us")
finally:
    open(f"{CG}/freezer.state", "w").write("THAWED")
    child.kill(); child.wait()
    os.rmdir(CG)
    if KEEP:
        open(f"{KEEP}/freezer.state", "w").write("THAWED"); os.rmdir(KEEP)
