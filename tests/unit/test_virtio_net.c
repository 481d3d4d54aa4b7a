/*
 * test_virtio_net.c - virtio-net over a datagram socket pair standing in
 * for the TAP: transmit strips the header, receive adds it, receive stops
 * when the driver has no buffers or the machine is paused and resumes on
 * the driver's kick, and after a migration the device announces the
 * guest's MAC (RARP) and learned IPv4 address (gratuitous ARP).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include <endian.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/virtio_config.h>
#include <linux/virtio_net.h>

#include "fake_machine.h"
#include "machine/devices.h"
#include "util/sbuf.h"
#include "virtio/virtio.h"

#define BASE    (VIRTIO_BASE + VIRTIO_STRIDE)   /* slot 1 */
#define IRQ     (VIRTIO_IRQ0 + 1)
#define QSIZE   8
#define RINGS   (RAM_BASE + 0x10000)
#define TXBUF   (RAM_BASE + 0x20000)
#define RXBUF   (RAM_BASE + 0x30000)
#define HDRLEN  12
#define F(bit)  (1ULL << (bit))
#define FEATURES (F(VIRTIO_F_VERSION_1) | F(VIRTIO_NET_F_MAC) | F(VIRTIO_NET_F_STATUS))

static const uint8_t mac[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };

struct fixture {
	struct machine *m;
	struct virtio_dev *d;
	int dev_fd, peer;
	struct fake_vq q[2];    /* rx, tx */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	int sv[2];
	char err[256];
	assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, sv), 0);
	f->dev_fd = sv[0];
	f->peer = sv[1];
	f->m = fake_machine_create();
	f->d = virtio_net_create_fd(f->m, 1, f->dev_fd, mac, err, sizeof(err));
	assert_non_null(f->d);
	uint32_t st = fake_virtio_setup(f->m, BASE, FEATURES, f->q, 2, QSIZE, RINGS);
	assert_true(st & VIRTIO_CONFIG_S_DRIVER_OK);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	virtio_destroy(f->d);
	fake_machine_destroy(f->m);
	close(f->peer);
	free(f);
	return 0;
}

/* An Ethernet frame from the guest's MAC: IPv4 from 192.0.2.7. */
static size_t ipv4_frame(uint8_t *p, size_t len)
{
	memset(p, 0, len);
	memset(p, 0xff, 6);
	memcpy(p + 6, mac, 6);
	p[12] = 0x08;
	p[13] = 0x00;
	p[14] = 0x45;
	const uint8_t src[4] = { 192, 0, 2, 7 };
	memcpy(p + 14 + 12, src, 4);
	for (size_t i = 34; i < len; i++)
		p[i] = (uint8_t)i;
	return len;
}

static void guest_send(struct fixture *f, size_t len)
{
	uint8_t *hdr = fake_gpa(f->m, TXBUF);
	memset(hdr, 0, HDRLEN);
	ipv4_frame(fake_gpa(f->m, TXBUF + 0x100), len);
	struct fake_buf b[3] = {
		{ TXBUF, HDRLEN, false },
		{ TXBUF + 0x100, 20, false },           /* the frame in two pieces */
		{ TXBUF + 0x100 + 20, (uint32_t)len - 20, false },
	};
	fake_vq_add(f->m, &f->q[1], b, 3);
	fake_vq_kick(f->m, BASE, 1);
}

static void guest_rx_buffer(struct fixture *f, uint64_t gpa, uint32_t len, bool kick)
{
	struct fake_buf b = { gpa, len, true };
	fake_vq_add(f->m, &f->q[0], &b, 1);
	if (kick)
		fake_vq_kick(f->m, BASE, 0);
}

static void config_has_the_mac_and_link(void **state)
{
	struct fixture *f = *state;
	for (int i = 0; i < 6; i++)
		assert_int_equal(fake_mmio_read(f->m, BASE + 0x100 + i, 1), mac[i]);
	assert_int_equal(fake_mmio_read(f->m, BASE + 0x106, 2), VIRTIO_NET_S_LINK_UP);
	assert_int_equal(fake_mmio_read(f->m, BASE + 0x8, 4), 1);  /* network card */
}

static void transmit_strips_the_header(void **state)
{
	struct fixture *f = *state;
	uint8_t got[2048], want[2048];
	guest_send(f, 98);
	ssize_t n = recv(f->peer, got, sizeof(got), 0);
	assert_int_equal(n, 98);
	ipv4_frame(want, 98);
	assert_memory_equal(got, want, 98);
	uint32_t id, len;
	assert_true(fake_vq_used(f->m, &f->q[1], &id, &len));
	assert_int_equal(len, 0);
	assert_int_equal(f->m->irq[IRQ], 1);
}

static void receive_adds_the_header(void **state)
{
	struct fixture *f = *state;
	uint8_t frame[100];
	guest_rx_buffer(f, RXBUF, 1526, true);
	fake_dirty_clear(f->m);
	ipv4_frame(frame, sizeof(frame));
	assert_int_equal(send(f->peer, frame, sizeof(frame), 0), sizeof(frame));
	assert_int_equal(fake_io_poll(f->m), 1);
	uint32_t id, len;
	assert_true(fake_vq_used(f->m, &f->q[0], &id, &len));
	assert_int_equal(len, HDRLEN + sizeof(frame));
	struct virtio_net_hdr_mrg_rxbuf hdr;
	memcpy(&hdr, fake_gpa(f->m, RXBUF), HDRLEN);
	assert_int_equal(hdr.hdr.flags, 0);
	assert_int_equal(hdr.hdr.gso_type, 0);
	assert_int_equal(le16toh(hdr.num_buffers), 1);
	assert_memory_equal(fake_gpa(f->m, RXBUF + HDRLEN), frame, sizeof(frame));
	assert_true(fake_dirty_covers(f->m, RXBUF, HDRLEN + sizeof(frame)));
	assert_true(fake_dirty_covers(f->m, f->q[0].used + 2, 10));
	assert_int_equal(f->m->irq[IRQ], 1);
}

static bool frame_waiting(struct fixture *f)
{
	uint8_t b[1];
	return recv(f->dev_fd, b, 1, MSG_PEEK | MSG_DONTWAIT) == 1;
}

static void no_buffers_means_no_reading(void **state)
{
	struct fixture *f = *state;
	uint8_t frame[60];
	ipv4_frame(frame, sizeof(frame));
	assert_true(fake_watching(f->m, f->dev_fd));
	assert_int_equal(send(f->peer, frame, sizeof(frame), 0), sizeof(frame));
	fake_io_poll(f->m);
	assert_false(fake_watching(f->m, f->dev_fd));   /* it waits for buffers */
	assert_true(frame_waiting(f));                  /* the frame stays queued */
	assert_int_equal(fake_io_poll(f->m), 0);        /* and nothing spins */

	guest_rx_buffer(f, RXBUF, 1526, true);          /* the driver kicks */
	assert_true(fake_watching(f->m, f->dev_fd));
	fake_io_poll(f->m);
	assert_false(frame_waiting(f));
	uint32_t id, len;
	assert_true(fake_vq_used(f->m, &f->q[0], &id, &len));
	assert_int_equal(len, HDRLEN + sizeof(frame));
}

static void paused_machine_leaves_frames_in_the_tap(void **state)
{
	struct fixture *f = *state;
	uint8_t frame[60];
	guest_rx_buffer(f, RXBUF, 1526, true);
	ipv4_frame(frame, sizeof(frame));
	f->m->running = false;
	assert_int_equal(send(f->peer, frame, sizeof(frame), 0), sizeof(frame));
	fake_io_poll(f->m);
	assert_true(frame_waiting(f));
	uint32_t id, len;
	assert_false(fake_vq_used(f->m, &f->q[0], &id, &len));
	f->m->running = true;
	fake_io_poll(f->m);
	assert_true(fake_vq_used(f->m, &f->q[0], &id, &len));
}

static void oversized_frames_are_dropped(void **state)
{
	struct fixture *f = *state;
	uint8_t frame[100];
	guest_rx_buffer(f, RXBUF, 50, true);
	ipv4_frame(frame, sizeof(frame));
	assert_int_equal(send(f->peer, frame, sizeof(frame), 0), sizeof(frame));
	fake_io_poll(f->m);
	uint32_t id, len;
	assert_false(fake_vq_used(f->m, &f->q[0], &id, &len));     /* buffer kept */
	assert_int_equal(send(f->peer, frame, 30, 0), 30);
	fake_io_poll(f->m);
	assert_true(fake_vq_used(f->m, &f->q[0], &id, &len));
	assert_int_equal(len, HDRLEN + 30);
}

/* Read frames from the peer until `count` arrived (generous deadline; the
 * test does not measure time). */
static int collect(int fd, uint8_t frames[][64], int count)
{
	int got = 0;
	while (got < count) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 10000) <= 0)
			break;
		if (recv(fd, frames[got], 64, 0) > 0)
			got++;
	}
	return got;
}

static void check_announces(uint8_t frames[][64], int n, const uint8_t ip[4])
{
	int rarp = 0, garp = 0;
	for (int i = 0; i < n; i++) {
		uint8_t *p = frames[i];
		assert_memory_equal(p, "\xff\xff\xff\xff\xff\xff", 6);
		assert_memory_equal(p + 6, mac, 6);
		uint16_t type = (uint16_t)(p[12] << 8 | p[13]);
		if (type == 0x8035) {
			assert_int_equal(p[21], 3);             /* reverse request */
			assert_memory_equal(p + 22, mac, 6);
			rarp++;
		} else {
			assert_int_equal(type, 0x0806);
			assert_int_equal(p[21], 1);             /* request */
			assert_memory_equal(p + 28, ip, 4);     /* sender IP */
			assert_memory_equal(p + 38, ip, 4);     /* target IP */
			garp++;
		}
	}
	assert_int_equal(rarp, 5);
	assert_int_equal(garp, ip ? 5 : 0);
}

static void resumed_elsewhere_announces(void **state)
{
	struct fixture *f = *state;
	uint8_t frames[10][64], scratch[2048];
	static const uint8_t ip[4] = { 192, 0, 2, 7 };
	guest_send(f, 80);                                      /* learn the IP */
	assert_int_equal(recv(f->peer, scratch, sizeof(scratch), 0), 80);

	const struct fake_state *s = fake_state(f->m, "virtio-net.1");
	assert_non_null(s);
	s->ops->resumed_elsewhere(s->dev);
	assert_int_equal(collect(f->peer, frames, 10), 10);
	check_announces(frames, 10, ip);
}

static void state_round_trips(void **state)
{
	struct fixture *f = *state;
	uint8_t frames[10][64], scratch[2048];
	static const uint8_t ip[4] = { 192, 0, 2, 7 };
	char err[256];
	const char *why = NULL;
	guest_send(f, 80);
	assert_int_equal(recv(f->peer, scratch, sizeof(scratch), 0), 80);
	guest_rx_buffer(f, RXBUF, 1526, true);

	struct sbuf out, in;
	sbuf_init(&out);
	const struct fake_state *s = fake_state(f->m, "virtio-net.1");
	s->ops->save(s->dev, &out);

	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, sv), 0);
	struct machine *m2 = fake_machine_create();
	struct virtio_dev *d2 = virtio_net_create_fd(m2, 1, sv[0], mac, err, sizeof(err));
	memcpy(m2->ram, f->m->ram, FAKE_RAM_SIZE);
	const struct fake_state *s2 = fake_state(m2, "virtio-net.1");
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(s2->ops->load(s2->dev, &in, s2->ops->version, &why), 0);
	assert_true(sbuf_done(&in));
	assert_true(fake_watching(m2, sv[0]));      /* receive goes on at once */

	uint8_t frame[60];
	ipv4_frame(frame, sizeof(frame));
	assert_int_equal(send(sv[1], frame, sizeof(frame), 0), sizeof(frame));
	fake_io_poll(m2);
	uint16_t used_idx;
	memcpy(&used_idx, fake_gpa(m2, f->q[0].used + 2), 2);
	assert_int_equal(le16toh(used_idx), 1);

	s2->ops->resumed_elsewhere(s2->dev);        /* it knows the IP too */
	assert_int_equal(collect(sv[1], frames, 10), 10);
	check_announces(frames, 10, ip);

	/* a device with another MAC refuses the state */
	static const uint8_t other[6] = { 0x52, 0x54, 0, 0, 0, 9 };
	struct machine *m3 = fake_machine_create();
	int sv3[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, sv3), 0);
	struct virtio_dev *d3 = virtio_net_create_fd(m3, 1, sv3[0], other, err, sizeof(err));
	const struct fake_state *s3 = fake_state(m3, "virtio-net.1");
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(s3->ops->load(s3->dev, &in, s3->ops->version, &why), -1);

	virtio_destroy(d3);
	fake_machine_destroy(m3);
	close(sv3[1]);
	virtio_destroy(d2);
	fake_machine_destroy(m2);
	close(sv[1]);
	sbuf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(config_has_the_mac_and_link, setup, teardown),
		cmocka_unit_test_setup_teardown(transmit_strips_the_header, setup, teardown),
		cmocka_unit_test_setup_teardown(receive_adds_the_header, setup, teardown),
		cmocka_unit_test_setup_teardown(no_buffers_means_no_reading, setup, teardown),
		cmocka_unit_test_setup_teardown(paused_machine_leaves_frames_in_the_tap, setup,
						teardown),
		cmocka_unit_test_setup_teardown(oversized_frames_are_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(resumed_elsewhere_announces, setup, teardown),
		cmocka_unit_test_setup_teardown(state_round_trips, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
