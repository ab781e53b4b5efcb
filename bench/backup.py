#!/usr/bin/env python3
"""Unchanged configuration backups (update.php?mode=backup, PUT) under lighttpd, beside the
no-op FastCGI responder.

One lighttpd (127.0.0.1 only, free port, everything in a temporary directory) serves:

  b) /noop/update.php   examples/noop_fastcgi (our FastCGI front door, no application work):
                        the same PUT with the same body, an answer as large as ours
  c) /update/update.php update-server spawned with bin-path, max-procs 2, on an install root
                        with state tracking and backups (nbackups 10)

The body is a device configuration of --config-bytes (default 20 KB) with the volatile lines a
device sends (UPDATE/ variables, the UP1 URL, TLS tickets, call list entries), which the server
filters out. Every device (--devices, default 100; 1 is a single device) is primed with one PUT
that stores <hwid>.0.txt and one that must answer "no change"; every measured PUT is then an
unchanged backup: read the newest backup, compare, stamp device/@backup in the state file
(locked, rewritten). wrk (bench/put.lua) rotates over the devices.

Reported: PUTs/s of each, the ratio c/b, latency percentiles, CPU time per PUT of the backend
processes and of lighttpd (utime+stime from /proc/<pid>/stat), and the backends' peak RSS
(VmHWM); the old PHP server spent about 1.25 ms of CPU per PUT. Afterwards every device must
still hold exactly one backup file (no measured PUT stored anything). Results go to
bench/results/ (git-ignored) as backup-<stamp>.md and .json.

Usage (needs lighttpd, wrk, python3, cargo; Debian: apt-get install lighttpd wrk):

    python3 bench/backup.py                    # build (profile dist), 100 devices, 10 s per target
    python3 bench/backup.py --devices 1        # one device, every PUT on the same lock
    python3 bench/backup.py --no-build --duration 5 --keep

The shared machinery (build, lighttpd in its own process group, /proc readings, the lighttpd
configuration with /update/ and /noop/) comes from bench/poll.py. Only 127.0.0.1 is contacted;
the temporary directory and every process started here are removed / stopped on exit.
"""

import argparse
import datetime
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import poll  # noqa: E402  (bench/poll.py: build, Lighttpd, lighttpd_conf, cpu_ticks, ...)
from poll import CLK_TCK, Lighttpd, cpu_ticks, die, fmt, free_port, lighttpd_version, log, peak_rss_kib  # noqa: E402

NBACKUPS = 10
PHP_CPU_US_PER_PUT = 1250

USER_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<config>
    <master info=""/>
    <status dir="status"/>
    <backup dir="backup" nbackups="%d"/>
</config>
""" % NBACKUPS


def device(i):
    a, b = (i >> 8) & 0xFF, i & 0xFF
    sn = "00-90-33-30-%02x-%02x" % (a, b)
    hwid = "IP232-30-%02x-%02x" % (a, b)
    return sn, hwid, "/update/update.php?mode=backup&hwid=%s&sn=%s" % (hwid, sn)


def config_body(size):
    """A device configuration of `size` bytes, CRLF lines, volatile ones among them."""
    head = [
        "vars create UPDATE/CHECK pb 3f2a9c11",
        "vars create UPDATE/SCFG pb 01",
        "config change UP1 /url http://update.example.com/update/update.php?type=#t&sn=#m /poll 15",
        "vars create TLS0/TICKET/0 pb 00112233445566778899aabbccddeeff",
        "mod cmd FLASHDIR0 add-item 101 (cn=Alice)(type=call)(info=out)",
        "config change CMD0 /name Reception /location Berlin /tz CET",
        "",
    ]
    lines, n = list(head), 0
    text = "\r\n".join(lines)
    while len(text) < size:
        n += 1
        lines.append("config change PHONE%d /coder G722,20, /dtmf-inband /name line-%04d /ring %d /timeout %d"
                     % (n % 8, n, n % 5, 60 + n % 30))
        text = "\r\n".join(lines) + "\r\n"
    return text.encode()[:size].rsplit(b"\r\n", 1)[0] + b"\r\n"


def put(conn, path, body):
    conn.request("PUT", path, body=body, headers={"User-Agent": "innovaphone-update/1.0",
                                                  "Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    return resp.status, resp.read().decode("utf-8", "replace")


def backup_files(root, hwid):
    try:
        return sorted(os.listdir(os.path.join(root, "backup", hwid)))
    except OSError:
        return []


def prime(port, root, n, body):
    """Stores one backup per device, then checks a second PUT is 'no change'. Returns the
    measured paths and the size of an unchanged answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    paths, sizes = [], set()
    started = time.time()
    for i in range(n):
        sn, hwid, path = device(i)
        status, text = put(conn, path, body)
        if status != 200 or "backup stored" not in text:
            die("first backup of %s: status %d:\n%s" % (hwid, status, text[:2000]))
        status, text = put(conn, path, body)
        if status != 200 or "no change" not in text:
            die("second backup of %s is not 'no change' (status %d):\n%s" % (hwid, status, text[:2000]))
        if backup_files(root, hwid) != ["%s.0.txt" % hwid]:
            die("%s: unexpected backup files %s" % (hwid, backup_files(root, hwid)))
        paths.append(path)
        sizes.add(len(text.encode()))
    conn.close()
    log("   primed %d devices in %.1f s; unchanged answer sizes: %s bytes" % (n, time.time() - started, sorted(sizes)))
    return paths, max(sizes)


def run_wrk(args, port, paths_file, body_file, measuring=None):
    """As bench/poll.py's run_wrk, with a PUT of body_file to every path."""
    env = dict(os.environ, WRK_PATHS=paths_file, WRK_BODY=body_file)
    base = ["wrk", "-t%d" % args.threads, "-c%d" % args.connections, "--timeout", "10s",
            "-s", os.path.join(HERE, "put.lua"), "http://127.0.0.1:%d" % port]
    if args.warmup > 0:
        subprocess.run(base[:1] + ["-d%ds" % args.warmup] + base[1:], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=args.warmup + 60)
    if measuring:
        measuring()
    out = subprocess.run(base[:1] + ["-d%ds" % args.duration] + base[1:], env=env, check=True,
                         stdout=subprocess.PIPE, timeout=args.duration + 60).stdout.decode()
    values = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"^BENCH (\S+) (\d+)$", out, re.M))
    values["rps"] = values["requests"] / (values["duration_us"] / 1e6)
    values["wrk_output"] = out
    return values


def measure(args, server, port, name, paths, body_file, exe):
    paths_file = os.path.join(server.tmp, "paths-%s.txt" % name)
    with open(paths_file, "w") as f:
        f.write("\n".join(paths) + "\n")
    with open(body_file, "rb") as f:
        body = f.read()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    status, text = put(conn, paths[0], body)
    conn.close()
    if status != 200:
        log("   %s: probe answered %d, skipped:\n%s" % (name, status, text[:500]))
        return {"name": name, "failed": "probe answered %d" % status}
    pids = server.backends(exe)
    watched = [server.proc.pid] + pids
    before = {}
    result = run_wrk(args, port, paths_file, body_file, lambda: before.update({pid: cpu_ticks(pid) for pid in watched}))
    after = {pid: cpu_ticks(pid) for pid in watched}
    requests = max(result["requests"], 1)
    used = {pid: (after[pid] - before[pid]) / CLK_TCK for pid in watched}
    result.update({
        "name": name,
        "answer_bytes": len(text.encode()),
        "backend_pids": pids,
        "backend_cpu_us_per_req": sum(used[p] for p in pids) / requests * 1e6 if pids else None,
        "lighttpd_cpu_us_per_req": used[server.proc.pid] / requests * 1e6,
        "backend_peak_rss_kib": [peak_rss_kib(p) for p in pids],
    })
    log("   %-8s %10.0f PUT/s  (%d requests, %d errors, %d not 200)"
        % (name, result["rps"], result["requests"], result["errors"], result.get("non_200", 0)))
    return result


def summary(args, results, body_bytes, answer_bytes):
    by = {r["name"]: r for r in results}
    rows = [
        ("b", "noop", "no-op FastCGI (examples/noop_fastcgi), same PUT"),
        ("c", "update", "update-server, unchanged backup"),
    ]
    lines = [
        "| | target | PUT/s | p50 ms | p99 ms | errors | backend CPU µs/PUT | lighttpd CPU µs/PUT | backend peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, name, label in rows:
        r = by.get(name)
        if r is None or "failed" in r:
            lines.append("| %s | %s | %s | | | | | | |" % (key, label, "failed: " + r["failed"] if r else "not measured"))
            continue
        rss = ", ".join("%.1f MiB" % (k / 1024) for k in r["backend_peak_rss_kib"]) or "-"
        lines.append("| %s | %s | %.0f | %.2f | %.2f | %d | %s | %.1f | %s |" % (
            key, label, r["rps"], r["latency_p50_us"] / 1000, r["latency_p99_us"] / 1000,
            r["errors"] + r.get("non_200", 0), fmt(r["backend_cpu_us_per_req"], "%.1f"),
            r["lighttpd_cpu_us_per_req"], rss))
    notes = []
    ok = lambda n: n in by and "failed" not in by[n]
    if ok("update") and ok("noop"):
        notes.append("c/b = %.2f" % (by["update"]["rps"] / by["noop"]["rps"]))
    if ok("update") and by["update"]["backend_cpu_us_per_req"] is not None:
        notes.append("our CPU per unchanged PUT: %.0f µs (old PHP server: about %d µs)"
                     % (by["update"]["backend_cpu_us_per_req"], PHP_CPU_US_PER_PUT))
    head = ("wrk -t%d -c%d, %d s per target (+%d s warm-up), PUT body %d B (%s), %d device%s rotating, "
            "answer %d B, %d cores, %s"
            % (args.threads, args.connections, args.duration, args.warmup, body_bytes,
               "volatile lines included", args.devices, "" if args.devices == 1 else "s", answer_bytes,
               os.cpu_count(), lighttpd_version()))
    return head, lines, notes


def state_notes(root, devices):
    """What the run left in status/: state file sizes and log entries (every PUT logs a line),
    and temporary files of writes cut short when the backends were stopped."""
    status = os.path.join(root, "status")
    sizes, msgs, temps = [], [], []
    for name in os.listdir(status):
        path = os.path.join(status, name)
        if name.endswith(".tmp"):
            temps.append(name)
        elif name.endswith(".xml"):
            sizes.append(os.path.getsize(path))
            with open(path, errors="replace") as f:
                msgs.append(f.read().count("<msgs "))
    notes = []
    if sizes:
        notes.append("state files after the run: %d, largest %.1f KiB, up to %d log entries (msgs)"
                     % (len(sizes), max(sizes) / 1024, max(msgs)))
    if temps:
        notes.append("temporary files left in status/ after lighttpd stopped its backends: %d" % len(temps))
    return notes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--config-bytes", type=int, default=20 * 1024, help="size of the PUT body")
    ap.add_argument("--duration", type=int, default=10, help="seconds of wrk per target")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured wrk before each run")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--targets", default="noop,update", help="comma-separated subset of noop,update")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    for tool in (poll.LIGHTTPD, shutil.which("wrk")):
        if not tool or not os.access(tool, os.X_OK):
            die("needs lighttpd and wrk (Debian: apt-get install lighttpd wrk)")
    if not 1 <= args.devices <= 65536:
        die("--devices must be 1..65536")
    if not 200 <= args.config_bytes <= 4 << 20:
        die("--config-bytes must be 200..4 MiB")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or set(targets) - {"noop", "update"}:
        die("--targets takes a comma-separated subset of noop,update")

    server_bin, noop_bin = poll.build(args)
    tmp = tempfile.mkdtemp(prefix="update-server-bench-backup-")
    server = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        root = os.path.join(tmp, "root")
        poll.prepare_root(root)
        shutil.rmtree(os.path.join(root, "backup"), ignore_errors=True)
        os.makedirs(os.path.join(root, "backup"))
        with open(os.path.join(root, "config", "user-config.xml"), "w") as f:
            f.write(USER_CONFIG)
        os.makedirs(os.path.join(tmp, "htdocs"))
        body = config_body(args.config_bytes)
        body_file = os.path.join(tmp, "config-body.txt")
        with open(body_file, "wb") as f:
            f.write(body)
        port = free_port()

        log("== priming %d device%s through lighttpd + update-server (%d B configuration)"
            % (args.devices, "" if args.devices == 1 else "s", len(body)))
        server = Lighttpd(poll.lighttpd_conf(tmp, port, root, server_bin, noop_bin, 0, False), port, tmp)
        paths, answer_bytes = prime(port, root, args.devices, body)
        server.stop()

        log("== measuring (lighttpd on 127.0.0.1:%d, %d s each)" % (port, args.duration))
        server = Lighttpd(poll.lighttpd_conf(tmp, port, root, server_bin, noop_bin, answer_bytes, True), port, tmp)
        plan = {
            "noop": ([p.replace("/update/", "/noop/", 1) for p in paths], noop_bin),
            "update": (paths, server_bin),
        }
        results = [measure(args, server, port, name, plan[name][0], body_file, plan[name][1])
                   for name in ("noop", "update") if name in targets]
        server.stop()

        stored = [f for i in range(args.devices) for f in backup_files(root, device(i)[1])]
        if len(stored) != args.devices:
            die("after the run %d backup files exist for %d devices: a measured PUT stored something"
                % (len(stored), args.devices))

        head, table, notes = summary(args, results, len(body), answer_bytes)
        notes += state_notes(root, args.devices)
        text = "\n".join(["# backup benchmark %s" % datetime.datetime.now().isoformat(timespec="seconds"), "",
                          head, ""] + table + [""] + notes) + "\n"
        print("\n" + text)
        poll.save_results("backup", text, {"args": vars(args), "body_bytes": len(body),
                                           "answer_bytes": answer_bytes, "results": results})
    finally:
        poll.tear_down(server, tmp, args.keep)


if __name__ == "__main__":
    main()
