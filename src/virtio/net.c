/*
 * net.c - virtio-net over a TAP interface (backend/tap.c).
 *
 * Queue 0 receives, queue 1 transmits. Every buffer starts with the
 * 12-byte virtio_net_hdr of VERSION_1; the device offers no offloads, so
 * on transmit the header is skipped and the rest is one Ethernet frame
 * written to the TAP, and on receive the header is all zeros (num_buffers
 * 1). Offered features: MAC (the configured address) and STATUS (link
 * always up).
 *
 * Transmit runs in the QueueNotify write on the vCPU thread. Receive runs
 * on the I/O thread when the TAP is readable, only while the machine runs
 * (a paused machine leaves frames in the TAP, so none is ever half
 * delivered across a migration). When the driver has no receive buffers
 * left the TAP is taken out of the poll set, so frames wait in the host
 * queue and the I/O thread does not spin; the driver's next kick on the
 * receive queue (or DRIVER_OK, or loading state) puts it back.
 *
 * Fault tolerance (migrate/ft.c) holds transmit output: while a hold is
 * on, each frame is copied into a queue tagged with the epoch it was sent
 * in, instead of going to the TAP, and goes out only when that epoch's
 * checkpoint is acknowledged by the secondary (virtio_net_hold_release),
 * so no one outside ever sees output of a state the secondary lacks. Each
 * held frame is reported (virtio_net_hold_notify) so that ft.c can end
 * the epoch early rather than let the frame wait out the interval.
 *
 * After a migration, resumed_elsewhere() announces the guest on the new
 * host: a small thread sends a RARP from the guest's MAC, and a gratuitous
 * ARP for the guest's IPv4 address if transmit traffic taught us one, five
 * times, 50, 100, 150 and 200 ms apart, so switches and neighbours learn
 * where the guest is now.
 */
#include "virtio/virtio.h"
#include "backend/tap.h"
#include "util/sbuf.h"

#include <endian.h>
#include <errno.h>
#include <linux/virtio_net.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NET_RXQ         0
#define NET_TXQ         1
#define NET_HDR_LEN     ((uint32_t)sizeof(struct virtio_net_hdr_mrg_rxbuf))
#define NET_MAX_FRAME   65536
#define NET_RX_BUDGET   64      /* frames per I/O thread wakeup */
#define NET_ANNOUNCES   5
#define NET_ANNOUNCE_STEP_MS 50
#define NET_STATE_VERSION 1

#define ETH_HLEN_       14
#define ETHERTYPE_IPV4  0x0800
#define ETHERTYPE_ARP   0x0806
#define ETHERTYPE_RARP  0x8035
#define ARP_REQUEST     1
#define RARP_REQUEST    3
#define ETH_MIN_FRAME   60      /* without the FCS */

struct net {
	struct virtio_dev vdev;     /* first: the transport frees us */
	int fd;
	uint8_t mac[6];
	bool watching;              /* fd is in the I/O thread's poll set */
	bool warned;
	uint32_t guest_ip;          /* network order; 0 = not known */
	uint8_t frame[NET_MAX_FRAME];
	struct iovec iov[VQ_MAX_SEGS];

	/* announcing */
	pthread_t announcer;
	bool announcer_started;
	pthread_mutex_t ann_lock;
	pthread_cond_t ann_cond;
	bool ann_stop;

	/* output held for fault tolerance (under vdev.lock) */
	bool holding;
	uint64_t hold_epoch;        /* frames sent now belong to this epoch */
	struct held_frame *held, **held_tail;
	uint64_t held_count, held_bytes;
	void (*held_notify)(void *);
	void *held_notify_opaque;
};

struct held_frame {
	struct held_frame *next;
	uint64_t epoch;
	size_t len;
	uint8_t data[];
};

static struct net *to_net(struct virtio_dev *d)
{
	return (struct net *)d;
}

static void net_warn(struct net *n, const char *what, int err)
{
	if (!n->warned)
		fprintf(stderr, "ferry-vm: %s: %s: %s\n", n->vdev.state_name, what,
			strerror(err));
	n->warned = true;
}

/* ---- receive ------------------------------------------------------------------ */

static void net_rx_ready(void *opaque);

static void net_watch(struct net *n, bool on)
{
	if (n->watching == on)
		return;
	if (on && io_watch(n->vdev.m, n->fd, net_rx_ready, n)) {
		net_warn(n, "cannot watch the TAP", EMFILE);
		return;
	}
	if (!on)
		io_unwatch(n->vdev.m, n->fd);
	n->watching = on;
}

/* Hand one frame (already in n->frame after the header room) to the
 * driver. False if the chain is too small: it is given back unused. */
static bool net_rx_deliver(struct net *n, struct vq_req *r, size_t len)
{
	struct virtio_dev *d = &n->vdev;
	struct virtio_net_hdr_mrg_rxbuf hdr = { .num_buffers = htole16(1) };
	if (r->write_len < NET_HDR_LEN + len) {
		virtq_unpop(&d->vq[NET_RXQ]);
		return false;
	}
	vq_req_write(d, r, 0, &hdr, NET_HDR_LEN);
	vq_req_write(d, r, NET_HDR_LEN, n->frame, len);
	virtq_push(d, &d->vq[NET_RXQ], r->head, NET_HDR_LEN + (uint32_t)len);
	return true;
}

/* Move frames from the TAP into receive buffers until either runs out. */
static void net_rx(struct net *n)
{
	struct virtio_dev *d = &n->vdev;
	struct virtq *q = &d->vq[NET_RXQ];
	for (int i = 0; i < NET_RX_BUDGET; i++) {
		if (virtq_avail(d, q) <= 0) {
			net_watch(n, false);    /* until the driver kicks */
			break;
		}
		ssize_t len = read(n->fd, n->frame, sizeof(n->frame));
		if (len < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		if (len <= 0) {
			net_warn(n, "reading the TAP failed; receive stops", len ? errno : EIO);
			net_watch(n, false);
			break;
		}
		if (virtq_pop(d, q, &d->req) <= 0)
			break;
		net_rx_deliver(n, &d->req, (size_t)len);   /* too big: dropped */
	}
	virtq_notify(d, q);
}

static void net_rx_ready(void *opaque)
{
	struct net *n = opaque;
	struct virtio_dev *d = &n->vdev;
	pthread_mutex_lock(&d->lock);
	if (machine_running(d->m) && n->watching) {
		if (virtio_live(d) && d->vq[NET_RXQ].ready)
			net_rx(n);
		else
			net_watch(n, false);
	}
	pthread_mutex_unlock(&d->lock);
}

/* ---- transmit ----------------------------------------------------------------- */

static uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* Remember the guest's IPv4 address from what it sends (for the ARP
 * announce after a migration): the sender of its ARP packets, or the
 * source of its IPv4 packets, when sent from its own MAC. */
static void net_learn_ip(struct net *n, const uint8_t *f, size_t len)
{
	uint32_t ip = 0;
	if (len < ETH_HLEN_ || memcmp(f + 6, n->mac, 6))
		return;
	uint16_t type = get_be16(f + 12);
	if (type == ETHERTYPE_ARP && len >= ETH_HLEN_ + 28)
		memcpy(&ip, f + ETH_HLEN_ + 14, 4);
	else if (type == ETHERTYPE_IPV4 && len >= ETH_HLEN_ + 20)
		memcpy(&ip, f + ETH_HLEN_ + 12, 4);
	if (ip)
		n->guest_ip = ip;
}

/* Queue the frame for the epoch under way; false when out of memory (the
 * frame is then dropped, as a full TAP would). */
static bool net_hold_frame(struct net *n, const struct vq_req *r, uint64_t len)
{
	struct held_frame *f = malloc(sizeof(*f) + len);
	if (!f)
		return false;
	f->next = NULL;
	f->epoch = n->hold_epoch;
	f->len = vq_req_read(&n->vdev, r, NET_HDR_LEN, f->data, len);
	*n->held_tail = f;
	n->held_tail = &f->next;
	n->held_count++;
	n->held_bytes += f->len;
	if (n->held_notify)
		n->held_notify(n->held_notify_opaque);
	return true;
}

static void net_tx_one(struct net *n, const struct vq_req *r)
{
	struct virtio_dev *d = &n->vdev;
	uint8_t head[ETH_HLEN_ + 28];
	uint64_t len = r->read_len - NET_HDR_LEN;
	if (len == 0 || len > NET_MAX_FRAME)
		return;     /* nothing a TAP would take: drop */
	size_t got = vq_req_read(d, r, NET_HDR_LEN, head, len < sizeof(head) ? len : sizeof(head));
	net_learn_ip(n, head, got);
	if (n->holding) {
		if (!net_hold_frame(n, r, len))
			net_warn(n, "out of memory holding output; frames are dropped", ENOMEM);
		return;
	}
	int cnt = vq_req_iov(d, r, false, NET_HDR_LEN, len, n->iov, VQ_MAX_SEGS);
	if (cnt <= 0)
		return;
	ssize_t w = writev(n->fd, n->iov, cnt);
	if (w < 0 && errno != EAGAIN && errno != ENOBUFS)
		net_warn(n, "writing to the TAP failed; frames are dropped", errno);
}

static void net_tx(struct net *n)
{
	struct virtio_dev *d = &n->vdev;
	struct virtq *q = &d->vq[NET_TXQ];
	while (virtq_pop(d, q, &d->req) > 0) {
		if (d->req.read_len < NET_HDR_LEN) {
			virtio_fail(d, "transmit buffer shorter than the virtio-net header");
			return;
		}
		net_tx_one(n, &d->req);
		virtq_push(d, q, d->req.head, 0);
	}
	virtq_notify(d, q);
}

static void net_notify(struct virtio_dev *d, unsigned q)
{
	struct net *n = to_net(d);
	if (q == NET_TXQ)
		net_tx(n);
	else
		net_watch(n, true);     /* new receive buffers: read the TAP again */
}

static void net_driver_ok(struct virtio_dev *d)
{
	net_watch(to_net(d), true);
}

static void net_reset(struct virtio_dev *d)
{
	net_watch(to_net(d), false);
}

/* ---- migration ------------------------------------------------------------------- */

static void net_save(struct virtio_dev *d, struct sbuf *out)
{
	sbuf_put_u32(out, NET_STATE_VERSION);
	sbuf_put(out, &to_net(d)->guest_ip, 4);
}

static int net_load(struct virtio_dev *d, struct sbuf *in, const char **why)
{
	struct net *n = to_net(d);
	uint32_t ip;
	if (sbuf_get_u32(in) != NET_STATE_VERSION) {
		*why = "virtio-net state has an unknown version";
		return -1;
	}
	if (!sbuf_get(in, &ip, 4)) {
		*why = "virtio-net state is truncated";
		return -1;
	}
	n->guest_ip = ip;
	net_watch(n, virtio_live(d));
	return 0;
}

/* ---- output held for fault tolerance ------------------------------------------- */

/* Write out (send) or drop the held frames of epochs <= upto. */
static void net_hold_drain(struct net *n, uint64_t upto, bool send)
{
	while (n->held && n->held->epoch <= upto) {
		struct held_frame *f = n->held;
		n->held = f->next;
		if (send && write(n->fd, f->data, f->len) < 0 && errno != EAGAIN &&
		    errno != ENOBUFS)
			net_warn(n, "writing to the TAP failed; frames are dropped", errno);
		n->held_count--;
		n->held_bytes -= f->len;
		free(f);
	}
	if (!n->held)
		n->held_tail = &n->held;
}

void virtio_net_hold_start(struct virtio_dev *d, uint64_t epoch)
{
	struct net *n = to_net(d);
	pthread_mutex_lock(&d->lock);
	if (!n->holding) {
		n->held = NULL;
		n->held_tail = &n->held;
	}
	n->holding = true;
	n->hold_epoch = epoch;
	pthread_mutex_unlock(&d->lock);
}

void virtio_net_hold_epoch(struct virtio_dev *d, uint64_t epoch)
{
	pthread_mutex_lock(&d->lock);
	to_net(d)->hold_epoch = epoch;
	pthread_mutex_unlock(&d->lock);
}

void virtio_net_hold_release(struct virtio_dev *d, uint64_t upto)
{
	pthread_mutex_lock(&d->lock);
	net_hold_drain(to_net(d), upto, true);
	pthread_mutex_unlock(&d->lock);
}

void virtio_net_hold_stop(struct virtio_dev *d, bool send)
{
	struct net *n = to_net(d);
	pthread_mutex_lock(&d->lock);
	if (n->holding)
		net_hold_drain(n, UINT64_MAX, send);
	n->holding = false;
	n->held_notify = NULL;
	pthread_mutex_unlock(&d->lock);
}

void virtio_net_hold_notify(struct virtio_dev *d, void (*fn)(void *), void *opaque)
{
	struct net *n = to_net(d);
	pthread_mutex_lock(&d->lock);
	n->held_notify = fn;
	n->held_notify_opaque = opaque;
	pthread_mutex_unlock(&d->lock);
}

void virtio_net_held(struct virtio_dev *d, uint64_t *frames, uint64_t *bytes)
{
	struct net *n = to_net(d);
	pthread_mutex_lock(&d->lock);
	*frames = n->held_count;
	*bytes = n->held_bytes;
	pthread_mutex_unlock(&d->lock);
}

/* ---- announce ------------------------------------------------------------------- */

static size_t net_arp_frame(uint8_t *f, const uint8_t mac[6], uint16_t ethertype,
			    uint16_t op, uint32_t ip)
{
	static const uint8_t arp_ipv4_eth[6] = { 0, 1, 0x08, 0x00, 6, 4 };
	uint8_t *a = f + ETH_HLEN_;
	memset(f, 0, ETH_MIN_FRAME);
	memset(f, 0xff, 6);                 /* broadcast */
	memcpy(f + 6, mac, 6);
	f[12] = (uint8_t)(ethertype >> 8);
	f[13] = (uint8_t)ethertype;
	memcpy(a, arp_ipv4_eth, 6);         /* Ethernet, IPv4, 6, 4 */
	a[6] = (uint8_t)(op >> 8);
	a[7] = (uint8_t)op;
	memcpy(a + 8, mac, 6);              /* sender MAC */
	memcpy(a + 14, &ip, 4);             /* sender IP */
	if (op == RARP_REQUEST)
		memcpy(a + 18, mac, 6);     /* target MAC: who am I */
	memcpy(a + 24, &ip, 4);             /* target IP */
	return ETH_MIN_FRAME;
}

static void net_announce_once(struct net *n)
{
	uint8_t f[ETH_MIN_FRAME];
	pthread_mutex_lock(&n->vdev.lock);
	uint32_t ip = n->guest_ip;
	pthread_mutex_unlock(&n->vdev.lock);
	ssize_t w = write(n->fd, f, net_arp_frame(f, n->mac, ETHERTYPE_RARP, RARP_REQUEST, 0));
	if (ip)
		w = write(n->fd, f, net_arp_frame(f, n->mac, ETHERTYPE_ARP, ARP_REQUEST, ip));
	(void)w;    /* an announce that does not go out is not worth more */
}

/* Sleep ms unless told to stop; true if told to stop. */
static bool net_announce_wait(struct net *n, unsigned ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&n->ann_lock);
	while (!n->ann_stop &&
	       pthread_cond_timedwait(&n->ann_cond, &n->ann_lock, &until) != ETIMEDOUT)
		;
	bool stop = n->ann_stop;
	pthread_mutex_unlock(&n->ann_lock);
	return stop;
}

static void *net_announce_thread(void *arg)
{
	struct net *n = arg;
	for (unsigned i = 0; i < NET_ANNOUNCES; i++) {
		net_announce_once(n);
		if (i + 1 < NET_ANNOUNCES && net_announce_wait(n, (i + 1) * NET_ANNOUNCE_STEP_MS))
			break;
	}
	return NULL;
}

static void net_announce_join(struct net *n)
{
	if (!n->announcer_started)
		return;
	pthread_mutex_lock(&n->ann_lock);
	n->ann_stop = true;
	pthread_cond_broadcast(&n->ann_cond);
	pthread_mutex_unlock(&n->ann_lock);
	pthread_join(n->announcer, NULL);
	n->announcer_started = false;
	n->ann_stop = false;
}

static void net_resumed_elsewhere(struct virtio_dev *d)
{
	struct net *n = to_net(d);
	net_announce_join(n);   /* a previous round, if any, makes way */
	if (pthread_create(&n->announcer, NULL, net_announce_thread, n) == 0)
		n->announcer_started = true;
	else
		net_warn(n, "cannot start announcing the guest", errno);
}

/* ---- setup ----------------------------------------------------------------------- */

static void net_destroy(struct virtio_dev *d)
{
	struct net *n = to_net(d);
	net_announce_join(n);
	pthread_mutex_lock(&d->lock);
	if (n->holding)
		net_hold_drain(n, UINT64_MAX, false);
	net_watch(n, false);
	pthread_mutex_unlock(&d->lock);
	close(n->fd);
	pthread_cond_destroy(&n->ann_cond);
	pthread_mutex_destroy(&n->ann_lock);
}

static const struct virtio_dev_ops net_ops = {
	.type = "net",
	.device_id = VIRTIO_ID_NET,
	.features = (1ULL << VIRTIO_NET_F_MAC) | (1ULL << VIRTIO_NET_F_STATUS),
	.nqueues = 2,
	.notify = net_notify,
	.driver_ok = net_driver_ok,
	.reset = net_reset,
	.save = net_save,
	.load = net_load,
	.resumed_elsewhere = net_resumed_elsewhere,
	.destroy = net_destroy,
};

struct virtio_dev *virtio_net_create_fd(struct machine *m, unsigned slot, int fd,
					const uint8_t mac[6], char *err, size_t errlen)
{
	struct net *n = calloc(1, sizeof(*n));
	if (!n) {
		snprintf(err, errlen, "virtio-net: out of memory");
		close(fd);
		return NULL;
	}
	n->fd = fd;
	memcpy(n->mac, mac, 6);
	pthread_mutex_init(&n->ann_lock, NULL);
	pthread_cond_init(&n->ann_cond, NULL);
	uint8_t *c = n->vdev.config;
	uint16_t status = htole16(VIRTIO_NET_S_LINK_UP);
	memcpy(c + offsetof(struct virtio_net_config, mac), mac, 6);
	memcpy(c + offsetof(struct virtio_net_config, status), &status, 2);
	n->vdev.config_len = offsetof(struct virtio_net_config, max_virtqueue_pairs);
	if (virtio_init(&n->vdev, m, slot, &net_ops, err, errlen)) {
		close(fd);
		pthread_cond_destroy(&n->ann_cond);
		pthread_mutex_destroy(&n->ann_lock);
		free(n);
		return NULL;
	}
	return &n->vdev;
}

struct virtio_dev *virtio_net_create(struct machine *m, unsigned slot,
				     const char *tap_ifname, bool create_tap,
				     const uint8_t mac[6], char *err, size_t errlen)
{
	int fd = tap_open(tap_ifname, create_tap, err, errlen);
	if (fd < 0)
		return NULL;
	return virtio_net_create_fd(m, slot, fd, mac, err, errlen);
}
