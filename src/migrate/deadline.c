/*
 * deadline.c - the outgoing migration's watchdog (see deadline.h).
 *
 * It wakes every TICK_MS (or when a deadline changes), checks the
 * deadlines against CLOCK_MONOTONIC, and measures the peer's progress from
 * the kernel: TCP_INFO's bytes acknowledged and received, and SIOCOUTQ,
 * the bytes still queued for the peer. A peer counts as stalled only while
 * something waits for it; waiting for a reply is bounded by the socket's
 * receive timeout (a silent peer sends nothing, so that one holds).
 */
#include "migrate/deadline.h"

#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

#define TICK_MS 50

struct mig_watchdog {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	int fd;
	uint64_t stall_ms;
	bool stop;
	bool disarmed;
	uint64_t at_ms[MIG_DEADLINES];
	char why[MIG_DEADLINES][200];
	uint64_t throttle_at_ms;
	atomic_int *throttle;
	bool throttle_lifted;
	bool fired;
	char fired_why[240];
	uint64_t last_progress, progress_ms;
};

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Bytes the peer has acknowledged plus bytes it has sent us. */
static uint64_t peer_progress(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len))
		return 0;
	return ti.tcpi_bytes_acked + ti.tcpi_bytes_received;
}

static bool bytes_waiting(int fd)
{
	int outq = 0;
	return ioctl(fd, SIOCOUTQ, &outq) == 0 && outq > 0;
}

static void fire(struct mig_watchdog *w, const char *why)
{
	w->fired = true;
	snprintf(w->fired_why, sizeof(w->fired_why), "%s", why);
	shutdown(w->fd, SHUT_RDWR);
}

/* One look at the clock and the socket; with w->lock held. */
static void check(struct mig_watchdog *w)
{
	uint64_t now = now_ms();
	if (w->throttle && w->throttle_at_ms && now >= w->throttle_at_ms) {
		if (atomic_exchange(w->throttle, 0))
			w->throttle_lifted = true;
		w->throttle_at_ms = 0;
	}
	if (w->fired)
		return;
	for (int i = 0; i < MIG_DEADLINES; i++) {
		if (w->at_ms[i] && now >= w->at_ms[i]) {
			fire(w, w->why[i]);
			return;
		}
	}
	if (!w->stall_ms)
		return;
	uint64_t p = peer_progress(w->fd);
	if (p != w->last_progress || !bytes_waiting(w->fd)) {
		w->last_progress = p;
		w->progress_ms = now;
	} else if (now - w->progress_ms >= w->stall_ms) {
		char why[200];
		snprintf(why, sizeof(why), "the destination has read nothing for %llu s "
			 "(is it still alive?)", (unsigned long long)(w->stall_ms / 1000));
		fire(w, why);
	}
}

static void *watchdog_thread(void *arg)
{
	struct mig_watchdog *w = arg;
	pthread_mutex_lock(&w->lock);
	while (!w->stop) {
		check(w);
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += TICK_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&w->wake, &w->lock, &ts);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

struct mig_watchdog *mig_watchdog_start(int fd, uint64_t stall_ms)
{
	struct mig_watchdog *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->wake, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&w->lock, NULL);
	w->fd = fd;
	w->stall_ms = stall_ms;
	w->last_progress = peer_progress(fd);
	w->progress_ms = now_ms();
	if (pthread_create(&w->thread, NULL, watchdog_thread, w)) {
		pthread_cond_destroy(&w->wake);
		pthread_mutex_destroy(&w->lock);
		free(w);
		return NULL;
	}
	return w;
}

void mig_watchdog_stop(struct mig_watchdog *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stop = true;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	pthread_cond_destroy(&w->wake);
	pthread_mutex_destroy(&w->lock);
	free(w);
}

void mig_watchdog_set(struct mig_watchdog *w, enum mig_deadline which, uint64_t at_ms,
		      const char *why)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	if (!w->disarmed) {
		w->at_ms[which] = at_ms;
		snprintf(w->why[which], sizeof(w->why[which]), "%s",
			 why ? why : "deadline passed");
		pthread_cond_signal(&w->wake);
	}
	pthread_mutex_unlock(&w->lock);
}

void mig_watchdog_disarm(struct mig_watchdog *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->disarmed = true;
	for (int i = 0; i < MIG_DEADLINES; i++)
		w->at_ms[i] = 0;
	pthread_mutex_unlock(&w->lock);
}

void mig_watchdog_set_throttle(struct mig_watchdog *w, uint64_t at_ms, atomic_int *throttle)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->throttle_at_ms = at_ms;
	w->throttle = throttle;
	pthread_cond_signal(&w->wake);
	pthread_mutex_unlock(&w->lock);
}

bool mig_watchdog_throttle_lifted(struct mig_watchdog *w)
{
	if (!w)
		return false;
	pthread_mutex_lock(&w->lock);
	bool lifted = w->throttle_lifted;
	w->throttle_lifted = false;
	pthread_mutex_unlock(&w->lock);
	return lifted;
}

bool mig_watchdog_fired(struct mig_watchdog *w, char *why, size_t len)
{
	if (!w)
		return false;
	pthread_mutex_lock(&w->lock);
	bool fired = w->fired;
	if (fired && why)
		snprintf(why, len, "%s", w->fired_why);
	pthread_mutex_unlock(&w->lock);
	return fired;
}
