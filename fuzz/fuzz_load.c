/*
 * fuzz_load.c - libFuzzer target: arbitrary bytes restored into a machine.
 *
 * Where fuzz_stream.c stops at the stream library, this one goes on the
 * way `--incoming file:` does: the configuration checked against a real
 * board (16 MiB, 2 harts, CLINT, PLIC, UART, virtio console and rng), the
 * section grammar (grammar.c), and every CPU and device loader
 * (hart_load, the devices' load functions) on the state records. Each
 * input runs as it is and again with its section checksums recomputed, so
 * the fuzzer reaches the loaders, not only the checksum test. The board
 * is built once and reused: loaders must accept any state over any other.
 *
 * Seed: FERRY_FUZZ_WRITE_SEED=FILE makes the target write a valid stream
 * of its own board (a few pages, every state record) to FILE and exit;
 * fuzz/run-short.sh does that before fuzzing.
 */
#include "fix_checksums.h"
#include "machine/clint.h"
#include "machine/devices.h"
#include "machine/vm.h"
#include "migrate/migrate.h"
#include "migrate/migration.h"
#include "migrate/stream.h"
#include "vmm.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

static struct vmm vmm;
static int fd = -1;

static void build_board(void)
{
	char err[256];
	struct machine *m = machine_create(16, 2, err, sizeof(err));
	if (!m || clint_create(m) || !uart_create(m, -1, -1) ||
	    !virtio_console_create(m, 0, -1, -1) || !virtio_rng_create(m, 1)) {
		fprintf(stderr, "fuzz_load: cannot build the board: %s\n", err);
		abort();
	}
	vmm.machine = m;
}

/* A valid saved stream of this board, as `save` writes it. */
static void write_seed(const char *path)
{
	int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	struct mig_config cfg;
	struct machine *m = vmm.machine;
	if (out < 0)
		abort();
	for (unsigned i = 0; i < 64; i++)
		m->ram[4096 * 3 + i] = (uint8_t)i;
	vmstate_config(&vmm, &cfg);
	struct mig_stream *s = mig_stream_new(out);
	int r = mig_write_config(s, &cfg);
	for (uint64_t pfn = 0; pfn < 8 && !r; pfn++)
		r = mig_put_page(s, pfn, m->ram + pfn * 4096);
	r = r || mig_flush_pages(s) || vmstate_send(m, s) ||
	    mig_write_digest(s, mig_ram_digest(m->ram, m->ram_size)) || mig_write_end(s) ||
	    mig_flush(s);
	mig_stream_free(s);
	close(out);
	if (r)
		abort();
	/* the seed must get through every loader, or fuzzing starts short */
	char err[1024];
	int in = open(path, O_RDONLY | O_CLOEXEC);
	s = mig_stream_new(in);
	if (mig_restore_state(&vmm, s, err, sizeof(err))) {
		fprintf(stderr, "fuzz_load: the seed does not restore: %s\n", err);
		abort();
	}
	mig_stream_free(s);
	close(in);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	build_board();
	const char *seed = getenv("FERRY_FUZZ_WRITE_SEED");
	if (seed) {
		write_seed(seed);
		exit(0);
	}
	fd = memfd_create("fuzz-load", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	return 0;
}

static void restore(const uint8_t *data, size_t size)
{
	char err[1024];
	if (ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size ||
	    lseek(fd, 0, SEEK_SET))
		abort();
	struct mig_stream *s = mig_stream_new(fd);
	err[0] = 0;
	if (mig_restore_state(&vmm, s, err, sizeof(err)) && !err[0])
		abort();        /* a failure always says why */
	mig_stream_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (4u << 20))
		return 0;
	restore(data, size);
	uint8_t *copy = malloc(size ? size : 1);
	if (!copy)
		abort();
	memcpy(copy, data, size);
	fix_checksums(copy, size);
	if (memcmp(copy, data, size))
		restore(copy, size);
	free(copy);
	return 0;
}
