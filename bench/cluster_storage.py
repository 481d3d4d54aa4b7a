#!/usr/bin/env python3
"""bench/cluster_storage.py - storage migration through the cluster plane.

    bench/cluster_storage.py [--runs N]

On a 3-host `ferry lab` (root and etcd-server needed), a 128 MiB guest
writing a log to its 64 MiB disk (`ft disklog`, 300 records a second,
O_DIRECT|O_DSYNC; 8 MiB of host data in the image) is moved with
`ferry vm migrate --wait`: --datastore local and back to shared on h1
(storage vMotion, ferry-vm's disk-move), then from h1's local to h2
(shared-nothing, disks: copy). Per run: the task's total_ms, downtime_ms
(a storage move: the longest guest-visible I/O pause; shared-nothing: the
guest's pause) and bytes sent. The guest checks its log at the end.
No QEMU column here: bench/diskmove.py and bench/nothing.py compare
ferry-vm itself with QEMU. Timings move with the machine's load.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from test_cluster import Lab  # noqa: E402
from test_cluster_storage import RATE, check_passes, logging_vm  # noqa: E402
from test_storage import make_image  # noqa: E402


def migrate(lab, *args):
    _, t, _ = lab.run("vm", "migrate", "a", "--wait", *args, timeout=300)
    assert t["state"] == "succeeded", t
    return t["total_ms"], t["downtime_ms"], t["progress"]["transferred_bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    rows = []
    for _ in range(a.runs):
        with Lab() as lab:
            make_image(lab.dir / "shared" / "a.img")
            records = RATE * 60
            logging_vm(lab, "a", "shared:a.img", records=records)
            rows.append({"move shared -> local": migrate(lab, "--datastore", "local"),
                         "move local -> shared": migrate(lab, "--datastore", "shared"),
                         "back to local": migrate(lab, "--datastore", "local")})
            rows[-1]["h1 local -> h2 local"] = migrate(lab, "--to", "h2")
            check_passes(lab, "a", records)
    print(json.dumps({"runs": rows, "load": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
