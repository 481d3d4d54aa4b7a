"""The web console, driven in headless Chromium on a real ferry lab.

A `ferry lab` of 3 hosts (etcd members, ferryds, ferry-center, in network
namespaces) runs one VM, created with the CLI from the guest's kernel and
initrd on the shared datastore. tests/browser/console.test.js then runs in
the lab's client namespace with Debian's Chromium (playwright-core, no
downloaded browser) and works the page as an administrator: a wrong token
refused at login, the hosts alive with the VM on its host, the VM found
by search, the wizard's candidates and refused hosts, a migration to the
host we pick followed on the tasks view until `succeeded`, the VM on its
new host, the migration in the audit trail (and the chain verifying), a
scheduled migration cancelled from the page, and a read-only token with
no action buttons. Afterwards the API must agree with what the page
showed: the VM runs on the chosen host, the task succeeded, the
scheduled one was cancelled.

It fails when the page shows something wrong, or when the console's
actions do not reach ferry-center (the API check), or the migration does
not complete. Screenshots of each step go to a temporary directory that
is kept (and printed) when the test fails, or always with
FERRY_KEEP_TMP=1; FERRY_SHOTS=DIR puts them in DIR.

Skipped when not root (namespaces) or when chromium or node is missing.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ferrylib import BUILD, GUEST_IMAGE, GUEST_INITRD, REPO, need_root, need_tool, require_file

TIMEOUT = 200
LAB = "fconsole"
VM_NAME = "web1"
SOURCE = "h1"
BROWSER_DIR = REPO / "tests" / "browser"
FERRY = BUILD / "ferry"


def npm_ci():
    """node_modules from package-lock.json: offline from npm's cache first."""
    if (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return
    need_tool("npm", "npm")
    for args in (["npm", "ci", "--offline", "--no-audit", "--no-fund"],
                 ["npm", "ci", "--no-audit", "--no-fund"]):
        r = subprocess.run(args, cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            return
    raise RuntimeError(f"npm ci in {BROWSER_DIR} failed:\n{r.stdout}\n{r.stderr}")


def ferry(*args):
    """The ferry CLI on the lab (it enters the lab's client namespace)."""
    r = subprocess.run([str(FERRY), "--lab", LAB, "--json", *args], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"ferry {' '.join(args)}: status {r.returncode}\n{r.stderr}")
    return json.loads(r.stdout)


def test_console_migration_in_chromium():
    need_root("ferry lab makes network namespaces")
    need_tool("chromium", "chromium")
    need_tool("node", "nodejs")
    require_file(GUEST_IMAGE, "guest/build.sh")
    require_file(FERRY, "ninja -C build")
    npm_ci()
    tmp = Path(tempfile.mkdtemp(prefix="ferry-console-"))
    shots = Path(os.environ.get("FERRY_SHOTS") or tmp / "shots")
    lab_dir = tmp / "lab"
    ok = False
    subprocess.run([str(FERRY), "lab", "down", "--name", LAB], capture_output=True, timeout=60)
    try:
        up = subprocess.run([str(FERRY), "lab", "up", "--name", LAB, "--hosts", "3",
                             "--dir", str(lab_dir)], capture_output=True, text=True, timeout=90)
        assert up.returncode == 0, f"ferry lab up failed:\n{up.stdout}\n{up.stderr}"
        shutil.copy(GUEST_IMAGE, lab_dir / "shared" / "Image")
        shutil.copy(GUEST_INITRD, lab_dir / "shared" / "initrd.img")
        created = ferry("vm", "create", VM_NAME, "--kernel", "shared:Image",
                        "--initrd", "shared:initrd.img", "--append", "console=ttyS0",
                        "--mem", "64", "--host", SOURCE)
        assert created["vm"]["state"] == "running", created

        env = dict(os.environ,
                   CENTER_URL=(lab_dir / "center.url").read_text().strip(),
                   TOKEN=(lab_dir / "token").read_text().strip(),
                   TOKEN_RO=(lab_dir / "token-ro").read_text().strip(),
                   VM=VM_NAME, SOURCE=SOURCE, SHOTS=str(shots),
                   CHROMIUM=shutil.which("chromium"), HOME=str(tmp))
        run = subprocess.run(["ip", "netns", "exec", f"{LAB}-client", "node",
                              "console.test.js"], cwd=BROWSER_DIR, env=env,
                             capture_output=True, text=True, timeout=150)
        print(run.stderr)
        assert run.returncode == 0, f"the browser test failed (screenshots in {shots})"
        seen = json.loads(run.stdout.strip().splitlines()[-1])

        # the API agrees with the page
        vm = ferry("vm", "show", VM_NAME)
        assert vm["host"] == seen["destination"] != SOURCE, (vm, seen)
        assert vm["state"] == "running", vm
        task = ferry("task", "show", str(seen["task"]))
        assert task["state"] == "succeeded" and task["destination"] == seen["destination"], task
        later = ferry("task", "show", str(seen["cancelled_task"]))
        assert later["state"] == "cancelled", later
        ok = True
    finally:
        subprocess.run([str(FERRY), "lab", "down", "--name", LAB], capture_output=True,
                       timeout=60)
        if ok and not os.environ.get("FERRY_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp} (screenshots in {shots}, lab logs in {lab_dir / 'logs'})")
