/*
 * machine.c - RAM, the MMIO table, the I/O thread, stop-the-world pauses,
 * the guest clock and the dirty log.
 *
 * RAM is one anonymous mapping (MAP_NORESERVE, so untouched guest memory
 * costs the host nothing). MMIO regions are few and looked up linearly.
 * The I/O thread polls the devices' host descriptors and a wake pipe; it
 * parks, like the harts, while the machine is paused, so a paused machine
 * changes neither guest memory nor device state.
 */
#include "machine/vm.h"
#include "machine/devices.h"
#include "machine/sbi.h"
#include "util/alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t host_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- the harts' view of the machine (cpu/bus.h) ----------------------------- */

static bool bus_mmio_read(void *ctx, uint64_t pa, unsigned size, uint64_t *val)
{
	return mmio_read(ctx, pa, size, val);
}

static bool bus_mmio_write(void *ctx, uint64_t pa, unsigned size, uint64_t val)
{
	return mmio_write(ctx, pa, size, val);
}

static void bus_ecall(void *ctx, struct hart *h)
{
	(void)ctx;
	sbi_call(h);
}

static void bus_park(void *ctx, struct hart *h)
{
	machine_park_hart(ctx, h);
}

static uint64_t bus_time(void *ctx)
{
	return machine_time(ctx);
}

static void bus_sync_harts(void *ctx, unsigned req, struct hart *self, uint64_t mask)
{
	machine_sync_harts(ctx, req, self, mask);
}

static void bus_fetch_page(void *ctx, uint64_t pfn)
{
	struct machine *m = ctx;
	if (m->fetch_missing)
		m->fetch_missing(m, pfn);
}

static void bus_fail(void *ctx, const char *why)
{
	struct machine *m = ctx;
	if (atomic_load(&m->exit_reason) != EXIT_NONE)
		return;          /* ending anyway: not the guest's fault */
	if (atomic_exchange(&m->guest_failed, true))
		return;          /* another hart said it already */
	fprintf(stderr, "ferry-vm: %s\n", why);
	machine_exit(m, EXIT_ERROR);
}

static const struct cpu_bus_ops bus_ops = {
	.mmio_read = bus_mmio_read, .mmio_write = bus_mmio_write, .ecall = bus_ecall,
	.park = bus_park, .time = bus_time, .sync_harts = bus_sync_harts,
	.fetch_page = bus_fetch_page, .fail = bus_fail,
};

static void bus_init(struct machine *m, unsigned nharts)
{
	m->bus = (struct cpu_bus){
		.ops = &bus_ops, .ctx = m,
		.ram = m->ram, .ram_base = RAM_BASE, .ram_size = m->ram_size,
		.timebase_hz = TIMEBASE_HZ,
		.dirty = m->dirty, .logging = &m->logging, .code = m->code,
		.code_marking = &m->code_marking,
		.missing = &m->missing, .throttle_pct = &m->throttle_pct,
		.harts = m->harts, .nharts = nharts,
	};
}

struct machine *machine_create(uint64_t ram_mib, unsigned nharts, char *err, size_t errlen)
{
	struct machine *m = xcalloc(1, sizeof(*m), "the machine");
	m->io_wake[0] = m->io_wake[1] = m->exit_pipe[0] = m->exit_pipe[1] = -1;
	m->console_fd = -1;
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	pthread_mutex_init(&m->clock_lock, NULL);
	m->clock_base_ns = host_ns();
	m->ram_size = ram_mib << 20;
	m->ram = mmap(NULL, m->ram_size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m->ram == MAP_FAILED) {
		snprintf(err, errlen, "cannot map %llu MiB of guest RAM: %s",
			 (unsigned long long)ram_mib, strerror(errno));
		m->ram = NULL;
		goto fail;
	}
	size_t words = (m->ram_size / PAGE_SIZE + 63) / 64;
	m->dirty = xcalloc(words, sizeof(uint64_t), "the dirty page log");
	m->code = xcalloc(m->ram_size / PAGE_SIZE, sizeof(*m->code), "the code map");
	if (pipe2(m->io_wake, O_CLOEXEC | O_NONBLOCK) || pipe2(m->exit_pipe, O_CLOEXEC)) {
		snprintf(err, errlen, "cannot create pipes: %s", strerror(errno));
		goto fail;
	}
	bus_init(m, nharts);
	for (unsigned i = 0; i < nharts; i++) {
		m->harts[i] = xaligned_alloc(64, sizeof(struct hart), "a hart");
		hart_init(m->harts[i], &m->bus, i);
		m->nharts = i + 1;
	}
	m->plic = plic_create(m, nharts);
	if (!m->plic) {
		snprintf(err, errlen, "cannot create the PLIC for %u harts", nharts);
		goto fail;
	}
	return m;
fail:
	machine_destroy(m);
	return NULL;
}

static void close_pair(int fds[2])
{
	for (int i = 0; i < 2; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	fds[0] = fds[1] = -1;
}

void machine_destroy(struct machine *m)
{
	if (!m)
		return;
	machine_stop(m);
	/* devices last registered first: a later one may use an earlier one */
	for (unsigned i = m->nmmio; i-- > 0;)
		if (m->mmio[i].ops->destroy)
			m->mmio[i].ops->destroy(m->mmio[i].dev);
	for (unsigned i = 0; i < m->nharts; i++) {
		pthread_cond_destroy(&m->harts[i]->sleep_cond);
		pthread_mutex_destroy(&m->harts[i]->sleep_lock);
		hart_free_code(m->harts[i]);
		free(m->harts[i]);
	}
	close_pair(m->io_wake);
	close_pair(m->exit_pipe);
	pthread_mutex_destroy(&m->clock_lock);
	pthread_cond_destroy(&m->cond);
	pthread_mutex_destroy(&m->lock);
	if (m->ram)
		munmap(m->ram, m->ram_size);
	free((void *)m->dirty);
	free((void *)m->code);
	free(m);
}

/* ---- MMIO and state registration ------------------------------------------ */

int machine_add_mmio(struct machine *m, uint64_t base, uint64_t size,
		     const struct mmio_ops *ops, void *dev)
{
	if (m->nmmio == MAX_MMIO)
		return -1;
	for (unsigned i = 0; i < m->nmmio; i++) {
		struct mmio_region *r = &m->mmio[i];
		if (base < r->base + r->size && r->base < base + size)
			return -1;
	}
	m->mmio[m->nmmio++] = (struct mmio_region){ base, size, ops, dev };
	return 0;
}

void machine_add_state(struct machine *m, const struct device_state_ops *ops, void *dev)
{
	if (m->nstates < MAX_STATES)
		m->states[m->nstates++] = (struct state_entry){ ops, dev };
}

const struct state_entry *machine_state_find(struct machine *m, const char *name)
{
	for (unsigned i = 0; i < m->nstates; i++)
		if (!strcmp(m->states[i].ops->name, name))
			return &m->states[i];
	return NULL;
}

const struct mmio_region *mmio_find(struct machine *m, uint64_t pa)
{
	for (unsigned i = 0; i < m->nmmio; i++)
		if (pa - m->mmio[i].base < m->mmio[i].size)
			return &m->mmio[i];
	return NULL;
}

bool mmio_read(struct machine *m, uint64_t pa, unsigned size, uint64_t *val)
{
	const struct mmio_region *r = mmio_find(m, pa);
	if (!r || !r->ops->read)
		return false;
	*val = r->ops->read(r->dev, pa - r->base, size);
	return true;
}

bool mmio_write(struct machine *m, uint64_t pa, unsigned size, uint64_t val)
{
	const struct mmio_region *r = mmio_find(m, pa);
	if (!r || !r->ops->write)
		return false;
	r->ops->write(r->dev, pa - r->base, val, size);
	return true;
}

/* ---- guest memory for devices --------------------------------------------- */

void *mem_ptr(struct machine *m, uint64_t gpa, uint64_t len)
{
	uint64_t off = gpa - RAM_BASE;
	if (off >= m->ram_size || len > m->ram_size - off)
		return NULL;
	if (m->missing)
		mem_fault_in(m, gpa, len);
	return m->ram + off;
}

void mem_fault_in(struct machine *m, uint64_t gpa, uint64_t len)
{
	uint64_t off = gpa - RAM_BASE;
	if (len == 0)
		return;
	for (uint64_t pfn = off >> PAGE_SHIFT; pfn <= (off + len - 1) >> PAGE_SHIFT; pfn++)
		if (page_missing(m, pfn) && m->fetch_missing)
			m->fetch_missing(m, pfn);
}

void mem_dirty(struct machine *m, uint64_t gpa, uint64_t len)
{
	cpu_code_written(&m->bus, gpa, len);
	if (!atomic_load_explicit(&m->logging, memory_order_relaxed) || len == 0)
		return;
	uint64_t off = gpa - RAM_BASE;
	if (off >= m->ram_size)
		return;
	uint64_t last = off + len - 1;
	if (last >= m->ram_size)
		last = m->ram_size - 1;
	for (uint64_t pfn = off >> PAGE_SHIFT; pfn <= last >> PAGE_SHIFT; pfn++)
		dirty_set(m, pfn);
}

/* ---- interrupts ---------------------------------------------------------------- */

void machine_set_irq(struct machine *m, unsigned irq, int level)
{
	plic_set_level(m->plic, irq, level);
}

void machine_hart_irq(struct machine *m, unsigned hart, uint64_t bit, int level)
{
	if (hart >= m->nharts)
		return;
	struct hart *h = m->harts[hart];
	if (level) {
		hart_raise(h, bit);
	} else {
		atomic_fetch_and(&h->mip, ~bit);
	}
}

/* ---- guest clock ------------------------------------------------------------------ */

uint64_t machine_time(struct machine *m)
{
	if (m->clock_frozen)
		return m->clock_ticks;
	uint64_t ns = host_ns() - m->clock_base_ns;
	return m->clock_ticks + ns / (1000000000ULL / TIMEBASE_HZ);
}

void machine_set_time(struct machine *m, uint64_t ticks)
{
	pthread_mutex_lock(&m->clock_lock);
	m->clock_ticks = ticks;
	m->clock_base_ns = host_ns();
	pthread_mutex_unlock(&m->clock_lock);
}

static void clock_freeze(struct machine *m)
{
	pthread_mutex_lock(&m->clock_lock);
	m->clock_ticks = machine_time(m);
	m->clock_frozen = true;
	pthread_mutex_unlock(&m->clock_lock);
}

static void clock_thaw(struct machine *m)
{
	pthread_mutex_lock(&m->clock_lock);
	m->clock_base_ns = host_ns();
	m->clock_frozen = false;
	pthread_mutex_unlock(&m->clock_lock);
}

/* ---- pause ------------------------------------------------------------------------- */

bool machine_running(struct machine *m)
{
	return __atomic_load_n(&m->pause_depth, __ATOMIC_ACQUIRE) == 0;
}

bool machine_paused(struct machine *m)
{
	return !machine_running(m);
}

void machine_pause(struct machine *m)
{
	pthread_mutex_lock(&m->lock);
	if (m->pause_depth++ == 0) {
		for (unsigned i = 0; i < m->nharts; i++)
			hart_request(m->harts[i], REQ_PAUSE);
		io_kick(m);
	}
	/* a machine that is ending parks nothing more: its threads leave
	 * their loops instead, so give up waiting then (checked every 50 ms) */
	while ((m->parked < m->nharts || !m->io_parked) &&
	       atomic_load(&m->exit_reason) == EXIT_NONE) {
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 50000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&m->cond, &m->lock, &until);
	}
	if (!m->clock_frozen)
		clock_freeze(m);
	pthread_mutex_unlock(&m->lock);
}

void machine_resume(struct machine *m)
{
	pthread_mutex_lock(&m->lock);
	if (m->pause_depth > 0 && --m->pause_depth == 0) {
		clock_thaw(m);
		pthread_cond_broadcast(&m->cond);
	}
	pthread_mutex_unlock(&m->lock);
}

void machine_park_hart(struct machine *m, struct hart *h)
{
	pthread_mutex_lock(&m->lock);
	atomic_fetch_and(&h->requests, ~REQ_PAUSE);
	m->parked++;
	pthread_cond_broadcast(&m->cond);
	while (m->pause_depth > 0 && !(atomic_load(&h->requests) & REQ_EXIT))
		pthread_cond_wait(&m->cond, &m->lock);
	m->parked--;
	pthread_mutex_unlock(&m->lock);
}

/* Wait until every hart in `harts` (a bit a hart) but self has run `req`,
 * or cannot be running guest code: it will handle the request before it
 * runs again. */
void machine_sync_harts(struct machine *m, unsigned req, struct hart *self, uint64_t harts)
{
	for (unsigned i = 0; i < m->nharts; i++)
		if (m->harts[i] != self && (harts >> i) & 1)
			hart_request(m->harts[i], req);
	for (unsigned i = 0; i < m->nharts; i++) {
		struct hart *t = m->harts[i];
		if (t == self || !((harts >> i) & 1))
			continue;
		while ((atomic_load(&t->requests) & req) && atomic_load(&t->in_guest)) {
			/* serve shootdowns aimed at us meanwhile, or two
			 * harts shooting at each other would wait forever */
			if (self)
				hart_serve_flushes(self);
			sched_yield();
		}
	}
}

/* ---- dirty log -------------------------------------------------------------------- */

void dirty_log_start(struct machine *m)
{
	size_t pages = m->ram_size / PAGE_SIZE;
	for (size_t i = 0; i < (pages + 63) / 64; i++)
		atomic_store(&m->dirty[i], ~0ULL);
	atomic_store(&m->logging, true);
	/* write entries installed before logging began would bypass the log */
	machine_sync_harts(m, REQ_WTLB_FLUSH, NULL, ~0ULL);
}

void dirty_log_stop(struct machine *m)
{
	atomic_store(&m->logging, false);
}

uint64_t dirty_log_count(struct machine *m)
{
	size_t words = (m->ram_size / PAGE_SIZE + 63) / 64;
	uint64_t count = 0;
	for (size_t i = 0; i < words; i++)
		count += (uint64_t)__builtin_popcountll(atomic_load_explicit(&m->dirty[i],
							memory_order_relaxed));
	return count;
}

uint64_t dirty_log_harvest(struct machine *m, uint64_t *out)
{
	size_t pages = m->ram_size / PAGE_SIZE, words = (pages + 63) / 64;
	uint64_t count = 0;
	for (size_t i = 0; i < words; i++) {
		uint64_t w = atomic_exchange(&m->dirty[i], 0);
		if (i == words - 1 && pages % 64)
			w &= (1ULL << (pages % 64)) - 1;
		out[i] = w;
		count += (uint64_t)__builtin_popcountll(w);
	}
	machine_sync_harts(m, REQ_WTLB_FLUSH, NULL, ~0ULL);
	return count;
}

/* ---- I/O thread -------------------------------------------------------------------- */

int io_watch(struct machine *m, int fd, void (*ready)(void *opaque), void *opaque)
{
	pthread_mutex_lock(&m->lock);
	if (m->nwatches == MAX_WATCHES) {
		pthread_mutex_unlock(&m->lock);
		return -1;
	}
	m->watches[m->nwatches++] = (struct io_watch_entry){ fd, ready, opaque };
	pthread_mutex_unlock(&m->lock);
	io_kick(m);
	return 0;
}

void io_unwatch(struct machine *m, int fd)
{
	pthread_mutex_lock(&m->lock);
	for (unsigned i = 0; i < m->nwatches; i++) {
		if (m->watches[i].fd == fd) {
			m->watches[i] = m->watches[--m->nwatches];
			break;
		}
	}
	pthread_mutex_unlock(&m->lock);
	io_kick(m);
}

void io_kick(struct machine *m)
{
	char c = 1;
	ssize_t r = write(m->io_wake[1], &c, 1);
	(void)r;    /* a full pipe already means "wake up" */
}

static void *io_thread(void *arg)
{
	struct machine *m = arg;
	struct pollfd pfd[MAX_WATCHES + 1];
	struct io_watch_entry w[MAX_WATCHES];
	for (;;) {
		pthread_mutex_lock(&m->lock);
		while (m->pause_depth > 0 && atomic_load(&m->exit_reason) == EXIT_NONE) {
			m->io_parked = true;
			pthread_cond_broadcast(&m->cond);
			pthread_cond_wait(&m->cond, &m->lock);
		}
		m->io_parked = false;
		unsigned n = m->nwatches;
		memcpy(w, m->watches, n * sizeof(w[0]));
		pthread_mutex_unlock(&m->lock);
		if (atomic_load(&m->exit_reason) != EXIT_NONE)
			break;

		pfd[0] = (struct pollfd){ .fd = m->io_wake[0], .events = POLLIN };
		for (unsigned i = 0; i < n; i++)
			pfd[i + 1] = (struct pollfd){ .fd = w[i].fd, .events = POLLIN };
		/* mark ourselves parked while blocked in poll: we touch nothing */
		pthread_mutex_lock(&m->lock);
		m->io_parked = true;
		pthread_cond_broadcast(&m->cond);
		pthread_mutex_unlock(&m->lock);
		int r = poll(pfd, n + 1, 1000);
		pthread_mutex_lock(&m->lock);
		m->io_parked = false;
		bool paused = m->pause_depth > 0;
		pthread_mutex_unlock(&m->lock);
		if (r <= 0)
			continue;
		if (pfd[0].revents) {
			char buf[64];
			while (read(m->io_wake[0], buf, sizeof(buf)) > 0)
				;
		}
		if (paused)
			continue;
		for (unsigned i = 0; i < n; i++)
			if (pfd[i + 1].revents)
				w[i].ready(w[i].opaque);
	}
	pthread_mutex_lock(&m->lock);
	m->io_parked = true;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

/* ---- start and exit ------------------------------------------------------------------ */

int machine_start(struct machine *m)
{
	char err[128];
	if (thread_start(&m->io_thread, io_thread, m, "I/O", err, sizeof(err)))
		goto fail;
	m->io_started = true;
	for (unsigned i = 0; i < m->nharts; i++) {
		if (thread_start(&m->harts[i]->thread, hart_thread, m->harts[i], "hart",
				 err, sizeof(err)))
			goto fail;
		m->harts_started = i + 1;
	}
	return 0;
fail:
	fprintf(stderr, "ferry-vm: %s\n", err);
	machine_stop(m);
	return -1;
}

void machine_stop(struct machine *m)
{
	if (!m->io_started && !m->harts_started)
		return;
	machine_exit(m, EXIT_ERROR);    /* a no-op if it is ending already */
	for (unsigned i = 0; i < m->harts_started; i++)
		hart_request(m->harts[i], REQ_EXIT);
	pthread_mutex_lock(&m->lock);
	pthread_cond_broadcast(&m->cond);       /* parked harts and I/O */
	pthread_mutex_unlock(&m->lock);
	io_kick(m);
	for (unsigned i = 0; i < m->harts_started; i++)
		pthread_join(m->harts[i]->thread, NULL);
	if (m->io_started)
		pthread_join(m->io_thread, NULL);
	m->harts_started = 0;
	m->io_started = false;
}

void machine_exit(struct machine *m, enum exit_reason why)
{
	int none = EXIT_NONE;
	if (!atomic_compare_exchange_strong(&m->exit_reason, &none, (int)why))
		return;
	char c = (char)why;
	ssize_t r = write(m->exit_pipe[1], &c, 1);
	(void)r;
}

enum exit_reason machine_wait_exit(struct machine *m)
{
	char c;
	while (read(m->exit_pipe[0], &c, 1) < 0 && errno == EINTR)
		;
	return (enum exit_reason)atomic_load(&m->exit_reason);
}
