#!/usr/bin/env python3
"""The four requests a fleet sends, each beside its two ceilings and the old PHP server, in one run.

Scenarios (each under one lighttpd, 127.0.0.1 only, free port, everything in a temporary
directory; wrk rotates over the devices):

  steady  a poll with the CHECK value the last answer set: nothing to deliver but the backup
          request every answer carries (1,000 devices)
  full    the same poll without CHECK: every snippet delivered again
  first   update.php without arguments (a device's first contact: the URL rewrite answer)
  backup  PUT mode=backup with an unchanged 20 KB configuration (100 devices, nbackups 10)

and for each of them four targets:

  static  lighttpd serving a static file as large as our answer (the ceiling of the web server)
  noop    examples/noop_fastcgi, max-procs 2, an answer as large as ours (the ceiling of our
          FastCGI plumbing: everything but the application)
  ours    update-server, bin-path, max-procs 2, on a provisioned install root
  php     the old PHP server (php-cgi, max-procs 2) on a copy of its tree with the same user
          configuration and snippets, when php-cgi is installed and --php-tree exists
  base    with --baseline BINARY: another update-server build (say, of main) set up as ours is,
          on a copy of ours' primed tree, measured in the same rounds; the table then gives
          ours/base and both CPU figures, the paired A/B a change needs on a noisy machine

Device state is restored from the primed copy before every measured run, so full delivery and
backups measure the same work in every round. The machine is shared and noisy: every target is
measured --rounds times (default 3) and the median is reported, with the spread.

Reported per scenario: req/s of every target, ours/static and ours/noop (and ours/php), backend
CPU µs per request (utime+stime of lighttpd's children from /proc), the backends' peak RSS
(VmHWM). Results go to bench/results/suite-<stamp>.{md,json} (git-ignored).

Usage (needs lighttpd, wrk, python3, cargo; php-cgi for the old server's row):

    python3 bench/suite.py                          # build (profile dist), 3 rounds of 5 s
    python3 bench/suite.py --no-build --duration 3 --scenarios steady,first
    python3 bench/suite.py --php-tree /path/to/php-update-server
    python3 bench/suite.py --scenarios steady --baseline /tmp/main-update-server

Only 127.0.0.1 is contacted; the temporary directory and every process started here are
removed / stopped on exit. Build, lighttpd handling and /proc readings come from bench/poll.py,
the backup body from bench/backup.py.
"""

import argparse
import datetime
import http.client
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import backup  # noqa: E402  (bench/backup.py: config_body)
import poll  # noqa: E402  (bench/poll.py: build, Lighttpd, prepare_root, cpu_ticks, ...)
from poll import CLK_TCK, LIGHTTPD, Lighttpd, cpu_ticks, die, free_port, log, peak_rss_kib  # noqa: E402

DEFAULT_PHP_TREE = os.path.normpath(os.path.join(poll.REPO, "..", "shared", "reference", "php-update-server"))
SCENARIOS = ("steady", "full", "first", "backup")
BACKUP_DEVICES = 100

# state tracking and backups (nbackups 10), no master: bench/backup.py's configuration
USER_CONFIG = backup.USER_CONFIG


def poll_query(i):
    return poll.device(i)[1]


def backup_path(prefix, i):
    sn, hwid, _ = backup.device(i)
    return "%s/update.php?mode=backup&hwid=%s&sn=%s" % (prefix, hwid, sn)


def write_tree_files(root):
    files = dict(poll.SNIPPETS)
    files["config/user-config.xml"] = USER_CONFIG
    poll.write_files(root, files)
    for runtime in ("status", "backup"):
        shutil.rmtree(os.path.join(root, runtime), ignore_errors=True)
        os.makedirs(os.path.join(root, runtime))


def prepare_trees(tmp, php_tree):
    ours = os.path.join(tmp, "ours")
    poll.prepare_root(ours)
    write_tree_files(ours)
    php = None
    if php_tree:
        php = os.path.join(tmp, "php")
        shutil.copytree(php_tree, php, symlinks=True)
        write_tree_files(php)
    return ours, php


def lighttpd_conf(tmp, port, ours_bin, ours_root, noop_bin, noop_bytes, php_cgi, php_root, base=None):
    """`base`: (binary, root) of the --baseline build, served under /base/ as ours is under /ours/."""
    sock = lambda name: os.path.join(tmp, name + ".sock")
    lines = poll.server_settings(tmp, port) + [
        'server.upload-dirs = ( "%s" )' % tmp,
        'static-file.exclude-extensions = ( ".php" )',
    ]
    builds = [("ours", ours_bin, ours_root)] + ([("base",) + tuple(base)] if base else [])
    aliases = ['"/%s/" => "%s/"' % (name, root) for name, _, root in builds]
    if php_root:
        aliases.append('"/php/" => "%s/"' % php_root)
    lines.append("alias.url = ( %s )" % ", ".join(aliases))
    for name, binary, root in builds:
        lines += [
            '$HTTP["url"] =~ "^/%s/" {' % name,
            '  fastcgi.server = ( ".php" => (( "socket" => "%s", "bin-path" => "%s", "check-local" => "disable",'
            % (sock(name), binary),
            '    "max-procs" => 2, "bin-environment" => ( "UPDATE_SERVER_ROOT" => "%s" ) )) )' % root,
            "}",
        ]
    lines += [
        '$HTTP["url"] =~ "^/noop/" {',
        '  fastcgi.server = ( "/noop/" => (( "socket" => "%s", "bin-path" => "%s", "check-local" => "disable",'
        % (sock("noop"), noop_bin),
        '    "max-procs" => 2, "bin-environment" => ( "NOOP_BODY_BYTES" => "%d" ) )) )' % noop_bytes,
        "}",
    ]
    if php_root:
        lines += [
            '$HTTP["url"] =~ "^/php/" {',
            '  fastcgi.server = ( ".php" => (( "socket" => "%s", "bin-path" => "%s", "check-local" => "enable",'
            % (sock("php"), php_cgi),
            '    "max-procs" => 2, "broken-scriptfilename" => "enable",',
            '    "bin-environment" => ( "PHP_FCGI_CHILDREN" => "0", "PHP_FCGI_MAX_REQUESTS" => "0" ) )) )',
            "}",
        ]
    conf = os.path.join(tmp, "lighttpd.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    return conf


def request(conn, method, path, body=None):
    headers = {"User-Agent": "innovaphone-update/1.0"}
    if body is not None:
        headers["Content-Type"] = "application/octet-stream"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def prime(port, prefix, devices, body):
    """Primes one tree through lighttpd: every poll device delivered to and its CHECK value
    taken, every backup device's first backup stored. Returns the paths per scenario and the
    answer size of each."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    steady, full, sizes = [], [], {}
    for i in range(devices):
        path = "%s/update.php?%s" % (prefix, poll_query(i))
        status, text = request(conn, "GET", path)
        m = re.search(rb"mod cmd UP1 check ser (\S+)", text)
        if status != 200 or not m:
            die("priming %s: status %d, no CHECK in:\n%s" % (path, status, text[:2000].decode(errors="replace")))
        full.append(path)
        sizes["full"] = len(text)
        steady.append("%s&CHECK=%s" % (path, m.group(1).decode()))
        status, text = request(conn, "GET", steady[-1])
        # with backups configured every answer asks for one (mod cmd UP0 scfg); nothing else
        delivered = [c for c in poll.commands(text.decode(errors="replace")) if " scfg " not in c]
        if status != 200 or delivered:
            die("%s is not a steady poll (status %d): %s" % (steady[-1], status, delivered))
        sizes["steady"] = len(text)
    backups = [backup_path(prefix, i) for i in range(BACKUP_DEVICES)]
    for path in backups:
        for expected in (b"backup stored", b"no change"):
            status, text = request(conn, "PUT", path, body)
            if status != 200 or (prefix == "/ours" and expected not in text):
                die("priming %s: status %d, no %r in:\n%s" % (path, status, expected, text[:2000].decode(errors="replace")))
    sizes["backup"] = len(text)
    status, text = request(conn, "GET", prefix + "/update.php")
    if status != 200:
        die("first contact %s answered %d" % (prefix, status))
    sizes["first"] = len(text)
    conn.close()
    return {"steady": steady, "full": full, "first": [prefix + "/update.php"], "backup": backups}, sizes


def run_wrk(args, port, paths_file, body_file, measuring):
    """wrk over the paths (a PUT of body_file to each when given), `measuring` called after
    the warm-up; "bad" counts every error and every answer that is not 2xx."""
    if body_file:
        values = backup.run_wrk(args, port, paths_file, body_file, measuring)
    else:
        values = poll.run_wrk(args, port, paths_file, measuring)
    values["bad"] = values.get("errors", 0) + values.get("non_200", 0) + values.get("non_2xx", 0)
    return values


def restore(tree, pristine):
    for runtime in ("status", "backup"):
        shutil.rmtree(os.path.join(tree, runtime), ignore_errors=True)
        shutil.copytree(os.path.join(pristine, runtime), os.path.join(tree, runtime), symlinks=True)


def measure_once(args, server, port, paths, body_file, exe, tree):
    if tree:
        restore(tree, tree + ".pristine")
    paths_file = os.path.join(server.tmp, "paths.txt")
    with open(paths_file, "w") as f:
        f.write("\n".join(paths) + "\n")
    pids = server.backends(exe) if exe else []
    # read after the warm-up: its requests are not counted, so neither is its CPU time
    before = {}
    result = run_wrk(args, port, paths_file, body_file, lambda: before.update({pid: cpu_ticks(pid) for pid in pids}))
    requests = max(result["requests"], 1)
    cpu = sum(cpu_ticks(p) - before[p] for p in pids) / CLK_TCK / requests * 1e6 if pids else None
    return {"rps": result["rps"], "cpu_us": cpu, "bad": result["bad"],
            "rss_kib": max([peak_rss_kib(p) for p in pids] or [0]) or None}


def median_of(runs, key):
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def scenario(args, tmp, port, bins, trees, plans, sizes, body_file, scenario_name, base=None):
    """Measures one scenario: its targets, --rounds times each, interleaved round by round so
    that a noisy moment on the shared machine hits all targets alike."""
    ours_bin, noop_bin, php_cgi = bins
    ours_root, php_root = trees
    size = sizes["ours"][scenario_name]
    static = os.path.join(tmp, "htdocs", "static", "%s.txt" % scenario_name)
    os.makedirs(os.path.dirname(static), exist_ok=True)
    with open(static, "w") as f:
        f.write("#" * max(size - 2, 0) + "\r\n"[: min(size, 2)])
    ours_paths = plans["ours"][scenario_name]
    queries = [p.split("?", 1)[1] if "?" in p else "" for p in ours_paths]
    put_body = body_file if scenario_name == "backup" else None
    targets = [
        ("static", ["/static/%s.txt" % scenario_name + ("?" + q if q else "") for q in queries], None, None, None),
        ("noop", ["/noop/update.php" + ("?" + q if q else "") for q in queries], put_body, noop_bin, None),
        ("ours", ours_paths, put_body, ours_bin, ours_root),
    ]
    if base:
        base_paths = ["/base/" + p[len("/ours/"):] for p in ours_paths]
        targets.append(("base", base_paths, put_body, base[0], base[1]))
    if php_root:
        targets.append(("php", plans["php"][scenario_name], put_body, php_cgi, php_root))
    server = Lighttpd(lighttpd_conf(tmp, port, ours_bin, ours_root, noop_bin, size, php_cgi, php_root, base), port, tmp)
    runs = {name: [] for name, *_ in targets}
    try:
        for _ in range(args.rounds):
            for name, paths, body, exe, tree in targets:
                if name == "static" and body:
                    continue  # lighttpd does not take a PUT to a static file
                runs[name].append(measure_once(args, server, port, paths, body, exe, tree))
    finally:
        server.stop()
    out = {"answer_bytes": size, "targets": {}}
    for name, results in runs.items():
        if not results:
            continue
        rps = [r["rps"] for r in results]
        out["targets"][name] = {
            "rps": statistics.median(rps), "rps_min": min(rps), "rps_max": max(rps),
            "cpu_us": median_of(results, "cpu_us"), "rss_kib": max([r["rss_kib"] or 0 for r in results]) or None,
            "bad": sum(r["bad"] for r in results), "runs": results,
        }
        t = out["targets"][name]
        log("   %-7s %-7s %9.0f req/s (%.0f..%.0f)  cpu %s µs  bad %d" % (
            scenario_name, name, t["rps"], t["rps_min"], t["rps_max"],
            "-" if t["cpu_us"] is None else "%.0f" % t["cpu_us"], t["bad"]))
    return out


def table(args, results, php):
    lines = [
        "| scenario | answer B | static req/s | noop req/s | ours req/s | ours/static | ours/noop | ours CPU µs/req"
        " | ours peak RSS | php req/s | php CPU µs/req | ours/php |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    f = lambda v, p: "-" if v is None else p % v
    for name in args.scenarios:
        r = results[name]
        t = r["targets"]
        get = lambda target, key: t.get(target, {}).get(key)
        ratio = lambda a, b: None if get(a, "rps") is None or not get(b, "rps") else get(a, "rps") / get(b, "rps")
        rss = get("ours", "rss_kib")
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name, r["answer_bytes"], f(get("static", "rps"), "%.0f"), f(get("noop", "rps"), "%.0f"),
            f(get("ours", "rps"), "%.0f"), f(ratio("ours", "static"), "%.3f"), f(ratio("ours", "noop"), "%.2f"),
            f(get("ours", "cpu_us"), "%.0f"), f(rss and rss / 1024, "%.1f MiB"),
            f(get("php", "rps"), "%.0f") if php else "not run", f(get("php", "cpu_us"), "%.0f"),
            f(ratio("ours", "php"), "%.1f")))
    if any("base" in results[name]["targets"] for name in args.scenarios):
        lines += ["", "| scenario | ours req/s | base req/s | ours/base | ours CPU µs/req | base CPU µs/req | base peak RSS |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name in args.scenarios:
            t = results[name]["targets"]
            ours, base = t.get("ours", {}), t.get("base", {})
            rss = base.get("rss_kib")
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                name, f(ours.get("rps"), "%.0f"), f(base.get("rps"), "%.0f"),
                f(ours.get("rps") / base["rps"] if ours.get("rps") and base.get("rps") else None, "%.2f"),
                f(ours.get("cpu_us"), "%.0f"), f(base.get("cpu_us"), "%.0f"), f(rss and rss / 1024, "%.1f MiB")))
    bad = sum(t["bad"] for r in results.values() for t in r["targets"].values())
    head = ("medians of %d rounds, wrk -t%d -c%d, %d s per run (+%d s warm-up), %d poll devices, %d backup "
            "devices, %d cores, %s; errors and non-2xx answers in all runs: %d"
            % (args.rounds, args.threads, args.connections, args.duration, args.warmup, args.devices,
               BACKUP_DEVICES, os.cpu_count(), poll.lighttpd_version(), bad))
    return head, lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000, help="devices the polls rotate over")
    ap.add_argument("--duration", type=int, default=5, help="seconds of wrk per run")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured wrk before each run")
    ap.add_argument("--rounds", type=int, default=3, help="runs per target; the median is reported")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--connections", type=int, default=4, help="wrk connections")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ",".join(SCENARIOS))
    ap.add_argument("--php-tree", default=DEFAULT_PHP_TREE, help="the old PHP server's tree ('' to skip it)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--baseline", help="another update-server binary to measure beside ours (target 'base')")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not args.scenarios or set(args.scenarios) - set(SCENARIOS):
        die("--scenarios takes a comma-separated subset of " + ",".join(SCENARIOS))
    if not 1 <= args.devices <= 65536 or args.rounds < 1:
        die("--devices must be 1..65536, --rounds at least 1")
    for tool in (LIGHTTPD, shutil.which("wrk")):
        if not tool or not os.access(tool, os.X_OK):
            die("needs lighttpd and wrk (Debian: apt-get install lighttpd wrk)")
    php_cgi = shutil.which("php-cgi")
    php_tree = args.php_tree if php_cgi and args.php_tree and os.path.isfile(os.path.join(args.php_tree, "update.php")) else None
    if not php_tree:
        log("== the old PHP server is not measured (needs php-cgi and --php-tree with update.php)")

    if args.baseline and not os.access(args.baseline, os.X_OK):
        die("--baseline %s is not an executable" % args.baseline)
    ours_bin, noop_bin = poll.build(args)
    tmp = tempfile.mkdtemp(prefix="update-server-suite-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    server = None
    try:
        ours_root, php_root = prepare_trees(tmp, php_tree)
        os.makedirs(os.path.join(tmp, "htdocs"))
        body_file = os.path.join(tmp, "backup-body.txt")
        body = backup.config_body(20000)
        with open(body_file, "wb") as f:
            f.write(body)
        port = free_port()
        log("== priming %d poll devices and %d backup devices per server" % (args.devices, BACKUP_DEVICES))
        server = Lighttpd(lighttpd_conf(tmp, port, ours_bin, ours_root, noop_bin, 0, php_cgi, php_root), port, tmp)
        plans, sizes = {}, {}
        for name, root in (("ours", ours_root), ("php", php_root)):
            if root:
                plans[name], sizes[name] = prime(port, "/" + name, args.devices, body)
                shutil.rmtree(root + ".pristine", ignore_errors=True)
                os.makedirs(root + ".pristine")
                for runtime in ("status", "backup"):
                    shutil.copytree(os.path.join(root, runtime), os.path.join(root + ".pristine", runtime), symlinks=True)
        server.stop()
        server = None
        base = None
        if args.baseline:
            # its own copy of the binary (backends are told apart by their executable) and of
            # ours' primed tree, pristine copy included: the same devices in the same state
            base = (os.path.join(tmp, "base-update-server"), os.path.join(tmp, "base"))
            shutil.copy2(args.baseline, base[0])
            for suffix in ("", ".pristine"):
                shutil.copytree(ours_root + suffix, base[1] + suffix, symlinks=True)
        log("   answer sizes: ours %s%s" % (sizes["ours"], ", php %s" % sizes["php"] if php_root else ""))
        results = {}
        for name in args.scenarios:
            log("== %s" % name)
            results[name] = scenario(args, tmp, port, (ours_bin, noop_bin, php_cgi), (ours_root, php_root),
                                     plans, sizes, body_file, name, base)
        head, lines = table(args, results, php_root)
        text = "\n".join(["# suite %s" % datetime.datetime.now().isoformat(timespec="seconds"), "", head, ""]
                         + lines) + "\n"
        print("\n" + text)
        poll.save_results("suite", text, {"args": vars(args), "sizes": sizes, "results": results})
    finally:
        poll.tear_down(server, tmp, args.keep)


if __name__ == "__main__":
    main()
