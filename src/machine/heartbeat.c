/*
 * heartbeat.c - a guest heartbeat without guest tools: does the guest's
 * kernel still get anywhere?
 *
 * A live kernel keeps going back to user mode (it runs processes) or to
 * sleep in WFI (it is idle). A hung one does neither: a panic with
 * panic=0 spins in mdelay() with interrupts on (so taking interrupts
 * proves nothing: it takes the timer's), a soft or hard lockup loops in
 * the kernel. So each hart counts its returns to user mode and its WFIs
 * (hart->beats, hart_beat), and each query looks at every hart: one that
 * beat since the last look, waits in WFI, runs in user mode right now, or
 * is not started (HSM) is alive; the others have been stalled since they
 * last were. `stalled_ms` is the longest such stall, measured on the
 * guest clock (machine_time), which stands still while the guest is
 * paused (stop, a migration's switchover, a save): a pause is never taken
 * for a hang. A hart that never beat (still booting) is not judged, and
 * until some hart has beaten there is no heartbeat at all (NULL): a
 * monitor judges only a guest that once had one. What it cannot see: a
 * user-space process that starves the rest (it runs in user mode); that
 * needs a heartbeat from a program inside the guest.
 */
#include "machine/heartbeat.h"

#include "cpu/hart.h"
#include "machine/machine.h"
#include "machine/vm.h"

#include <stdbool.h>
#include <stdint.h>

static struct {
	uint64_t beats;      /* at the last look */
	uint64_t alive_at;   /* guest clock ticks when last seen alive */
} seen[MAX_HARTS];

json_t *guest_heartbeat(struct machine *m)
{
	uint64_t now = machine_time(m), beats = 0, worst = 0;
	bool any = false;
	for (unsigned i = 0; i < m->nharts; i++) {
		struct hart *h = m->harts[i];
		uint64_t n = __atomic_load_n(&h->beats, __ATOMIC_RELAXED);
		bool waiting = __atomic_load_n(&h->wfi, __ATOMIC_RELAXED);
		bool user = __atomic_load_n(&h->priv, __ATOMIC_RELAXED) == PRV_U;
		bool started = atomic_load(&h->hsm) == HSM_STARTED;
		beats += n;
		if (n != seen[i].beats || waiting || user || !started || !seen[i].alive_at) {
			seen[i].beats = n;
			seen[i].alive_at = now;
		}
		if (!n)
			continue;   /* never beat: booting */
		any = true;
		if (now - seen[i].alive_at > worst)
			worst = now - seen[i].alive_at;
	}
	if (!any)
		return NULL;
	return json_pack("{s:I, s:I}", "beats", (json_int_t)beats, "stalled_ms",
			 (json_int_t)(worst * 1000 / TIMEBASE_HZ));
}
