"""Two races of a migration straight back, reproduced every time.

bench/cluster.py's evacuations once met two races between ferryds that
test_cluster_migrate's back-and-forth does not (it passes with both fixes
reverted: the windows are a few ms wide). Here each window is widened by a
ferryd test hook (environment variables, ferryd.h, only active when set),
so each test fails every time the fix is gone:

- the host just arrived at still calls the guest "incoming"
  (test_cluster_back_while_arriving): FERRYD_TEST_DELAY_ARRIVAL_MS=1000
  holds an arrived guest "incoming" for 1 s. The fix (db1d02b): a
  completed migration's task succeeds only once the destination's ferryd
  says the guest runs. Without it the task succeeds at once and the
  migration back is refused ("host h2 runs no VM named ..."): the task
  fails.
- the host just left still removes the old copy's directory when the
  guest comes back (test_cluster_back_while_leaving):
  FERRYD_TEST_DELAY_REMOVE_MS=1500 waits 1.5 s between the old process's
  end and the removal of its directory. The fix (2054cdf): the source's
  ferryd says the migration is done only after the old copy is removed.
  Without it the guest returns into a directory that is then deleted
  under it (control socket, console, pid): its ferryd loses it.

Each test: a guest running memload (it checks every page it wrote) on h1,
`vm migrate --to h2 --wait`, then at once `--to h1 --wait`; both tasks
succeed, the guest runs on h1 with new memload passes there, and it
migrates once more (h1's ferryd still controls it). ~25 s each.
"""

from ferrylib import wait_until
from test_cluster import MEMLOAD, Lab, memload_passes

TIMEOUT = 240


def migrate(lab, vm, to):
    rc, t, err = lab.run("vm", "migrate", vm, "--to", to, "--wait", check=False)
    assert rc == 0 and t and t["state"] == "succeeded" and t["destination"] == to, (rc, t, err)
    return t


def there_and_back(lab, vm):
    lab.create(vm, append=MEMLOAD, host="h1")
    wait_until(lambda: memload_passes(lab.console(vm)), 90, "memload passes on h1",
               interval=0.5)
    migrate(lab, vm, "h2")
    migrate(lab, vm, "h1")   # at once
    v = lab.vm(vm)
    assert v["host"] == "h1" and v["state"] == "running", v
    before = len(memload_passes(lab.console(vm)))
    wait_until(lambda: len(memload_passes(lab.console(vm))) > before, 90,
               "memload passes on h1 after the way back", interval=0.5)
    assert "ERROR" not in lab.console(vm)
    migrate(lab, vm, "h3")
    assert lab.vm(vm)["host"] == "h3"


def test_cluster_back_while_arriving():
    with Lab(ferryd_env={"FERRYD_TEST_DELAY_ARRIVAL_MS": "1000"}) as lab:
        there_and_back(lab, "arrive1")


def test_cluster_back_while_leaving():
    with Lab(ferryd_env={"FERRYD_TEST_DELAY_REMOVE_MS": "1500"}) as lab:
        there_and_back(lab, "leave1")
