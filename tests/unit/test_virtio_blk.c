/*
 * test_virtio_blk.c - the virtio-mmio transport and split virtqueues,
 * driven through virtio-blk over a temporary image: requests land in the
 * file and in guest memory, the used ring and the dirty log are right,
 * malformed rings mark the device NEEDS_RESET without harm, and a saved
 * device resumes on another (fake) machine mid-stream.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include <endian.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_mmio.h>
#include <linux/virtio_ring.h>

#include "fake_machine.h"
#include "machine/devices.h"
#include "util/sbuf.h"

#define BASE      VIRTIO_BASE
#define IRQ       VIRTIO_IRQ0
#define QSIZE     16
#define RINGS     (RAM_BASE + 0x10000)
#define HDR       (RAM_BASE + 0x20000)
#define DATA      (RAM_BASE + 0x21000)
#define STATUS    (RAM_BASE + 0x24000)
#define TABLE     (RAM_BASE + 0x30000)
#define SECTORS   128

#define F(bit)    (1ULL << (bit))
#define FEATURES  (F(VIRTIO_F_VERSION_1) | F(VIRTIO_BLK_F_FLUSH) | F(VIRTIO_BLK_F_SEG_MAX) | \
		   F(VIRTIO_RING_F_INDIRECT_DESC))

struct fixture {
	char path[64];
	struct machine *m;
	struct virtio_dev *d;
	struct fake_vq q;
};

static void make_image(struct fixture *f)
{
	strcpy(f->path, "/tmp/ferry-blk-XXXXXX");
	int fd = mkstemp(f->path);
	assert_true(fd >= 0);
	uint8_t sector[512];
	for (unsigned s = 0; s < SECTORS; s++) {
		memset(sector, (int)s, sizeof(sector));
		assert_int_equal(write(fd, sector, sizeof(sector)), sizeof(sector));
	}
	close(fd);
}

static int setup_common(void **state, bool readonly, uint64_t features)
{
	struct fixture *f = calloc(1, sizeof(*f));
	char err[256];
	make_image(f);
	f->m = fake_machine_create();
	f->d = virtio_blk_create(f->m, 0, f->path, readonly, false, NULL, false, err, sizeof(err));
	assert_non_null(f->d);
	uint32_t st = fake_virtio_setup(f->m, BASE, features, &f->q, 1, QSIZE, RINGS);
	assert_true(st & VIRTIO_CONFIG_S_DRIVER_OK);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_common(state, false, FEATURES);
}

static int setup_ro(void **state)
{
	return setup_common(state, true, FEATURES | F(VIRTIO_BLK_F_RO));
}

static int setup_event_idx(void **state)
{
	return setup_common(state, false, FEATURES | F(VIRTIO_RING_F_EVENT_IDX));
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	virtio_destroy(f->d);
	fake_machine_destroy(f->m);
	unlink(f->path);
	free(f);
	return 0;
}

/* ---- helpers ------------------------------------------------------------------ */

static uint32_t reg(struct machine *m, uint64_t off)
{
	return (uint32_t)fake_mmio_read(m, BASE + off, 4);
}

static void set_reg(struct machine *m, uint64_t off, uint32_t v)
{
	fake_mmio_write(m, BASE + off, v, 4);
}

static void put_header(struct machine *m, uint32_t type, uint64_t sector)
{
	uint8_t *h = fake_gpa(m, HDR);
	uint32_t t = htole32(type);
	uint64_t s = htole64(sector);
	memset(h, 0, 16);
	memcpy(h, &t, 4);
	memcpy(h + 8, &s, 8);
	*(uint8_t *)fake_gpa(m, STATUS) = 0xee;
}

/* header, data in `nseg` equal pieces, status byte */
static uint16_t submit(struct fixture *f, uint32_t type, uint64_t sector, uint32_t len,
		       unsigned nseg, bool indirect)
{
	struct fake_buf b[8];
	bool in = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
	unsigned n = 0;
	put_header(f->m, type, sector);
	b[n++] = (struct fake_buf){ HDR, 16, false };
	for (unsigned i = 0; i < nseg; i++)
		b[n++] = (struct fake_buf){ DATA + i * (len / nseg), len / nseg, in };
	b[n++] = (struct fake_buf){ STATUS, 1, true };
	uint16_t head = indirect ? fake_vq_add_indirect(f->m, &f->q, b, n, TABLE)
				 : fake_vq_add(f->m, &f->q, b, n);
	fake_vq_kick(f->m, BASE, 0);
	return head;
}

static uint8_t status_byte(struct fixture *f)
{
	return *(uint8_t *)fake_gpa(f->m, STATUS);
}

static void expect_used(struct fixture *f, uint16_t head, uint32_t len)
{
	uint32_t id, l;
	assert_true(fake_vq_used(f->m, &f->q, &id, &l));
	assert_int_equal(id, head);
	assert_int_equal(l, len);
}

static void file_sector(struct fixture *f, unsigned s, uint8_t *buf)
{
	FILE *fp = fopen(f->path, "rb");
	assert_non_null(fp);
	assert_int_equal(fseek(fp, (long)s * 512, SEEK_SET), 0);
	assert_int_equal(fread(buf, 1, 512, fp), 512);
	fclose(fp);
}

static bool needs_reset(struct machine *m)
{
	return reg(m, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET;
}

/* ---- transport ----------------------------------------------------------------- */

static void identifies_and_negotiates(void **state)
{
	struct fixture *f = *state;
	assert_int_equal(reg(f->m, VIRTIO_MMIO_MAGIC_VALUE), 0x74726976);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_VERSION), 2);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_DEVICE_ID), 2);
	set_reg(f->m, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	assert_true(reg(f->m, VIRTIO_MMIO_DEVICE_FEATURES) & 1);   /* VERSION_1 */
	set_reg(f->m, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint32_t lo = reg(f->m, VIRTIO_MMIO_DEVICE_FEATURES);
	assert_true(lo & F(VIRTIO_BLK_F_FLUSH));
	assert_false(lo & F(VIRTIO_BLK_F_RO));
	assert_int_equal(fake_mmio_read(f->m, BASE + 0x100, 8), SECTORS);
	assert_int_equal(fake_mmio_read(f->m, BASE + 0x100, 4), SECTORS);
	assert_int_equal(fake_mmio_read(f->m, BASE + 0x104, 4), 0);

	/* a driver without VERSION_1 does not get FEATURES_OK */
	struct fake_vq q;
	uint32_t st = fake_virtio_setup(f->m, BASE, F(VIRTIO_BLK_F_FLUSH), &q, 1, QSIZE, RINGS);
	assert_false(st & VIRTIO_CONFIG_S_FEATURES_OK);
	/* nor one asking for what is not offered */
	st = fake_virtio_setup(f->m, BASE, FEATURES | F(VIRTIO_BLK_F_MQ), &q, 1, QSIZE, RINGS);
	assert_false(st & VIRTIO_CONFIG_S_FEATURES_OK);
	/* a queue size that is not a power of 2 is refused */
	set_reg(f->m, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_STATUS), 0);
	set_reg(f->m, VIRTIO_MMIO_QUEUE_SEL, 0);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_QUEUE_READY), 0);
	set_reg(f->m, VIRTIO_MMIO_QUEUE_NUM, 12);
	set_reg(f->m, VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_QUEUE_READY), 0);
	assert_true(needs_reset(f->m));
	/* a queue that does not exist reads as absent */
	set_reg(f->m, VIRTIO_MMIO_QUEUE_SEL, 1);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
}

static void write_then_read(void **state)
{
	struct fixture *f = *state;
	uint8_t *data = fake_gpa(f->m, DATA), sector[512];
	for (unsigned i = 0; i < 1024; i++)
		data[i] = (uint8_t)(i * 7 + 1);
	fake_dirty_clear(f->m);

	uint16_t head = submit(f, VIRTIO_BLK_T_OUT, 3, 1024, 2, false);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_OK);
	expect_used(f, head, 1);
	file_sector(f, 3, sector);
	assert_memory_equal(sector, data, 512);
	file_sector(f, 4, sector);
	assert_memory_equal(sector, data + 512, 512);
	file_sector(f, 5, sector);
	assert_int_equal(sector[0], 5);             /* untouched */

	/* the device reported what it wrote: used element, used idx, status */
	assert_true(fake_dirty_covers(f->m, f->q.used + 4, 8));
	assert_true(fake_dirty_covers(f->m, f->q.used + 2, 2));
	assert_true(fake_dirty_covers(f->m, STATUS, 1));
	assert_false(fake_dirty_covers(f->m, DATA, 1));     /* only read from */

	/* the used buffer interrupt, until acknowledged */
	assert_int_equal(f->m->irq[IRQ], 1);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
	set_reg(f->m, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
	assert_int_equal(f->m->irq[IRQ], 0);

	memset(data, 0, 2048);
	fake_dirty_clear(f->m);
	head = submit(f, VIRTIO_BLK_T_IN, 3, 1024, 2, false);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_OK);
	expect_used(f, head, 1025);
	for (unsigned i = 0; i < 1024; i++)
		assert_int_equal(data[i], (uint8_t)(i * 7 + 1));
	assert_int_equal(data[1024], 0);
	assert_true(fake_dirty_covers(f->m, DATA, 1024));
	assert_false(fake_dirty_covers(f->m, DATA + 1024, 1));
	assert_true(fake_dirty_covers(f->m, f->q.used + 4 + 8, 8));
	assert_int_equal(f->m->irq[IRQ], 1);
}

static void indirect_chain(void **state)
{
	struct fixture *f = *state;
	uint8_t *data = fake_gpa(f->m, DATA);
	uint16_t head = submit(f, VIRTIO_BLK_T_IN, 9, 2048, 4, true);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_OK);
	expect_used(f, head, 2049);
	for (unsigned s = 0; s < 4; s++)
		assert_int_equal(data[s * 512 + 100], 9 + s);
	assert_false(needs_reset(f->m));
}

static void request_errors(void **state)
{
	struct fixture *f = *state;
	submit(f, VIRTIO_BLK_T_IN, SECTORS - 1, 1024, 1, false);     /* runs past the end */
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_IOERR);
	submit(f, VIRTIO_BLK_T_IN, ~0ULL, 512, 1, false);           /* overflowing sector */
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_IOERR);
	submit(f, VIRTIO_BLK_T_OUT, 0, 100, 1, false);              /* not whole sectors */
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_IOERR);
	submit(f, 99, 0, 512, 1, false);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_UNSUPP);
	submit(f, VIRTIO_BLK_T_FLUSH, 0, 0, 0, false);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_OK);
	uint16_t head = submit(f, VIRTIO_BLK_T_GET_ID, 0, 20, 1, false);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_OK);
	assert_memory_equal(fake_gpa(f->m, DATA), "ferry-blk-", 10);
	uint32_t id, len;
	for (int i = 0; i < 5; i++)
		assert_true(fake_vq_used(f->m, &f->q, &id, &len));
	assert_true(fake_vq_used(f->m, &f->q, &id, &len));
	assert_int_equal(id, head);
	assert_int_equal(len, 21);
	assert_false(needs_reset(f->m));
}

static void readonly_disk_refuses_writes(void **state)
{
	struct fixture *f = *state;
	uint8_t sector[512];
	set_reg(f->m, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	assert_true(reg(f->m, VIRTIO_MMIO_DEVICE_FEATURES) & F(VIRTIO_BLK_F_RO));
	memset(fake_gpa(f->m, DATA), 0xaa, 512);
	submit(f, VIRTIO_BLK_T_OUT, 1, 512, 1, false);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_IOERR);
	file_sector(f, 1, sector);
	assert_int_equal(sector[0], 1);
	submit(f, VIRTIO_BLK_T_IN, 2, 512, 1, false);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_OK);
	assert_int_equal(*(uint8_t *)fake_gpa(f->m, DATA), 2);
}

/* ---- malformed rings ------------------------------------------------------------ */

/* After a failure: NEEDS_RESET, a config interrupt, and no more work until
 * the driver resets; then the device works again. */
static void expect_failed_then_recover(struct fixture *f)
{
	assert_true(needs_reset(f->m));
	assert_true(reg(f->m, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG);
	assert_int_equal(f->m->irq[IRQ], 1);
	uint16_t used_before = le16toh(*(uint16_t *)fake_gpa(f->m, f->q.used + 2));
	submit(f, VIRTIO_BLK_T_IN, 0, 512, 1, false);
	assert_int_equal(le16toh(*(uint16_t *)fake_gpa(f->m, f->q.used + 2)), used_before);
	/* the driver cannot clear it by writing status */
	set_reg(f->m, VIRTIO_MMIO_STATUS, reg(f->m, VIRTIO_MMIO_STATUS) &
		~VIRTIO_CONFIG_S_NEEDS_RESET);
	assert_true(needs_reset(f->m));

	uint32_t st = fake_virtio_setup(f->m, BASE, FEATURES, &f->q, 1, QSIZE, RINGS);
	assert_int_equal(st & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
	assert_int_equal(f->m->irq[IRQ], 0);
	uint16_t head = submit(f, VIRTIO_BLK_T_IN, 6, 512, 1, false);
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_OK);
	expect_used(f, head, 513);
	assert_int_equal(*(uint8_t *)fake_gpa(f->m, DATA), 6);
}

static void buffer_outside_ram(void **state)
{
	struct fixture *f = *state;
	struct fake_buf b[3] = {
		{ HDR, 16, false },
		{ RAM_BASE + FAKE_RAM_SIZE - 256, 512, true },  /* runs off the end */
		{ STATUS, 1, true },
	};
	put_header(f->m, VIRTIO_BLK_T_IN, 0);
	fake_vq_add(f->m, &f->q, b, 3);
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);

	b[1] = (struct fake_buf){ 0x1000, 512, true };         /* below RAM: MMIO */
	fake_vq_add(f->m, &f->q, b, 3);
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);
}

static void chain_that_loops(void **state)
{
	struct fixture *f = *state;
	put_header(f->m, VIRTIO_BLK_T_IN, 0);
	fake_vq_desc(f->m, &f->q, 0, HDR, 16, VRING_DESC_F_NEXT, 1);
	fake_vq_desc(f->m, &f->q, 1, DATA, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
	fake_vq_desc(f->m, &f->q, 2, STATUS, 1, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
	fake_vq_post(f->m, &f->q, 0);
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);
}

static void indices_out_of_range(void **state)
{
	struct fixture *f = *state;
	fake_vq_post(f->m, &f->q, QSIZE + 3);                   /* head past the table */
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);

	fake_vq_desc(f->m, &f->q, 0, HDR, 16, VRING_DESC_F_NEXT, 200);     /* next */
	fake_vq_post(f->m, &f->q, 0);
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);

	*(uint16_t *)fake_gpa(f->m, f->q.avail + 2) = htole16(1000);       /* avail idx */
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);
}

static void bad_layouts(void **state)
{
	struct fixture *f = *state;
	/* readable after writable */
	fake_vq_desc(f->m, &f->q, 0, DATA, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
	fake_vq_desc(f->m, &f->q, 1, HDR, 16, 0, 0);
	fake_vq_post(f->m, &f->q, 0);
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);

	/* nested indirect tables */
	struct fake_vq t = { .num = 0xffff, .desc = TABLE };
	fake_vq_desc(f->m, &t, 0, TABLE + 0x100, 32, VRING_DESC_F_INDIRECT, 0);
	fake_vq_desc(f->m, &f->q, 0, TABLE, 16, VRING_DESC_F_INDIRECT, 0);
	fake_vq_post(f->m, &f->q, 0);
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);

	/* an indirect table of a size that is no whole descriptors */
	fake_vq_desc(f->m, &f->q, 0, TABLE, 20, VRING_DESC_F_INDIRECT, 0);
	fake_vq_post(f->m, &f->q, 0);
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);

	/* no status byte */
	put_header(f->m, VIRTIO_BLK_T_FLUSH, 0);
	fake_vq_desc(f->m, &f->q, 0, HDR, 16, 0, 0);
	fake_vq_post(f->m, &f->q, 0);
	fake_vq_kick(f->m, BASE, 0);
	expect_failed_then_recover(f);
}

static void ring_outside_ram(void **state)
{
	struct fixture *f = *state;
	set_reg(f->m, VIRTIO_MMIO_STATUS, 0);
	set_reg(f->m, VIRTIO_MMIO_QUEUE_SEL, 0);
	set_reg(f->m, VIRTIO_MMIO_QUEUE_NUM, QSIZE);
	set_reg(f->m, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
	set_reg(f->m, VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(reg(f->m, VIRTIO_MMIO_QUEUE_READY), 0);
	assert_true(needs_reset(f->m));
}

/* ---- event index ------------------------------------------------------------------- */

static void event_idx_suppresses_interrupts(void **state)
{
	struct fixture *f = *state;
	uint16_t *used_event = fake_gpa(f->m, f->q.avail + 4 + 2 * QSIZE);
	uint16_t *avail_event = fake_gpa(f->m, f->q.used + 4 + 8 * QSIZE);

	*used_event = htole16(0);       /* interrupt after used entry 0 */
	submit(f, VIRTIO_BLK_T_IN, 0, 512, 1, false);
	assert_int_equal(f->m->irq_raised[IRQ], 1);
	assert_int_equal(le16toh(*avail_event), 1);     /* kick me for entry 1 */
	assert_true(fake_dirty_covers(f->m, f->q.used + 4 + 8 * QSIZE, 2));
	set_reg(f->m, VIRTIO_MMIO_INTERRUPT_ACK, 1);

	*used_event = htole16(5);       /* not before entry 5 */
	submit(f, VIRTIO_BLK_T_IN, 0, 512, 1, false);
	submit(f, VIRTIO_BLK_T_IN, 0, 512, 1, false);
	assert_int_equal(f->m->irq_raised[IRQ], 1);
	assert_int_equal(f->m->irq[IRQ], 0);
	for (int i = 0; i < 2; i++)
		submit(f, VIRTIO_BLK_T_IN, 0, 512, 1, false);
	assert_int_equal(f->m->irq_raised[IRQ], 1);     /* used idx 5: entry 5 not yet */
	submit(f, VIRTIO_BLK_T_IN, 0, 512, 1, false);
	assert_int_equal(f->m->irq_raised[IRQ], 2);     /* entry 5 is used now */
	assert_int_equal(le16toh(*avail_event), 6);
}

/* ---- migration ------------------------------------------------------------------------ */

static void state_resumes_on_another_machine(void **state)
{
	struct fixture *f = *state;
	char err[256];
	const char *why = NULL;
	uint8_t sector[512];

	memset(fake_gpa(f->m, DATA), 0x5a, 512);
	submit(f, VIRTIO_BLK_T_OUT, 7, 512, 1, false);          /* done here */
	assert_int_equal(status_byte(f), VIRTIO_BLK_S_OK);
	/* a second request is posted but the source stops before the kick */
	memset(fake_gpa(f->m, DATA + 0x1000), 0x6b, 512);
	struct fake_buf b[3] = {
		{ HDR + 0x100, 16, false }, { DATA + 0x1000, 512, false }, { STATUS + 1, 1, true },
	};
	uint32_t t = htole32(VIRTIO_BLK_T_OUT);
	uint64_t s = htole64(8);
	memcpy(fake_gpa(f->m, HDR + 0x100), &t, 4);
	memcpy(fake_gpa(f->m, HDR + 0x108), &s, 8);
	uint16_t head2 = fake_vq_add(f->m, &f->q, b, 3);

	struct sbuf out, in;
	sbuf_init(&out);
	const struct fake_state *src = fake_state(f->m, "virtio-blk.0");
	assert_non_null(src);
	src->ops->save(src->dev, &out);

	/* the destination opens the image without the lock... */
	struct machine *m2 = fake_machine_create();
	struct virtio_dev *d2 = virtio_blk_create(m2, 0, f->path, false, false, NULL, true, err, sizeof(err));
	assert_non_null(d2);
	const struct fake_state *dst = fake_state(m2, "virtio-blk.0");
	assert_int_equal(dst->ops->acquire(dst->dev, &why), -1);    /* source holds it */
	assert_non_null(strstr(why, "in use by another process (locked)"));
	assert_int_equal(src->ops->release(src->dev, &why), 0);
	assert_int_equal(dst->ops->acquire(dst->dev, &why), 0);

	/* ...receives RAM and state, and carries on */
	memcpy(m2->ram, f->m->ram, FAKE_RAM_SIZE);
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(dst->ops->load(dst->dev, &in, dst->ops->version, &why), 0);
	assert_true(sbuf_done(&in));
	assert_int_equal(m2->irq[IRQ], 1);      /* the first completion's interrupt */
	assert_int_equal(fake_mmio_read(m2, BASE + VIRTIO_MMIO_STATUS, 4),
			 reg(f->m, VIRTIO_MMIO_STATUS));
	fake_vq_kick(m2, BASE, 0);
	uint16_t *used_idx = fake_gpa(m2, f->q.used + 2);
	assert_int_equal(le16toh(*used_idx), 2);    /* the first is not done again */
	assert_int_equal(*(uint8_t *)fake_gpa(m2, STATUS + 1), VIRTIO_BLK_S_OK);
	uint32_t id;
	memcpy(&id, fake_gpa(m2, f->q.used + 4 + 8), 4);
	assert_int_equal(le32toh(id), head2);
	file_sector(f, 8, sector);
	assert_int_equal(sector[0], 0x6b);
	file_sector(f, 7, sector);
	assert_int_equal(sector[0], 0x5a);

	/* a truncated stream, or another device, is refused */
	sbuf_reader(&in, out.data, out.len - 3);
	assert_int_equal(dst->ops->load(dst->dev, &in, dst->ops->version, &why), -1);
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(dst->ops->load(dst->dev, &in, 99, &why), -1);

	virtio_destroy(d2);
	fake_machine_destroy(m2);
	sbuf_free(&out);
}

static void state_refused_for_another_disk_size(void **state)
{
	struct fixture *f = *state;
	char err[256], path[64] = "/tmp/ferry-blk2-XXXXXX";
	const char *why = NULL;
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 4096), 0);
	close(fd);

	struct sbuf out, in;
	sbuf_init(&out);
	const struct fake_state *src = fake_state(f->m, "virtio-blk.0");
	src->ops->save(src->dev, &out);
	struct machine *m2 = fake_machine_create();
	struct virtio_dev *d2 = virtio_blk_create(m2, 0, path, false, false, NULL, true, err, sizeof(err));
	const struct fake_state *dst = fake_state(m2, "virtio-blk.0");
	sbuf_reader(&in, out.data, out.len);
	assert_int_equal(dst->ops->load(dst->dev, &in, dst->ops->version, &why), -1);
	assert_non_null(strstr(why, "configuration differs"));

	virtio_destroy(d2);
	fake_machine_destroy(m2);
	sbuf_free(&out);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(identifies_and_negotiates, setup, teardown),
		cmocka_unit_test_setup_teardown(write_then_read, setup, teardown),
		cmocka_unit_test_setup_teardown(indirect_chain, setup, teardown),
		cmocka_unit_test_setup_teardown(request_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(readonly_disk_refuses_writes, setup_ro, teardown),
		cmocka_unit_test_setup_teardown(buffer_outside_ram, setup, teardown),
		cmocka_unit_test_setup_teardown(chain_that_loops, setup, teardown),
		cmocka_unit_test_setup_teardown(indices_out_of_range, setup, teardown),
		cmocka_unit_test_setup_teardown(bad_layouts, setup, teardown),
		cmocka_unit_test_setup_teardown(ring_outside_ram, setup, teardown),
		cmocka_unit_test_setup_teardown(event_idx_suppresses_interrupts, setup_event_idx,
						teardown),
		cmocka_unit_test_setup_teardown(state_resumes_on_another_machine, setup, teardown),
		cmocka_unit_test_setup_teardown(state_refused_for_another_disk_size, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
