#!/usr/bin/env python3
"""Steady-state device polls under lighttpd, side by side with two ceilings.

One lighttpd (127.0.0.1 only, free port, everything in a temporary directory) serves:

  a) /static/poll.txt   a static file as large as the steady poll answer
  b) /noop/update.php   examples/noop_fastcgi (our FastCGI front door, no application work),
                        spawned with bin-path, max-procs 2, body of the same size
  c) /update/update.php update-server spawned with bin-path, max-procs 2, on a provisioned
                        install root with N devices (default 1,000)

and then, with lighttpd stopped, on the same root and the same polls:

  d) update-server serve (the built-in server, hyper on tokio; no lighttpd in front)

Every device is primed first (a delivering poll, then a poll with the CHECK value the first
answer set), so state files exist and every measured poll is a steady one: matching CHECK,
nothing but comments in the answer. wrk (bench/rotate.lua) then rotates over all devices,
each with its own CHECK value, for the same time and concurrency against a, b and c.

Reported: requests/s of each, the ratios c/b, c/a and d/a, latency percentiles, CPU time per
request of the backend processes and of lighttpd (utime+stime from /proc/<pid>/stat), and the
backends' peak RSS (VmHWM). Results go to bench/results/ (git-ignored) as .md and .json.

Usage (from anywhere; needs lighttpd, wrk, python3, cargo; Debian: apt-get install lighttpd wrk):

    python3 bench/poll.py                      # build (profile dist), 1,000 devices, 10 s per target
    python3 bench/poll.py --duration 30 --connections 64 --devices 5000
    python3 bench/poll.py --no-build --keep    # reuse the built binaries, keep the temp dir

Only 127.0.0.1 is contacted. The temporary directory and every process started here are
removed / stopped on exit (also on Ctrl-C).
"""

import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIGHTTPD = "/usr/sbin/lighttpd"
OLD_MTIME = 1600000000
CLK_TCK = os.sysconf("SC_CLK_TCK")

USER_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<config>
    <master info=""/>
    <status dir="status"/>
</config>
"""

SNIPPETS = {
    "scripts/update-all-default.txt": "# snippet all-default\nconfig add CMD0 /location all-default\n",
    "scripts/update-phone-default.txt": "# snippet phone-default\nconfig add CMD0 /location phone-default\n",
}


def log(msg):
    print(msg, flush=True)


def die(msg):
    sys.exit("bench/poll.py: " + msg)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def target_dir():
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                         cwd=REPO, check=True, stdout=subprocess.PIPE).stdout
    return json.loads(out)["target_directory"]


def build(args):
    """The binaries measured, in the profile that ships (dist: release with whole-program LTO,
    as tools/package builds it); the no-work responder in the same profile."""
    if not args.no_build:
        log("== cargo build --profile dist (update-server, examples/noop_fastcgi)")
        subprocess.run(["cargo", "build", "--profile", "dist", "--bin", "update-server", "--example", "noop_fastcgi"],
                       cwd=REPO, check=True)
    tdir = target_dir()
    server = os.path.join(tdir, "dist", "update-server")
    noop = os.path.join(tdir, "dist", "examples", "noop_fastcgi")
    for path in (server, noop):
        if not os.access(path, os.X_OK):
            die("missing %s (run without --no-build)" % path)
    return server, noop


def prepare_root(root):
    """The install tree (repo without .git/target, like the conformance harness) plus a
    provisioned setup: user config without master, state tracking, two snippets."""
    shutil.copytree(REPO, root, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "target", "node_modules", "results"))
    for runtime in ("status", "cache"):
        d = os.path.join(root, runtime)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    files = dict(SNIPPETS)
    files["config/user-config.xml"] = USER_CONFIG
    write_files(root, files)


def write_files(root, files):
    """Writes {relative path: text} under root with an old modification time (snippets older
    than any grace period)."""
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.utime(path, (OLD_MTIME, OLD_MTIME))


def device(i):
    a, b = (i >> 8) & 0xFF, i & 0xFF
    sn = "00-90-33-20-%02x-%02x" % (a, b)
    query = "type=IP232&sn=%s&hwid=IP232-20-%02x-%02x&ip=172.16.%d.%d&polling=0&phase=update" % (sn, a, b, a, b)
    return sn, query


def server_settings(tmp, port):
    """The lighttpd settings every bench uses: 127.0.0.1:port, htdocs and the error log in
    tmp, many kept-alive connections."""
    lines = [
        'server.document-root = "%s"' % os.path.join(tmp, "htdocs"),
        'server.bind = "127.0.0.1"',
        "server.port = %d" % port,
        'server.errorlog = "%s"' % os.path.join(tmp, "lighttpd-error.log"),
        'server.modules = ( "mod_access", "mod_alias", "mod_fastcgi" )',
        'mimetype.assign = ( ".txt" => "text/plain; charset=UTF-8" )',
        "server.max-connections = 2000",
        "server.max-keep-alive-requests = 100000",
    ]
    if os.geteuid() == 0:
        # raising the descriptor limit needs root
        lines.append("server.max-fds = 8000")
    return lines


def lighttpd_conf(tmp, port, root, server_bin, noop_bin, body_bytes, with_ceilings):
    lines = server_settings(tmp, port)
    lines += [
        'alias.url = ( "/update/" => "%s/" )' % root,
        '$HTTP["url"] =~ "^/update/(status|backup|certs|cache|config|debug)/" { url.access-deny = ( "" ) }',
        '$HTTP["url"] =~ "^/update/(update|admin/admin|update-migrate)\\.php$" {',
        '  fastcgi.server = ( ".php" => (( "socket" => "%s", "bin-path" => "%s", "check-local" => "disable",'
        % (os.path.join(tmp, "update-server.sock"), server_bin),
        '    "max-procs" => 2, "bin-environment" => ( "UPDATE_SERVER_ROOT" => "%s" ) )) )' % root,
        "}",
    ]
    if with_ceilings:
        lines += [
            '$HTTP["url"] =~ "^/noop/" {',
            '  fastcgi.server = ( "/noop/" => (( "socket" => "%s", "bin-path" => "%s", "check-local" => "disable",'
            % (os.path.join(tmp, "noop.sock"), noop_bin),
            '    "max-procs" => 2, "bin-environment" => ( "NOOP_BODY_BYTES" => "%d" ) )) )' % body_bytes,
            "}",
        ]
    conf = os.path.join(tmp, "lighttpd.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    return conf


class Lighttpd:
    """lighttpd -D in its own process group (its FastCGI backends inherit it)."""

    def __init__(self, conf, port, tmp):
        self.conf, self.port, self.tmp = conf, port, tmp
        check = subprocess.run([LIGHTTPD, "-tt", "-f", conf], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if check.returncode != 0:
            die("lighttpd refuses %s:\n%s" % (conf, check.stdout.decode(errors="replace")))
        self.out = open(os.path.join(tmp, "lighttpd.out"), "ab")
        self.proc = subprocess.Popen([LIGHTTPD, "-D", "-f", conf], stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=self.out, start_new_session=True)
        deadline = time.time() + 15
        while True:
            if self.proc.poll() is not None:
                logs = self.logs()
                self.stop()
                die("lighttpd exited at start:\n" + logs)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    logs = self.logs()
                    self.stop()
                    die("lighttpd did not listen on 127.0.0.1:%d:\n%s" % (port, logs))
                time.sleep(0.05)

    def logs(self):
        text = ""
        for name in ("lighttpd-error.log", "lighttpd.out"):
            try:
                with open(os.path.join(self.tmp, name), errors="replace") as f:
                    text += "--- %s\n%s" % (name, f.read()[-4000:])
            except OSError:
                pass
        return text

    def backends(self, exe):
        """pids of lighttpd's children running `exe`."""
        exe = os.path.realpath(exe)
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.proc.pid and os.path.realpath("/proc/%s/exe" % entry) == exe:
                    pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return sorted(pids)

    def stop(self):
        if self.proc is None:
            return
        group = self.proc.pid
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.2)
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None
        self.out.close()


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # after the command name: state is field 3; utime and stime are fields 14 and 15
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def peak_rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def get(conn, path):
    conn.request("GET", path, headers={"User-Agent": "innovaphone-update/1.0"})
    resp = conn.getresponse()
    return resp.status, resp.read().decode("utf-8", "replace")


def commands(body):
    out = []
    for line in body.replace("\r\n", "\n").split("\n"):
        line = line.rstrip()
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line)
    return out


def prime(port, n):
    """Polls every device once to deliver, then once with its CHECK. Returns the steady paths
    and the size of one steady answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    paths, sizes = [], set()
    started = time.time()
    for i in range(n):
        sn, query = device(i)
        status, body = get(conn, "/update/update.php?" + query)
        check = None
        for line in commands(body):
            m = re.match(r"\s*mod cmd UP1 check ser (\S+)", line)
            if m:
                check = m.group(1)
        if status != 200 or not check:
            die("priming %s: status %d, no 'mod cmd UP1 check ser' in:\n%s" % (sn, status, body[:3000]))
        path = "/update/update.php?%s&CHECK=%s" % (query, check)
        status, body = get(conn, path)
        if status != 200 or commands(body):
            die("steady poll of %s is not steady (status %d):\n%s" % (sn, status, body[:3000]))
        paths.append(path)
        sizes.add(len(body.encode()))
    conn.close()
    log("   primed %d devices in %.1f s; steady answer sizes: %s bytes" % (n, time.time() - started, sorted(sizes)))
    return paths, max(sizes)


def run_wrk(args, port, paths_file, measuring=None):
    """wrk over the paths: --warmup seconds unmeasured, then --duration measured. `measuring`
    is called between the two, so CPU time read there counts the measured requests only (read
    before the warm-up, it was a fifth too high)."""
    env = dict(os.environ, WRK_PATHS=paths_file)
    base = ["wrk", "-t%d" % args.threads, "-c%d" % args.connections, "--timeout", "10s",
            "-s", os.path.join(HERE, "rotate.lua"), "http://127.0.0.1:%d" % port]
    if args.warmup > 0:
        subprocess.run(base[:1] + ["-d%ds" % args.warmup] + base[1:], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=args.warmup + 60)
    if measuring:
        measuring()
    out = subprocess.run(base[:1] + ["-d%ds" % args.duration] + base[1:], env=env, check=True,
                         stdout=subprocess.PIPE, timeout=args.duration + 60).stdout.decode()
    values = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"^BENCH (\S+) (\d+)$", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    values["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    values["rps"] = values["requests"] / (values["duration_us"] / 1e6)
    values["wrk_output"] = out
    return values


def measure(args, server, port, name, paths, exe):
    paths_file = os.path.join(server.tmp, "paths-%s.txt" % name)
    with open(paths_file, "w") as f:
        f.write("\n".join(paths) + "\n")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    status, body = get(conn, paths[0])
    conn.close()
    if status != 200:
        log("   %s: probe answered %d, skipped:\n%s" % (name, status, body[:500]))
        return {"name": name, "failed": "probe answered %d" % status}
    pids = server.backends(exe) if exe else []
    watched = [server.proc.pid] + pids
    before = {}
    result = run_wrk(args, port, paths_file, lambda: before.update({pid: cpu_ticks(pid) for pid in watched}))
    after = {pid: cpu_ticks(pid) for pid in watched}
    requests = max(result["requests"], 1)
    used = {pid: (after[pid] - before[pid]) / CLK_TCK for pid in watched}
    result.update({
        "name": name,
        "answer_bytes": len(body.encode()),
        "backend_pids": pids,
        "backend_cpu_us_per_req": sum(used[p] for p in pids) / requests * 1e6 if pids else None,
        "lighttpd_cpu_us_per_req": used[server.proc.pid] / requests * 1e6,
        "backend_peak_rss_kib": [peak_rss_kib(p) for p in pids],
    })
    log("   %-8s %10.0f req/s  (%d requests, %d errors, %d non-2xx)"
        % (name, result["rps"], result["requests"], result["errors"], result["non_2xx"]))
    return result


def measure_serve(args, tmp, root, server_bin, paths):
    """d) `update-server serve` on its own port, the same steady polls."""
    port = free_port()
    out = open(os.path.join(tmp, "serve.log"), "w")
    proc = subprocess.Popen([server_bin, "serve", "--listen", "127.0.0.1:%d" % port, "--root", root],
                            stdout=out, stderr=out)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    return {"name": "serve", "failed": "serve did not listen (see %s)" % out.name}
                time.sleep(0.05)
        paths_file = os.path.join(tmp, "paths-serve.txt")
        with open(paths_file, "w") as f:
            f.write("\n".join(paths) + "\n")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        status, body = get(conn, paths[0])
        conn.close()
        if status != 200 or commands(body):
            return {"name": "serve", "failed": "probe answered %d, not a steady poll" % status}
        before = {}
        result = run_wrk(args, port, paths_file, lambda: before.update(ticks=cpu_ticks(proc.pid)))
        used = (cpu_ticks(proc.pid) - before["ticks"]) / CLK_TCK
        threads = 0
        with open("/proc/%d/status" % proc.pid) as f:
            for line in f:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
        result.update({
            "name": "serve",
            "answer_bytes": len(body.encode()),
            "backend_pids": [proc.pid],
            "backend_cpu_us_per_req": used / max(result["requests"], 1) * 1e6,
            "lighttpd_cpu_us_per_req": None,
            "backend_peak_rss_kib": [peak_rss_kib(proc.pid)],
            "backend_threads": threads,
        })
        log("   %-8s %10.0f req/s  (%d requests, %d errors, %d non-2xx, %d threads)"
            % ("serve", result["rps"], result["requests"], result["errors"], result["non_2xx"], threads))
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()


def tear_down(server, tmp, keep):
    """Stops `server` (when one runs) and removes `tmp` (or says where it was kept)."""
    if server is not None:
        server.stop()
    if keep:
        log("kept %s" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def save_results(kind, text, data):
    """bench/results/<kind>-<stamp>.md (the table) and .json (everything measured)."""
    results_dir = os.path.join(HERE, "results")
    os.makedirs(results_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(results_dir, "%s-%s.md" % (kind, stamp)), "w") as f:
        f.write(text)
    with open(os.path.join(results_dir, "%s-%s.json" % (kind, stamp)), "w") as f:
        json.dump(data, f, indent=1)
    log("results: bench/results/%s-%s.{md,json}" % (kind, stamp))


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def summary(args, results, body_bytes):
    by = {r["name"]: r for r in results}
    rows = [
        ("a", "static", "static file, %d B" % body_bytes),
        ("b", "noop", "no-op FastCGI (examples/noop_fastcgi)"),
        ("c", "update", "update-server steady poll"),
        ("d", "serve", "update-server serve steady poll (no lighttpd)"),
    ]
    lines = [
        "| | target | req/s | p50 ms | p99 ms | errors | backend CPU µs/req | lighttpd CPU µs/req | backend peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, name, label in rows:
        r = by.get(name)
        if r is None or "failed" in r:
            lines.append("| %s | %s | %s | | | | | | |" % (key, label, "failed: " + r["failed"] if r else "not measured"))
            continue
        rss = ", ".join("%.1f MiB" % (k / 1024) for k in r["backend_peak_rss_kib"]) or "-"
        lines.append("| %s | %s | %.0f | %.2f | %.2f | %d | %s | %s | %s |" % (
            key, label, r["rps"], r["latency_p50_us"] / 1000, r["latency_p99_us"] / 1000,
            r["errors"] + r["non_2xx"], fmt(r["backend_cpu_us_per_req"], "%.1f"),
            fmt(r["lighttpd_cpu_us_per_req"], "%.1f"), rss))
    ok = lambda n: n in by and "failed" not in by[n]
    ratios = []
    if ok("update") and ok("noop"):
        ratios.append("c/b = %.2f" % (by["update"]["rps"] / by["noop"]["rps"]))
    if ok("update") and ok("static"):
        ratios.append("c/a = %.2f" % (by["update"]["rps"] / by["static"]["rps"]))
    if ok("serve") and ok("static"):
        ratios.append("d/a = %.2f" % (by["serve"]["rps"] / by["static"]["rps"]))
    head = ("wrk -t%d -c%d, %d s per target (+%d s warm-up), %d devices rotating, %d cores, %s"
            % (args.threads, args.connections, args.duration, args.warmup, args.devices,
               os.cpu_count(), lighttpd_version()))
    return head, lines, ratios


def lighttpd_version():
    try:
        return subprocess.run([LIGHTTPD, "-v"], stdout=subprocess.PIPE).stdout.decode().split()[0]
    except (OSError, IndexError):
        return "lighttpd"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=10, help="seconds of wrk per target")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured wrk before each run")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections")
    ap.add_argument("--targets", default="static,noop,update,serve",
                    help="comma-separated subset of static,noop,update,serve (without update and serve:"
                         " no priming, answers of --body-bytes)")
    ap.add_argument("--body-bytes", type=int, default=1945,
                    help="answer size for static and noop when update is not measured")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    for tool in (LIGHTTPD, shutil.which("wrk")):
        if not tool or not os.access(tool, os.X_OK):
            die("needs lighttpd and wrk (Debian: apt-get install lighttpd wrk)")
    if not 1 <= args.devices <= 65536:
        die("--devices must be 1..65536")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or set(targets) - {"static", "noop", "update", "serve"}:
        die("--targets takes a comma-separated subset of static,noop,update,serve")

    server_bin, noop_bin = build(args)
    tmp = tempfile.mkdtemp(prefix="update-server-bench-")
    server = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        root = os.path.join(tmp, "root")
        prepare_root(root)
        os.makedirs(os.path.join(tmp, "htdocs", "static"))
        port = free_port()

        if "update" in targets or "serve" in targets:
            log("== priming %d devices through lighttpd + update-server" % args.devices)
            server = Lighttpd(lighttpd_conf(tmp, port, root, server_bin, noop_bin, 0, False), port, tmp)
            update_paths, body_bytes = prime(port, args.devices)
            server.stop()
        else:
            update_paths = ["/update/update.php?" + device(i)[1] for i in range(args.devices)]
            body_bytes = args.body_bytes

        with open(os.path.join(tmp, "htdocs", "static", "poll.txt"), "w") as f:
            f.write("#" * (body_bytes - 2) + "\r\n" if body_bytes >= 2 else "#" * body_bytes)
        queries = [p.split("?", 1)[1] for p in update_paths]
        log("== measuring (lighttpd on 127.0.0.1:%d, %d s each)" % (port, args.duration))
        server = Lighttpd(lighttpd_conf(tmp, port, root, server_bin, noop_bin, body_bytes, True), port, tmp)
        plan = {
            "static": (["/static/poll.txt?" + q for q in queries], None),
            "noop": (["/noop/update.php?" + q for q in queries], noop_bin),
            "update": (update_paths, server_bin),
        }
        results = [measure(args, server, port, name, plan[name][0], plan[name][1])
                   for name in ("static", "noop", "update") if name in targets]
        server.stop()
        if "serve" in targets:
            results.append(measure_serve(args, tmp, root, server_bin, update_paths))

        head, table, ratios = summary(args, results, body_bytes)
        text = "\n".join(["# poll benchmark %s" % datetime.datetime.now().isoformat(timespec="seconds"), "",
                          head, ""] + table + [""] + ratios) + "\n"
        print("\n" + text)
        save_results("poll", text, {"args": vars(args), "answer_bytes": body_bytes, "results": results})
    finally:
        tear_down(server, tmp, args.keep)


if __name__ == "__main__":
    main()
