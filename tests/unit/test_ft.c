/*
 * test_ft.c - the fault-tolerance stream's section order (ft_grammar.c).
 *
 * Each case writes sections named in a script after the sample
 * configuration (2 harts, devices uart and virtio-blk@10001000), reads them
 * back through the reader and the FT grammar, and checks that whole
 * epochs in sequence are accepted and that everything else is refused
 * with a reason: an epoch out of sequence, a new epoch inside one, pages
 * or state outside an epoch, an epoch missing state, post-copy in an
 * epoch, pages after an epoch's digest; guest writes (FT_WRITE) outside an
 * epoch's pages, outside their disk, or not whole sectors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "migrate/ft_grammar.h"
#include "migrate/stream.h"
#include "stream_sample.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#define BODY "cpu0 cpu1 uart blk clock digest end"

static int write_token(struct mig_stream *w, const char *t, const uint8_t *ram)
{
	static const uint8_t hart[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	if (!strcmp(t, "ram"))
		return mig_put_page(w, 1, ram + MIG_PAGE_SIZE) || mig_flush_pages(w);
	if (!strncmp(t, "epoch", 5)) {
		uint8_t num[8];
		uint64_t n = strtoull(t + 5, NULL, 10);
		for (int i = 0; i < 8; i++)
			num[i] = (uint8_t)(n >> (8 * i));
		return mig_write_section(w, MIG_SEC_EPOCH, num, 8);
	}
	if (!strncmp(t, "write", 5)) {       /* write, write@past, @disk1, @odd, @reserved */
		static uint8_t b[16 + 1024];
		const char *how = t[5] == '@' ? t + 6 : "";
		uint64_t off = !strcmp(how, "past") ? (1ull << 30) - 512 :
			       !strcmp(how, "odd") ? 4100 : 4096;
		memset(b, 0, sizeof(b));
		b[0] = !strcmp(how, "disk1");
		b[4] = !strcmp(how, "reserved");
		for (int i = 0; i < 8; i++)
			b[8 + i] = (uint8_t)(off >> (8 * i));
		return mig_write_section(w, MIG_SEC_FT_WRITE, b, sizeof(b));
	}
	if (!strncmp(t, "cpu", 3))
		return mig_write_cpu(w, (uint32_t)atoi(t + 3), 1, hart, sizeof(hart));
	if (!strcmp(t, "uart"))
		return mig_write_device(w, "uart", 1, "u", 1);
	if (!strcmp(t, "blk"))
		return mig_write_device(w, "virtio-blk@10001000", 2, NULL, 0);
	if (!strcmp(t, "clock"))
		return mig_write_clock(w, 42);
	if (!strcmp(t, "digest"))
		return mig_write_digest(w, 7);
	if (!strcmp(t, "postcopy"))
		return mig_write_section(w, MIG_SEC_POSTCOPY, "\xff", 1);
	if (!strcmp(t, "end"))
		return mig_write_end(w);
	if (!strcmp(t, "alive"))
		return mig_write_section(w, MIG_SEC_FT_ALIVE, NULL, 0);
	fail_msg("unknown token %s", t);
	return -1;
}

static uint8_t ram[SAMPLE_RAM];

/* The sample configuration, then the sections the script names, into fd. */
static void write_script(int fd, const char *script)
{
	struct mig_config cfg;
	struct mig_stream *w = mig_stream_new(fd);
	sample_config(&cfg);
	assert_int_equal(mig_write_config(w, &cfg), 0);
	char buf[1024], *save = NULL;
	snprintf(buf, sizeof(buf), "%s", script);
	sample_ram(ram);
	for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save))
		assert_int_equal(write_token(w, t, ram), 0);
	assert_int_equal(mig_flush(w), 0);
	mig_stream_free(w);
}

/* "" when every section was accepted, else the refusal. */
static const char *ft_run(const char *script, char *err, size_t errlen)
{
	int fd = memfd_create("ft", MFD_CLOEXEC);
	assert_true(fd >= 0);
	struct mig_config cfg;
	write_script(fd, script);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);

	struct mig_stream *r = mig_stream_new(fd);
	struct ft_grammar g;
	struct mig_section sec;
	err[0] = 0;
	assert_int_equal(mig_read_config(r, &cfg), 0);
	ft_grammar_init(&g, &cfg);
	while (mig_read_section(r, &sec, ram, SAMPLE_RAM) == 0)
		if (ft_grammar_step(&g, &sec, err, errlen))
			break;
	if (!err[0] && !strstr(mig_stream_error(r), "truncated"))
		snprintf(err, errlen, "%s", mig_stream_error(r));
	ft_grammar_free(&g);
	mig_stream_free(r);
	close(fd);
	return err;
}

static void assert_contains(const char *s, const char *part)
{
	if (!strstr(s, part))
		fail_msg("'%s' does not contain '%s'", s, part);
}

static void ft_accepts_epochs_in_sequence(void **state)
{
	(void)state;
	char err[512];
	assert_string_equal(ft_run("ram ram epoch1 ram " BODY " epoch2 " BODY
				   " epoch3 ram ram " BODY, err, sizeof(err)), "");
	assert_string_equal(ft_run("epoch1 " BODY, err, sizeof(err)), "");
	assert_string_equal(ft_run("ram ram", err, sizeof(err)), "");
}

static void ft_refuses_epochs_out_of_sequence(void **state)
{
	(void)state;
	char err[512];
	assert_contains(ft_run("epoch2 " BODY, err, sizeof(err)), "epoch 2");
	assert_contains(ft_run("epoch1 " BODY " epoch1 " BODY, err, sizeof(err)), "epoch 1");
	assert_contains(ft_run("epoch1 " BODY " epoch3 " BODY, err, sizeof(err)), "epoch 3");
	assert_contains(ft_run("epoch1 ram epoch2 " BODY, err, sizeof(err)),
			"the rest of the epoch");
}

static void ft_refuses_sections_outside_an_epoch(void **state)
{
	(void)state;
	char err[512];
	assert_contains(ft_run("epoch1 " BODY " ram", err, sizeof(err)), "outside an epoch");
	assert_contains(ft_run("cpu0 cpu1", err, sizeof(err)), "outside an epoch");
	assert_contains(ft_run("epoch1 " BODY " end", err, sizeof(err)), "outside an epoch");
}

static void ft_refuses_partial_or_odd_epochs(void **state)
{
	(void)state;
	char err[512];
	assert_contains(ft_run("epoch1 cpu0 uart blk clock digest end", err, sizeof(err)),
			"hart 1");
	assert_contains(ft_run("epoch1 cpu0 cpu1 uart blk clock postcopy end", err,
			       sizeof(err)), "post-copy");
	assert_contains(ft_run("epoch1 cpu0 cpu1 uart blk clock digest ram end", err,
			       sizeof(err)), "ram");
	assert_true(ft_run("epoch1 cpu0 cpu1 uart blk clock end", err, sizeof(err))[0]);
}

/* FT_ALIVE (the primary flushing the guest's disks) comes between
 * epochs only. */
static void ft_takes_alive_between_epochs_only(void **state)
{
	(void)state;
	char err[512];
	assert_string_equal(ft_run("ram alive epoch1 " BODY " alive alive epoch2 " BODY " alive",
				   err, sizeof(err)), "");
	assert_contains(ft_run("epoch1 ram alive " BODY, err, sizeof(err)), "ft-alive");
}

static void ft_places_guest_writes_among_an_epochs_pages(void **state)
{
	(void)state;
	char err[512];
	assert_string_equal(ft_run("ram epoch1 write ram write " BODY " epoch2 write " BODY,
				   err, sizeof(err)), "");
	assert_contains(ft_run("ram write", err, sizeof(err)), "outside an epoch");
	assert_contains(ft_run("epoch1 " BODY " write", err, sizeof(err)), "outside an epoch");
	assert_contains(ft_run("epoch1 cpu0 write", err, sizeof(err)), "state began");
	assert_contains(ft_run("epoch1 write@past", err, sizeof(err)), "overruns");
	assert_contains(ft_run("epoch1 write@disk1", err, sizeof(err)), "does not have");
	assert_contains(ft_run("epoch1 write@odd", err, sizeof(err)), "whole sectors");
	assert_contains(ft_run("epoch1 write@reserved", err, sizeof(err)), "reserved");
}

/* FERRY_STREAM_SEEDS=DIR: FT streams for the fuzzer's corpus (fuzz/run-short.sh),
 * their sizes with bit 2 set, which is how fuzz_stream picks the FT grammar. */
static int write_seeds(const char *dir)
{
	static const char *const seeds[][2] = {
		{ "ft-epochs", "ram epoch1 ram " BODY " epoch2 " BODY },
		{ "ft-writes", "ram epoch1 write ram write " BODY " epoch2 write " BODY },
		{ "ft-alive", "ram epoch1 write " BODY " alive alive epoch2 " BODY },
	};
	for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
		char path[512];
		snprintf(path, sizeof(path), "%s/%s", dir, seeds[i][0]);
		int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			perror(path);
			return 1;
		}
		write_script(fd, seeds[i][1]);
		static const uint8_t pad[8];
		off_t size = lseek(fd, 0, SEEK_END);
		if (!(size & 4) && write(fd, pad, 4) != 4) {
			perror(path);
			return 1;
		}
		close(fd);
	}
	return 0;
}

int main(void)
{
	const char *seed_dir = getenv("FERRY_STREAM_SEEDS");
	if (seed_dir)
		return write_seeds(seed_dir);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(ft_accepts_epochs_in_sequence),
		cmocka_unit_test(ft_refuses_epochs_out_of_sequence),
		cmocka_unit_test(ft_refuses_sections_outside_an_epoch),
		cmocka_unit_test(ft_refuses_partial_or_odd_epochs),
		cmocka_unit_test(ft_takes_alive_between_epochs_only),
		cmocka_unit_test(ft_places_guest_writes_among_an_epochs_pages),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
