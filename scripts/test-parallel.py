#!/usr/bin/env python3
"""Runs the workspace's test binaries several at a time (what `cargo test --workspace` runs one
after the other), for `bash scripts/test` without arguments.

Why: the end-to-end binaries spend most of their time waiting on real servers, containers and
Python clients, so on a 2-core machine two or three of them side by side take about half the
wall time of running them in sequence. Each binary still runs its own tests in parallel as
`cargo test` would, in its package's directory with the environment cargo gives it, and its
whole output is printed in one piece when it ends (never interleaved), with its wall time.

Usage: python3 scripts/test-parallel.py [--jobs N]   (default: WHARF_TEST_JOBS, else 3)
Exit status: 0 when every binary passed, 101 (cargo's) when any failed.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cargo(*args, capture=False):
    command = [os.environ.get("CARGO", "cargo"), *args]
    if capture:
        return subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    subprocess.run(command, cwd=ROOT, check=True)
    return ""


def test_binaries():
    """Builds every test target of the workspace and returns what cargo built, as dicts with
    the package, the source file, the executable and the package directory."""
    output = cargo("test", "--workspace", "--no-run", "--message-format=json-render-diagnostics", capture=True)
    binaries = []
    for line in output.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        if not message.get("profile", {}).get("test"):
            continue
        target = message["target"]
        binaries.append(
            {
                "package": message["package_id"],
                "name": target["name"],
                "src": os.path.relpath(target["src_path"], ROOT),
                "integration": "test" in target["kind"],
                "executable": message["executable"],
                "dir": os.path.dirname(message["manifest_path"]),
            }
        )
    return binaries


def package_name(binary):
    # package_id is "path+file:///.../crates/wharf#0.1.0" or "name 0.1.0 (path+...)".
    package_id = binary["package"]
    if "#" in package_id:
        tail = package_id.rsplit("/", 1)[-1]
        name = tail.split("#")[0]
        if "@" in tail.split("#")[1]:
            name = tail.split("#")[1].split("@")[0]
        return name
    return package_id.split(" ")[0]


def expected_cost(binary):
    # Longest first, so the slow end-to-end binaries do not start last: integration tests
    # before unit tests, bigger test files before smaller ones.
    size = os.path.getsize(os.path.join(ROOT, binary["src"])) if binary["integration"] else 0
    return (binary["integration"], size)


def run(binary, print_lock):
    env = dict(os.environ)
    env["CARGO_MANIFEST_DIR"] = binary["dir"]
    env["CARGO_PKG_NAME"] = package_name(binary)
    started = time.monotonic()
    completed = subprocess.run(
        [binary["executable"]], cwd=binary["dir"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    elapsed = time.monotonic() - started
    with print_lock:
        sys.stdout.write(f"     Running {binary['src']} ({os.path.relpath(binary['executable'], ROOT)})\n")
        sys.stdout.write(completed.stdout.decode("utf-8", "replace"))
        verdict = "ok" if completed.returncode == 0 else f"FAILED (exit {completed.returncode})"
        sys.stdout.write(f"     Finished {binary['src']}: {verdict} in {elapsed:.1f}s\n\n")
        sys.stdout.flush()
    return completed.returncode == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("WHARF_TEST_JOBS", "3")))
    args = parser.parse_args()

    # The binaries the end-to-end tests start (the server, the testapp packaged into images),
    # built once here rather than by each test binary racing for cargo's lock.
    cargo("build", "--workspace", "--bins", "--quiet")
    binaries = sorted(test_binaries(), key=expected_cost, reverse=True)
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    os.environ.setdefault("WHARF_TESTAPP", os.path.join(target_dir, "debug", "wharf-testapp"))

    started = time.monotonic()
    print_lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(zip(binaries, pool.map(lambda b: run(b, print_lock), binaries)))
    failed = [binary["src"] for binary, passed in results if not passed]

    # Doc tests, as `cargo test --workspace` would run them.
    doc = subprocess.run([os.environ.get("CARGO", "cargo"), "test", "--workspace", "--doc", "--quiet"], cwd=ROOT)
    if doc.returncode != 0:
        failed.append("doc tests")

    elapsed = time.monotonic() - started
    print(f"scripts/test: {len(binaries)} test binaries, {args.jobs} at a time, in {elapsed:.0f}s")
    if failed:
        print("scripts/test: FAILED: " + ", ".join(failed))
        return 101
    print("scripts/test: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
