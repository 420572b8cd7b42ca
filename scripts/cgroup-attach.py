# What moving a process into a cgroup costs by itself, outside Wharf (docs/benchmarks.md,
# "Round 5"): each trial idles 100 ms, forks a child that sleeps, and times the write of its pid
# to `cgroup.procs` of a fresh cgroup of one v1 controller (or of the cgroup2 root when the
# controller is "unified"). libcontainer makes such a write for every container it creates.
# Prints whether the cgroup2 mount has `favordynmods`, which decides the result. Needs root;
# removes its cgroup and children.
#   sudo python3 scripts/cgroup-attach.py [CONTROLLER] [TRIALS]    # CONTROLLER: pids (default)
import os, sys, time
controller = sys.argv[1] if len(sys.argv) > 1 else "pids"
trials = int(sys.argv[2]) if len(sys.argv) > 2 else 20
root = "/sys/fs/cgroup/unified" if controller == "unified" else f"/sys/fs/cgroup/{controller}"
if not os.path.isdir(root):
    root = "/sys/fs/cgroup"  # pure v2
cg = f"{root}/wharf-attach-probe-{os.getpid()}"
os.makedirs(cg)
if controller == "cpuset":
    for f in ("cpuset.cpus", "cpuset.mems"):
        open(f"{cg}/{f}", "w").write(open(f"{root}/{f}").read())
favoring = any(
    " - cgroup2 " in line and "favordynmods" in line.rsplit(" ", 1)[-1]
    for line in open("/proc/self/mountinfo")
)
times = []
try:
    for _ in range(trials):
        time.sleep(0.1)
        pid = os.fork()
        if pid == 0:
            time.sleep(0.5)
            os._exit(0)
        try:
            t0 = time.perf_counter()
            open(f"{cg}/cgroup.procs", "w").write(str(pid))
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
finally:
    for _ in range(50):
        try:
            os.rmdir(cg)
            break
        except OSError:
            time.sleep(0.02)
times.sort()
print(f"{controller}: favordynmods {'on' if favoring else 'off'}; moving a process took "
      f"p50 {times[len(times) // 2]:.3f} ms, min {times[0]:.3f}, max {times[-1]:.3f} ({trials} trials)")
