/*
 * fix_checksums.h - what both stream fuzzers do to a mutated input first.
 *
 * A random mutation almost always breaks a section's checksum, so the
 * reader would refuse it at the framing and the fuzzer would never get
 * past it. Recomputing the checksum of every section the framing reaches
 * lets mutations test what lies behind: section grammar and loaders (the
 * attacker's "stream edited with valid checksums").
 */
#ifndef FERRY_FUZZ_FIX_CHECKSUMS_H
#define FERRY_FUZZ_FIX_CHECKSUMS_H

#include <stddef.h>
#include <stdint.h>
#include <xxhash.h>

static inline uint64_t fuzz_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* After the stream's 16-byte header, each section is 16 bytes of type and
 * length (the length little-endian at +8), the payload, then the XXH64 of
 * those 16 bytes and the payload (docs/stream.md). */
static inline void fix_checksums(uint8_t *p, size_t len)
{
	size_t off = 16;
	while (off + 24 <= len) {
		uint64_t n = fuzz_le64(p + off + 8);
		if (n > len - off - 24)
			break;
		uint64_t sum = XXH64(p + off, 16 + (size_t)n, 0);
		for (int i = 0; i < 8; i++)
			p[off + 16 + n + (size_t)i] = (uint8_t)(sum >> (8 * i));
		off += 24 + (size_t)n;
	}
}

#endif
