#!/usr/bin/env python3
"""Server time of the admin status page (admin/admin.php?mode=status) for 100, 1,000 and
10,000 device state files.

Three views are measured: the page as it opens (the first 500 devices; longer lists are paged),
a filter (every state file read and matched; all devices match here, the first 500 shown), and
every device on one page (`page=all`, the old page's behaviour); then the fleet metrics
(`mode=metrics`: every state file read and summed up, no `show` columns) and the inventory
export as the page's CSV download (`mode=export&format=csv`: every row with its `show` columns,
one file at a time). For these two the rows column counts the devices they name.

For each size, a temporary install root gets config.xml, a user file (status, backups,
certificates and two XPath `show` columns), and N generated state files shaped like real ones
(device, firmware, delivered snippets, log messages, the admin and registration query answers);
every second device has a backup folder with three backups, every tenth a CSR in certs/.
The binary then runs as CGI exactly as a web server runs it: one login (POST, HTTPS=on), then
the status page several times with the session cookie. Reported per size: the median and the
best wall time of the whole CGI process (start, configuration, reading every state file,
XPath, rendering, exit), which is an upper bound of the server time, the CPU time of all its
threads, and the page size. Run it on an otherwise idle machine: the wall time is what an
operator waits for, and other load on the cores inflates it.

With `--mixed` the fleet is one of SPA phones and innovaphone phones on upgrade paths (issue 9):
the user file gets an SPA and an innovaphone `<upgrades>` path and a master (never reachable;
its box info is cached), every third device is an SPA504G state as an SPA profile writes it,
and the innovaphone phones carry `firmware/@via`; every row then plans its next hop.

Usage:

    python3 bench/status_page.py                    # builds release first
    python3 bench/status_page.py --no-build --runs 7 --sizes 100,1000,10000
    python3 bench/status_page.py --no-build --mixed

Results go to bench/results/status_page.md (git-ignored). Nothing but local files and child
processes are used; the temporary directories are removed at the end.
"""

import argparse
import datetime
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "Bench-Passw0rd"
CPU = []
# what is measured: the page as it opens (the first 500 devices), a filter (every state file
# read and matched, the matching devices shown), and every device on one page
VIEWS = [
    ("first page", "mode=status"),
    ("filter 'present ip232 172.16.*'", "mode=status&filter=present+ip232+172.16.*"),
    ("all on one page", "mode=status&page=all"),
    ("metrics", "mode=metrics"),
    ("export (CSV download)", "mode=export&format=csv"),
]

USER_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<config>
  <master info="" user="admin" password="%s"/>
  <status dir="status" missing="604800" refresh="60"/>
  <backup dir="backup"/>
  <customcerts dir="certs"/>
  <queries>
    <query id="admin" title="Admin"><cmd>mod cmd CMD0 xml-info</cmd><applies>*</applies></query>
    <query id="registration" title="Registration">
      <cmd>mod cmd PHONE/USER phone-regs /cmd phone-regs</cmd><applies>phone</applies>
      <show title="State: User/Number">concat(/state/queries/registration/info/reg[@id = "0"]/@state, ': ', /state/queries/registration/info/reg[@id = "0"]/@h323, '/', /state/queries/registration/info/reg[@id = "0"]/@e164)</show>
      <show title="PBX/ID">concat(/state/queries/registration/info/reg[@id = "0"]/@gk-addr, '/', /state/queries/registration/info/reg[@id = "0"]/@gk-id)</show>
    </query>
  </queries>
</config>
""" % PASSWORD


def serial(i):
    digits = "%06x" % i
    return "00-90-33-%s-%s-%s" % (digits[0:2], digits[2:4], digits[4:6])


def state(i, now):
    sn = serial(i)
    hwid = "IP232-" + sn[9:]
    seen = now - (i * 37) % 900000
    msgs = "".join(
        '  <msgs time="%d" msg="%s"/>\n' % (seen, m)
        for m in ["", "phase update", "scripts/update-all-default.txt delivered", "CHECK matches, nothing to do",
                  "firmware 13r3 sr12 is current", "backup requested", "", "CHECK matches, nothing to do"]
    )
    return """<?xml version="1.0" encoding="UTF-8"?>
<state seen="%(seen)d" phase="update" nextphase="">
  <device sn="%(sn)s" type="IP232" classes="phone, pre_opus_phone, phone_newui, ip232" ip="172.16.%(a)d.%(b)d" rp="false" phase="update" environments="default" certstat="OK" hwid="%(hwid)s" realip="172.16.%(a)d.%(b)d" requestDownloaded="false" backup="%(seen)d"/>
  <firmware requested="1333" requested-at="%(seen)d" build="1333"/>
  <bootcode requested-at="%(seen)d" build="1333"/>
  <config filename="scripts/update-all-default.txt" delivered="%(seen)d" version="1600000000"/>
  <config filename="scripts/update-phone-default.txt" delivered="%(seen)d" version="1600000000"/>
%(msgs)s  <queries>
    <admin seen="%(seen)d"><info name="Phone %(i)d" version="13r3 sr12" serial="%(sn)s" type="IP232" hw-id="%(hwid)s" mac="%(sn)s"/></admin>
    <registration seen="%(seen)d"><info><reg id="0" state="up" h323="user%(i)d" e164="%(i)d" gk-addr="172.16.0.10" gk-id="PBX"/><reg id="1" state="down" h323="" e164="" gk-addr="" gk-id=""/></info></registration>
    <certificates seen="%(seen)d"><info><servercert><certificate subject_cn="%(hwid)s" issuer_cn="innovaphone Device Certification Authority" not_before="2020-01-01T00:00:00Z" not_after="2040-01-01T00:00:00Z"/></servercert></info></certificates>
  </queries>
</state>
""" % {"seen": seen, "sn": sn, "hwid": hwid, "a": (i // 250) % 250, "b": i % 250 + 1, "msgs": msgs, "i": i}


MIXED_CONFIG = """  <upgrades>
    <path models="SPA301 SPA303 SPA501G SPA502G SPA504G SPA508G SPA509G" version="7.6.1" file="fw/cisco/spa50x-30x-7-6-1.bin" downgradelimit="7.6.1">
      <via version="7.5.2b" file="fw/cisco/spa50x-30x-7-5-2b.bin"/>
    </path>
    <path applies="phone"><via build="131504"/></path>
  </upgrades>
</config>
"""


def spa_state(i, now):
    """An SPA504G's state as src/spa/profile.rs writes it (the versions of the thread's walk)."""
    digits = "%06x" % i
    sn = "58-bf-ea-%s-%s-%s" % (digits[0:2], digits[2:4], digits[4:6])
    seen = now - (i * 37) % 900000
    version, hop = [("7.3.7", "7.5.2b"), ("7.5.2b", "7.6.1"), ("7.6.1", ""), ("7.5.2b(XU1)", "")][i % 4]
    msgs = "".join('  <msgs time="%d" msg="%s"/>\n' % (seen, m) for m in ["", "firmware %s -> %s (fw/cisco/x.bin)" % (version, hop), ""])
    return sn, """<?xml version="1.0" encoding="UTF-8"?>
<state seen="%(seen)d" phase="update" nextphase="">
  <device sn="%(sn)s" type="SPA504G" vendor="Cisco" serial="CCQ%(i)08d" version="%(version)s" classes="spa50x, spa504g" ip="172.16.%(a)d.%(b)d" rp="false" proxy="" phase="update" environments="default" hop="%(hop)s" profile="%(seen)d"/>
  <config filename="scripts/update-all-default.xml" delivered="%(seen)d" version="1600000000"/>
  <config filename="scripts/update-spa50x-default.xml" delivered="%(seen)d" version="1600000000"/>
%(msgs)s</state>
""" % {"seen": seen, "sn": sn, "i": i, "version": version, "hop": hop, "a": (i // 250) % 250, "b": i % 250 + 1, "msgs": msgs}


def make_root(n, mixed=False):
    root = tempfile.mkdtemp(prefix="status-bench-")
    shutil.copy(os.path.join(REPO, "config.xml"), root)
    shutil.copy(os.path.join(REPO, "full-config.dtd"), root)
    for d in ["config", "status", "backup", "certs", "cache", "scripts", "admin"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    with open(os.path.join(root, "config/user-config.xml"), "w") as f:
        if mixed:
            f.write(USER_CONFIG.replace('<master info=""', '<master info="http://127.0.0.1:9/CMD0/box_info.xml"').replace("</config>\n", MIXED_CONFIG))
        else:
            f.write(USER_CONFIG)
    if mixed:
        with open(os.path.join(root, "cache/master-info.xml"), "w") as f:
            f.write("<info><sys version='IP811[13r3 sr7 [134567]], Bootcode[134560], Hardware[302]'/></info>")
    with open(os.path.join(root, "scripts/update-all-default.txt"), "w") as f:
        f.write("config add CMD0 /location x\n")
    now = int(time.time())
    for i in range(n):
        if mixed and i % 3 == 1:
            sn, text = spa_state(i, now)
            with open(os.path.join(root, "status", sn + ".xml"), "w") as f:
                f.write(text)
            continue
        sn = serial(i)
        with open(os.path.join(root, "status", sn + ".xml"), "w") as f:
            text = state(i, now)
            if mixed:
                build, via = [("130178", "131504"), ("131504", ""), ("134567", "")][i % 3]
                text = text.replace('<firmware requested="1333" requested-at="%d" build="1333"/>' % (now - (i * 37) % 900000),
                                    '<firmware requested="131504" via="%s" requested-at="0" build="%s"/>' % (via, build))
            f.write(text)
        if i % 2 == 0:
            hwid = "IP232-" + sn[9:]
            folder = os.path.join(root, "backup", hwid)
            os.makedirs(folder)
            for k in range(3):
                with open(os.path.join(folder, "%s.%d.txt" % (hwid, k)), "w") as f:
                    f.write("config change CMD0 /name backup%d\r\n" % k)
        if i % 10 == 0:
            with open(os.path.join(root, "certs", sn + "-request.p10.pem"), "w") as f:
                f.write("-----BEGIN CERTIFICATE REQUEST-----\r\nMIIB\r\n-----END CERTIFICATE REQUEST-----\r\n")
    return root


def cgi(binary, root, method, query, body=b"", extra=None):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": method,
        "QUERY_STRING": query,
        "SCRIPT_NAME": "/update/admin/admin.php",
        "SCRIPT_FILENAME": os.path.join(root, "admin/admin.php"),
        "HTTP_HOST": "update.example.com",
        "SERVER_NAME": "update.example.com",
        "SERVER_PORT": "443",
        "HTTPS": "on",
        "REMOTE_ADDR": "172.16.0.5",
        "SERVER_SOFTWARE": "bench",
        "CONTENT_LENGTH": str(len(body)),
    }
    env.update(extra or {})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([binary], input=body, env=env, cwd=os.path.join(root, "admin"), capture_output=True, check=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.append(cpu)
    head, _, page = out.stdout.partition(b"\r\n\r\n")
    return elapsed, head.decode("latin-1"), page


def devices_named(query, page):
    """How many devices an answer names: status rows, the metrics' device count, CSV records."""
    if query == "mode=metrics":
        line = next(l for l in page.split(b"\n") if l.startswith(b"update_server_devices "))
        return int(line.split()[1])
    if query.startswith("mode=export"):
        return page.count(b"\r\n") - 1
    return page.count(b'<tr id="device-')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--binary", default=None)
    parser.add_argument("--mixed", action="store_true", help="SPA and innovaphone devices on upgrade paths")
    args = parser.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    binary = args.binary or os.path.join(target, "release", "update-server")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    lines = ["# Status page benchmark (%s)" % datetime.datetime.now().isoformat(timespec="seconds"), "",
             "cores: %d; binary: %s; %d runs per size, CGI process wall time%s" % (os.cpu_count(), binary, args.runs, "; mixed fleet (SPA, upgrade paths)" if args.mixed else ""), "",
             "| devices | view | median ms | best ms | CPU ms (all threads) | page KiB | rows |", "|---:|---|---:|---:|---:|---:|---:|"]
    for n in [int(s) for s in args.sizes.split(",")]:
        root = make_root(n, args.mixed)
        try:
            _, head, _ = cgi(binary, root, "POST", "", ("user=admin&pw=%s" % PASSWORD).encode(),
                             {"CONTENT_TYPE": "application/x-www-form-urlencoded"})
            cookie = [l.split(":", 1)[1].strip().split(";")[0] for l in head.split("\r\n") if l.lower().startswith("set-cookie:")]
            if not cookie:
                sys.exit("login failed:\n" + head)
            for what, query in VIEWS:
                times = []
                del CPU[:]
                page = b""
                for _ in range(args.runs):
                    elapsed, head, page = cgi(binary, root, "GET", query, extra={"HTTP_COOKIE": cookie[0]})
                    if not head.startswith("Status: 200"):
                        sys.exit("status page failed:\n" + head)
                    times.append(elapsed * 1000)
                rows = devices_named(query, page)
                cpu = statistics.median(CPU) * 1000
                line = "| %d | %s | %.0f | %.0f | %.0f | %.0f | %d |" % (n, what, statistics.median(times), min(times), cpu, len(page) / 1024, rows)
                print(line, flush=True)
                lines.append(line)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(REPO, "bench/results"), exist_ok=True)
    with open(os.path.join(REPO, "bench/results/status_page.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
