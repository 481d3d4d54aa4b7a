/*
 * fence.c - self-fencing: a ferryd that cannot renew its etcd lease kills
 * its own VMs before the lease can expire.
 *
 * HA (ferry-center) restarts a host's VMs elsewhere only once that host's
 * key has left etcd, i.e. once its lease has expired. The lease expires
 * no earlier than TTL after etcd received our last renewal, which came
 * after we sent it; so a host that has not renewed since time S can be
 * declared dead no earlier than S + TTL. The fence deadline is
 * S + TTL - FENCE_MARGIN_MS on the monotonic clock: by then every VM
 * process of this host has been sent SIGKILL, so a VM never runs on two
 * hosts at once, whatever the network does. The margin covers this
 * thread's poll, the kill itself and a scheduling stall on a loaded host.
 *
 * The isolation response (--isolation-response) is `power-off` (the
 * default: the VMs are killed) or `leave-running` (they are not: the
 * guest keeps running cut off, HA starts a second copy from the same
 * disk image elsewhere, and both write it until the host is back and
 * ferry-center stops the stale copy; only for VMs whose disks are not
 * shared, or when a copy that cannot be reached is better than none).
 *
 * Fencing is a process killing its children: no kernel watchdog.
 * While the lease is not renewed (fenced or about to be) ferryd starts
 * no VM.
 *
 * The margin (1 s of a 4 s lease) is only as good as this thread's
 * promptness on a loaded host, so it runs at a real-time priority when
 * ferryd may set one (SCHED_FIFO 1: ahead of every ordinary process, it
 * sleeps almost all the time) and wakes at the deadline itself (at most
 * 50 ms apart, since a renewal moves it). Late anyway (a stall longer than the margin), it says so
 * in the log: "fenced N ms late".
 */
#include "cluster/ferryd/ferryd.h"

#include "cluster/common/util.h"

#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int64_t last_renewal_ms;   /* monotonic; sent time of the last good renewal */
static _Atomic bool fenced;
static int ttl_ms;

int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fence_init(int lease_ttl_s)
{
	ttl_ms = lease_ttl_s * 1000;
	/* a lease an earlier ferryd renewed just before it died runs out
	 * about TTL after our start: count from now */
	last_renewal_ms = mono_ms();
}

void fence_renewed(int64_t sent_ms)
{
	int64_t gap = sent_ms - last_renewal_ms;
	if (gap > 1000 && !fenced)   /* how close a stall came to the fence */
		logf_("self-fence: lease renewed after %lld ms without (the fence comes at %d)",
		      (long long)gap, ttl_ms - FENCE_MARGIN_MS);
	if (sent_ms > last_renewal_ms)
		last_renewal_ms = sent_ms;
	if (fenced) {
		fenced = false;
		logf_("self-fence: lease renewed again; VMs may start here");
	}
}

int64_t fence_deadline_ms(void)
{
	return last_renewal_ms + ttl_ms - FENCE_MARGIN_MS;
}

bool fence_isolated(void)
{
	return fenced || mono_ms() >= fence_deadline_ms();
}

/* Kills every VM process of this host (power-off) or says it does not. */
static void fence_now(int64_t late_ms)
{
	bool power_off = strcmp(fd_cfg.isolation_response, "leave-running") != 0;
	pthread_mutex_lock(&vms_lock);
	struct vm **list;
	int n = vms_snapshot(&list);
	for (int i = 0; i < n; i++) {
		struct vm *vm = list[i];
		if (vm->pid <= 0 || vm->exited || vm->fenced)
			continue;
		vm->fenced = true;
		struct timespec wall, mono;
		if (power_off)
			kill(vm->pid, SIGKILL);
		clock_gettime(CLOCK_REALTIME, &wall);
		clock_gettime(CLOCK_MONOTONIC, &mono);
		logf_("self-fence: VM %s (pid %d) %s at wall %lld.%03ld monotonic %lld.%03ld; "
		      "lease not renewed for %lld ms (TTL %d ms, margin %d ms)", vm->name,
		      (int)vm->pid, power_off ? "killed" : "left running (leave-running)",
		      (long long)wall.tv_sec, wall.tv_nsec / 1000000, (long long)mono.tv_sec,
		      mono.tv_nsec / 1000000, (long long)late_ms, ttl_ms, FENCE_MARGIN_MS);
	}
	pthread_mutex_unlock(&vms_lock);
}

/* Real-time priority for the fence thread, when allowed. */
static void fence_priority(void)
{
	struct sched_param sp = { .sched_priority = 1 };
	int rc = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
	if (rc)
		logf_("self-fence: runs at normal priority (SCHED_FIFO refused: %s)", strerror(rc));
}

void *fence_watch(void *arg)
{
	(void)arg;
	fence_priority();
	for (;;) {
		int64_t now = mono_ms();
		int64_t deadline = fence_deadline_ms();
		if (!fenced && now >= deadline) {
			fenced = true;
			logf_("self-fence: isolated (no lease renewal for %lld ms, fenced %lld ms "
			      "late): isolation response %s", (long long)(now - last_renewal_ms),
			      (long long)(now - deadline), fd_cfg.isolation_response);
		}
		if (fenced)   /* again each time: a VM whose start was under way too */
			fence_now(now - last_renewal_ms);
		/* until the deadline, or 50 ms (a renewal moves it) */
		int64_t wait = fenced ? 50 : deadline - now;
		usleep((wait > 50 ? 50 : wait < 1 ? 1 : wait) * 1000);
	}
	return NULL;
}
