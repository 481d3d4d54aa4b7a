"""Fault tolerance on the cluster plane (`ferry vm ft enable|disable`), on a
3-host `ferry lab`: the failover decided through etcd (the owner key
/ferry/ft/NAME/owner, see src/cluster/ferryd/ft.c).

The guest runs tcpserve --echo on network `lan` with a disk image on the
shared datastore; LAB-client streams through it with test_hosts.py's
STREAM_CLIENT, which checks every byte of the echo against its offset and
fails on a reset, a stall, or any lost, duplicated or reordered byte.

What is proved, and how it would fail:
- the primary's host dies (test_ft_cluster_primary_host_dies): every
  process in LAB-h1 killed and its link cut mid-stream; the secondary's
  ferryd wins the owner key as soon as it calls h1 lost (it need not wait
  for h1's lease: h1's primary held its output) and takes over:
  the stream goes on on the same connection with every byte intact (the
  gap the client saw is printed, not asserted), the echo server's count
  matches what the client sent; ferry-center moves the VM to the former
  secondary's host (task ft-failover, audit ft.failover) and FT is
  restored on the third host (`vm show`: protected, secondary h3); the VM
  asked for HA too, and HA leaves it to FT (no ha-restart). Without
  the takeover the stream stalls; without output commit it breaks;
- the FT link cut with both hosts alive (test_ft_cluster_link_cut): the
  secondary's replies on the FT connection are blackholed (a routing rule
  on its port), nothing else: both sides call the other lost and their
  ferryds race for the owner key. The primary's side wins: it runs on
  (same process), paused with its output held until its ferryd has
  rewritten the key to name no secondary (ft-continue, in ferryd's log;
  so the secondary can never take over after it), the secondary ends, the
  VM is reported unprotected with the reason. The secondary's side wins:
  h1's ferryd kills its held primary unreleased, the secondary takes over
  only once the primary's disk lock is gone, ferry-center moves the VM to
  h2 (its stray-stopper must not stop the new primary while h1 lives).
  Either way at every poll at most one process runs the guest, the
  stream verifies, and FT is protected again;
- the secondary's host dies (test_ft_cluster_secondary_host_dies): the
  primary runs on, `vm show` says unprotected and why (its history keeps
  it), the stream verifies, FT comes back on the third host; maintenance
  of the primary's host refuses to evacuate it, with the reason;
- the primary's host cut off, its processes alive
  (test_ft_cluster_primary_cut_off): its self-fence kills the primary
  before its lease can expire, the secondary takes over; at every poll
  at most one process runs the guest; the stream verifies;
- ferryds restarted (test_ft_cluster_ferryd_restart): the primary's and
  the secondary's ferryd find their FT roles again; the primary's then
  handles the secondary's host dying (unprotected, restored on h3);
- bad input: ft enable of an unknown VM (404), with the primary's own host
  as secondary (409, the wizard's reason), twice (409); a migration of an
  FT VM is refused (409); ft disable removes the secondary's process and
  the status.
"""

import json
import os
import re
import subprocess
import time

from ferrylib import BUILD, wait_until
from test_cluster import Lab
from test_ft import Gap
from test_hosts import ECHO_PORT, Stream

TIMEOUT = 300
# alone under tests/run -j: a 500 ms FT link and failover races
SERIAL = True
GUEST_IP = "10.88.0.200"
APPEND = ("console=ttyS0 quiet ferry.ip=%s/24 ferry.run=tcpserve,--echo,--port,%d"
          % (GUEST_IP, ECHO_PORT))


class LabTopo:
    """What test_hosts.Stream needs of a topology: the client namespace."""

    def __init__(self, lab):
        self.client = lab.name + "-client"

    def exec_prefix(self, ns):
        return ["ip", "netns", "exec", ns]


def ft_vm(lab, name, host, ha=None):
    """An echo guest on `lan` with a disk on the shared datastore, on host."""
    subprocess.run([str(BUILD / "ferry-img"), "create", str(lab.dir / "shared" / (name + ".img")),
                    "8M"], check=True, capture_output=True)
    lab.cli("vm", "create", name, "--kernel", "shared:Image", "--initrd", "shared:initrd.img",
            "--append", APPEND, "--mem", "128", "--net", "lan,mac=52:54:00:88:00:31",
            "--disk", "shared:%s.img" % name, "--host", host, *(["--ha", ha] if ha else []))
    wait_until(lambda: "tcpserve: listening" in lab.console(name), 90, "tcpserve in " + name,
               interval=0.5)


def ft_of(lab, name):
    return lab.vm(name)["ft"] or {}


def wait_protected(lab, name, secondary=None, timeout=90):
    def ok():
        ft = ft_of(lab, name)
        return ft if ft.get("state") == "protected" and (
            secondary is None or ft.get("secondary") == secondary) else None
    return wait_until(ok, timeout, "%s protected%s" % (name, " by " + secondary if secondary
                                                        else ""), interval=0.3)


def guest_procs(lab):
    """{host: [(pid, cmdline)]} of every ferry-vm in the lab."""
    return {h: lab.procs(h, str(BUILD / "ferry-vm")) for h in ("h1", "h2", "h3")}


def vm_status(lab, host, control, pid):
    """query-status of the ferry-vm pid behind a control socket (in
    LAB-host), or "held" for a primary paused by FT's on_loss hold (its
    guest runs again only on ft-continue, which its ferryd sends only while
    it keeps the owner key); None once it has ended; retried on a loaded
    machine, an error when a live one never answers."""
    prog = ("import socket,sys,json; s=socket.socket(socket.AF_UNIX)\n"
            "try: s.connect(sys.argv[1])\n"
            "except OSError as e: print(json.dumps({'error': str(e)})); sys.exit()\n"
            "s.settimeout(20); f=s.makefile('rw'); f.readline()\n"
            "def ask(c):\n"
            " f.write(json.dumps({'execute': c})+'\\n'); f.flush()\n"
            " return json.loads(next(l for l in f if 'return' in l or 'error' in l))\n"
            "st = ask('query-status'); ft = ask('query-ft') if 'return' in st else {}\n"
            "print(json.dumps(dict(st, ft=ft.get('return'))))")
    said = ""
    for _ in range(5):
        r = subprocess.run(["ip", "netns", "exec", "%s-%s" % (lab.name, host), "python3", "-c",
                            prog, control], capture_output=True, text=True)
        reply = json.loads(r.stdout) if r.stdout.strip() else {}
        if "return" in reply:
            status = reply["return"].get("status")
            ft = reply.get("ft") or {}
            if status == "paused" and ft.get("status") == "secondary-lost":
                return "held"
            return status
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None   # it has ended
        said = reply.get("error") or r.stderr
        time.sleep(0.5)
    raise AssertionError("ferry-vm %d at %s does not answer: %s" % (pid, control, said))


class Copies(list):
    """running_copies' answer; says every process's status when printed."""

    def __repr__(self):
        return "%s (statuses %s)" % (list.__repr__(self), self.seen)


def running_copies(lab, name):
    """Hosts whose ferry-vm runs the guest (query-status running, or paused
    for a checkpoint), by its control socket; the secondary answers
    inmigrate until it takes over, a primary held after losing its
    secondary "held" (not a running copy). The hosts are asked one after
    another, and one busy taking over may answer seconds late (vm_status
    retries): so two copies count only if a second round of asking finds
    them again (a -j 2 run once saw h1 "running" from before its loss and
    h2 running after its takeover, which had waited for h1's death)."""
    copies = sample_copies(lab, name)
    return sample_copies(lab, name) if len(copies) > 1 else copies


def sample_copies(lab, name):
    hosts = Copies()
    hosts.seen = []
    for host, procs in guest_procs(lab).items():
        for pid, cmd in procs:
            m = re.search(r"--control (\S+)", cmd)
            if m and "/vms/%s/" % name in m.group(1):
                status = vm_status(lab, host, m.group(1), pid)
                hosts.seen.append((host, pid, status))
                if status in ("running", "paused"):   # paused: a checkpoint's pause
                    hosts.append(host)
    return hosts


def finish(lab, name, stream):
    sent, _ = stream.finish()
    m = wait_until(lambda: re.search(r"tcpserve: \S+ closed after (\d+) bytes",
                                     lab.console(name)), 30, "tcpserve's count")
    assert int(m.group(1)) == sent, "the guest echoed %s bytes, the client sent %d" % (
        m.group(1), sent)
    return sent


def test_ft_cluster_primary_host_dies():
    with Lab() as lab:
        # HA asked for too: while FT protects the VM, HA must not start a
        # copy of its own when h1 dies
        ft_vm(lab, "ft1", "h1", ha="high")
        # bad input first
        st, doc, _ = lab.run("vm", "ft", "enable", "nosuch", check=False)
        assert st == 1 and doc["error"]["status"] == 404, doc
        st, doc, _ = lab.run("vm", "ft", "enable", "ft1", "--secondary", "h1", check=False)
        assert st == 1 and doc["error"]["status"] == 409 and "runs there" in \
            doc["error"]["message"], doc
        assert lab.vm("ft1")["ft"] is None
        # no --secondary: the wizard's choice, never the primary's host
        t = lab.cli("vm", "ft", "enable", "ft1", "--wait")
        assert t["state"] == "succeeded" and t["kind"] == "ft-enable", t
        ft = wait_protected(lab, "ft1")
        sec = ft["secondary"]
        assert ft["primary"] == "h1" and sec in ("h2", "h3"), ft
        third = ({"h2", "h3"} - {sec}).pop()
        st, doc, _ = lab.run("vm", "ft", "enable", "ft1", check=False)
        assert st == 1 and doc["error"]["status"] == 409, doc
        st, doc, _ = lab.run("vm", "migrate", "ft1", "--to", third, check=False)
        assert st == 1 and doc["error"]["status"] == 409, doc
        with Stream(LabTopo(lab), GUEST_IP) as stream:
            stream.wait_flowing(what="protected")
            ft = wait_until(lambda: (lambda f: f if f.get("checkpoints_per_s", 0) > 0 else None)
                            (ft_of(lab, "ft1")), 30, "checkpoint figures")
            print("protected: %.1f checkpoints/s, %d bytes an epoch, output delayed %.1f ms, "
                  "guest paused %.1f %%" % (ft["checkpoints_per_s"], ft["bytes_per_epoch"],
                                           ft["added_latency_ms"], ft["slowdown_pct"]))
            assert ft["bytes_per_epoch"] > 0 and ft["epoch_ms"] > 0, ft
            gap = Gap(stream)
            killed = time.monotonic()
            lab.kill_host("h1")
            vm = wait_until(lambda: (lambda v: v if v["host"] == sec else None)(lab.vm("ft1")),
                            60, "ft1 to run on " + sec, interval=0.3)
            stream.wait_flowing(what="after failover")
            print("failover: the client saw the echo stand still for %.0f ms "
                  "(%.1f s from the kill to ferry-center's move)" % (
                      gap.end() * 1000, time.monotonic() - killed))
            assert vm["state"] == "running", vm
            fo = vm["ft"]["last_failover"]
            assert fo["from"] == "h1" and fo["to"] == sec and fo["epoch"] > 0, vm["ft"]
            copies = running_copies(lab, "ft1")
            assert copies == [sec], copies
            # the new primary may run before h1's lease expires: ferry-center
            # must not have taken it for a stray copy (the owner key says)
            logs = "".join(p.read_text() for p in (lab.dir / "logs").glob("*.log"))
            assert "ran a copy of VM ft1" not in logs, "ferry-center stopped the new primary"
            # FT restored on the third host
            ft = wait_protected(lab, "ft1", secondary=third)
            assert ft["primary"] == sec and ft["failovers"] == 1, ft
            stream.wait_flowing(what="protected again")
            sent = finish(lab, "ft1", stream)
        print("stream: %d bytes sent and echoed intact across the failover" % sent)
        tasks = lab.cli("task", "list", "--vm", "ft1")["tasks"]
        assert not [t for t in tasks if t["kind"] == "ha-restart"], tasks
        assert "HA: VM ft1 restarted" not in "".join(
            p.read_text() for p in (lab.dir / "logs").glob("ferryd-*.log"))
        fo_task = [t for t in tasks if t["kind"] == "ft-failover"]
        assert fo_task and fo_task[0]["source"] == "h1" and fo_task[0]["destination"] == sec
        rec = [r for r in lab.cli("audit", "--vm", "ft1")["records"]
               if r["action"] == "ft.failover"]
        assert rec and rec[0]["user"] == "ferryd-" + sec, rec
        assert lab.cli("audit", "--verify")["ok"] is True
        # disable: the secondary's process goes, FT is off
        t = lab.cli("vm", "ft", "disable", "ft1")
        assert t["state"] == "succeeded" and t["kind"] == "ft-disable", t
        assert lab.vm("ft1")["ft"] is None
        wait_until(lambda: not guest_procs(lab)[third], 20, "the secondary on %s to end" % third)
        assert any(r["action"] == "vm.ft.disable" for r in
                   lab.cli("audit", "--vm", "ft1")["records"])


def secondary_port(lab, host):
    for _, cmd in guest_procs(lab)[host]:
        m = re.search(r"--ft-secondary tcp:[\d.]+:(\d+)", cmd)
        if m:
            return int(m.group(1))
    raise AssertionError("no secondary on %s: %s" % (host, guest_procs(lab)))


def test_ft_cluster_link_cut():
    """Only the FT connection is cut: h2's packets from the secondary's
    port are routed into a blackhole (everything else flows)."""
    with Lab() as lab:
        ft_vm(lab, "ft2", "h1")
        t = lab.cli("vm", "ft", "enable", "ft2", "--secondary", "h2", "--wait")
        assert t["state"] == "succeeded", t
        wait_protected(lab, "ft2", secondary="h2")
        primary_pid = guest_procs(lab)["h1"][0][0]
        port = secondary_port(lab, "h2")
        ns = ["ip", "netns", "exec", lab.name + "-h2"]
        with Stream(LabTopo(lab), GUEST_IP) as stream:
            stream.wait_flowing(what="protected")
            subprocess.run(ns + ["ip", "route", "add", "blackhole", "default", "table", "100"],
                           check=True)
            subprocess.run(ns + ["ip", "rule", "add", "ipproto", "tcp", "sport", str(port),
                                 "table", "100"], check=True)
            # until one side has ended: never two copies running
            deadline = time.monotonic() + 60
            while True:
                copies = running_copies(lab, "ft2")
                assert len(copies) <= 1, "two copies run: %s" % copies
                primary_gone = primary_pid not in [p for p, _ in guest_procs(lab)["h1"]]
                if primary_gone or not secondary_port_or_none(lab, "h2", port):
                    break
                assert time.monotonic() < deadline, "neither side ended: %s" % copies
                time.sleep(0.2)
            h2_log = (lab.dir / "logs" / "ferryd-h2.log").read_text()
            h1_log = (lab.dir / "logs" / "ferryd-h1.log").read_text()
            if "won the owner key" in h2_log:
                winner = "h2"
                # h1's ferryd saw the key move and killed its held primary
                wait_until(lambda: "ending the guest here unreleased" in (
                    lab.dir / "logs" / "ferryd-h1.log").read_text(), 30,
                    "h1's ferryd to end its primary")
                assert "names no secondary: ft-continue" not in h1_log, h1_log[-2000:]
                deadline = time.monotonic() + 60
                while running_copies(lab, "ft2") != ["h2"]:
                    copies = running_copies(lab, "ft2")
                    assert len(copies) <= 1, "two copies run: %s" % copies
                    assert time.monotonic() < deadline, "ft2 did not run on h2: %s" % copies
                    time.sleep(0.2)
                wait_until(lambda: lab.vm("ft2")["host"] == "h2", 60,
                           "ferry-center to show ft2 on h2")
                assert primary_pid not in [p for p, _ in guest_procs(lab)["h1"]]
            else:
                winner = "h1"
                wait_until(lambda: not secondary_port_or_none(lab, "h2", port), 60,
                           "the cut-off secondary to end")
                copies = running_copies(lab, "ft2")
                assert copies == ["h1"], copies
                assert [p for p, _ in guest_procs(lab)["h1"]] == [primary_pid]
                hist = wait_until(lambda: [h for h in ft_of(lab, "ft2").get("history", [])
                                           if h["state"] == "unprotected"], 30, "unprotected")
                print("unprotected: %s" % hist[0]["why"])
                assert "lost" in hist[0]["why"], hist
                assert "took over" not in h2_log, h2_log[-2000:]
                # the primary held its output, paused, until its ferryd had
                # rewritten the owner key to name no secondary (on_loss hold)
                assert "names no secondary: ft-continue" in h1_log, h1_log[-2000:]
            print("link cut: the owner key went to %s" % winner)
            stream.wait_flowing(what="after the cut")
            ft = wait_protected(lab, "ft2")
            assert ft["primary"] == winner and lab.vm("ft2")["host"] == winner, ft
            assert running_copies(lab, "ft2") == [winner]
            stream.wait_flowing(what="protected again")
            sent = finish(lab, "ft2", stream)
        print("stream: %d bytes intact; exactly one of the two ran on" % sent)


def secondary_port_or_none(lab, host, port):
    return any("--ft-secondary tcp:" in cmd and ":%d," % port in cmd
               for _, cmd in guest_procs(lab)[host])


def test_ft_cluster_secondary_host_dies():
    with Lab() as lab:
        ft_vm(lab, "ft3", "h1")
        t = lab.cli("vm", "ft", "enable", "ft3", "--secondary", "h2", "--wait")
        assert t["state"] == "succeeded", t
        wait_protected(lab, "ft3", secondary="h2")
        with Stream(LabTopo(lab), GUEST_IP) as stream:
            stream.wait_flowing(what="protected")
            lab.kill_host("h2")
            hist = wait_until(lambda: [h for h in ft_of(lab, "ft3").get("history", [])
                                       if h["state"] == "unprotected"], 30, "unprotected")
            print("unprotected: %s" % hist[0]["why"])
            assert "secondary on h2 lost" in hist[0]["why"], hist
            vm = lab.vm("ft3")
            assert vm["host"] == "h1" and vm["state"] == "running", vm
            stream.wait_flowing(what="after losing the secondary")
            ft = wait_protected(lab, "ft3", secondary="h3")
            assert ft["primary"] == "h1" and ft["failovers"] == 0, ft
            sent = finish(lab, "ft3", stream)
        copies = running_copies(lab, "ft3")
        assert copies == ["h1"], copies
        # maintenance does not migrate an FT primary: refused with the reason
        h = lab.cli("host", "maintenance", "h1", "enter")
        refused = h["evacuation"]["refused"]
        assert [r["vm"] for r in refused] == ["ft3"] and "fault tolerant" in \
            refused[0]["reason"], h["evacuation"]
        assert not h["evacuation"]["tasks"] and lab.vm("ft3")["host"] == "h1"
        print("stream: %d bytes intact; the primary ran on unprotected, then h3 "
              "protected it" % sent)


def test_ft_cluster_primary_cut_off():
    """The primary's host cut off with every process alive: the
    secondary's ferryd wins the key at once (h1's ferryd cannot reach
    etcd, its primary stays paused and held), but runs the guest only once
    h1's self-fence has killed the primary (its disk lock gone): at no
    poll do two run."""
    with Lab() as lab:
        ft_vm(lab, "ft4", "h1")
        t = lab.cli("vm", "ft", "enable", "ft4", "--secondary", "h2", "--wait")
        assert t["state"] == "succeeded", t
        wait_protected(lab, "ft4", secondary="h2")
        with Stream(LabTopo(lab), GUEST_IP) as stream:
            stream.wait_flowing(what="protected")
            subprocess.run(["ip", "netns", "exec", lab.name + "-h1", "ip", "link", "set", "eth0",
                            "down"], check=True)
            deadline = time.monotonic() + 60
            while True:
                copies = running_copies(lab, "ft4")
                assert len(copies) <= 1, "two copies run: %s" % copies
                if copies == ["h2"]:
                    break
                assert time.monotonic() < deadline, "ft4 did not run on h2: %s" % copies
                time.sleep(0.05)
            log = (lab.dir / "logs" / "ferryd-h1.log").read_text()
            assert re.search(r"self-fence: VM ft4 \(pid \d+\) killed", log), log[-2000:]
            stream.wait_flowing(what="after the failover")
            # ferry-center follows the failover on its own time (its FT sweep)
            wait_until(lambda: lab.vm("ft4")["host"] == "h2", 30, "ferry-center to show ft4 on h2")
            sent = finish(lab, "ft4", stream)
        print("stream: %d bytes intact; the cut-off primary fenced itself" % sent)


def restart_ferryd(lab, host):
    i = int(host[1:])
    lab.restart(host, "ferryd", [
        "--name", host, "--listen", "10.88.0.%d:7700" % (10 + i), "--etcd",
        "http://10.88.0.%d:2379" % (10 + i), "--state-dir", str(lab.dir / ("%s-state" % host)),
        "--datastore", "shared=%s" % (lab.dir / "shared"), "--datastore",
        "local=%s" % (lab.dir / ("%s-local" % host)), "--network", "lan=br0",
        "--token-file", str(lab.dir / "tokens")])


def test_ft_cluster_ferryd_restart():
    """Both ferryds restarted (their VMs run on): each finds its FT role
    again (the primary from the owner key, the secondary from its spec);
    the primary's then handles the secondary's host dying."""
    with Lab() as lab:
        ft_vm(lab, "ft5", "h1")
        t = lab.cli("vm", "ft", "enable", "ft5", "--secondary", "h2", "--wait")
        assert t["state"] == "succeeded", t
        wait_protected(lab, "ft5", secondary="h2")
        procs = guest_procs(lab)
        restart_ferryd(lab, "h1")
        restart_ferryd(lab, "h2")
        assert guest_procs(lab) == procs, "a VM died with its ferryd"
        for host, role in (("h1", "primary"), ("h2", "secondary")):
            log = (lab.dir / "logs" / ("ferryd-%s.restart.log" % host))
            wait_until(lambda: log.exists() and "found VM ft5" in log.read_text(), 20,
                       "ferryd on %s to find ft5" % host)
        wait_until(lambda: "FT: VM ft5 found again" in (lab.dir / "logs" /
                                                       "ferryd-h1.restart.log").read_text(),
                   20, "the primary's FT agent to find ft5")
        since = ft_of(lab, "ft5")["updated_ms"]
        wait_until(lambda: ft_of(lab, "ft5")["updated_ms"] > since, 20,
                   "the restarted primary's ferryd to write the status")
        assert ft_of(lab, "ft5")["state"] == "protected"
        lab.kill_host("h2")
        wait_until(lambda: [h for h in ft_of(lab, "ft5").get("history", [])
                            if h["state"] == "unprotected"], 30, "unprotected")
        ft = wait_protected(lab, "ft5", secondary="h3")
        assert ft["primary"] == "h1" and lab.vm("ft5")["host"] == "h1", ft
