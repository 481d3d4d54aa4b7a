/*
 * tcp.c - the TCP endpoints every migration channel starts from.
 *
 * Live migration, fault-tolerance checkpoints and their destinations all
 * speak "tcp:HOST:PORT" (HOST may be [v6]). This file parses that, tunes a
 * socket for migration traffic, connects to the first address that
 * answers and listens on one. Securing the connection (TLS, the secret)
 * is channel.c's business; sizing windows for long links is window.c's.
 */
#include "migrate/migration.h"
#include "migrate/stream.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int mig_parse_tcp(const char *uri, char *host, size_t hostlen, char *port, size_t portlen)
{
	if (strncmp(uri, "tcp:", 4))
		return -1;
	const char *h = uri + 4;
	const char *colon = strrchr(h, ':');
	if (!colon || colon == h || !colon[1])
		return -1;
	size_t n = (size_t)(colon - h);
	if (h[0] == '[' && n >= 2 && h[n - 1] == ']') {
		h++;
		n -= 2;
	}
	if (n >= hostlen || strlen(colon + 1) >= portlen)
		return -1;
	memcpy(host, h, n);
	host[n] = 0;
	strcpy(port, colon + 1);
	return 0;
}

void mig_socket_tune(int fd)
{
	int one = 1;
	struct timeval tv = { MIG_IO_TIMEOUT_S, 0 };
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	/* Small socket buffers on purpose: what the source has written must
	 * be close to what the destination has applied, or the bandwidth it
	 * measures is the buffers' and the switchover waits for a backlog.
	 * window.c widens them on a link whose round trip needs more. */
	int buf = 256 << 10;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

static int bad_uri(const char *uri, char *err, size_t errlen)
{
	snprintf(err, errlen, "bad uri '%s': want tcp:HOST:PORT", uri);
	return -1;
}

/* For benchmarks: FERRY_TEST_FLOW_MBPS=N paces every connection we open
 * to N Mbit/s (SO_MAX_PACING_RATE, TCP's own pacing), as a network that
 * shapes each flow would (bench/channels.py). */
static void test_flow_cap(int fd)
{
	const char *mbps = getenv("FERRY_TEST_FLOW_MBPS");
	unsigned long long bps = mbps ? strtoull(mbps, NULL, 10) * 1000000 / 8 : 0;
	if (bps)
		setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &bps, sizeof(bps));
}

int mig_tcp_connect(const char *uri, char *host, size_t hostlen, char *err, size_t errlen)
{
	char port[32];
	if (mig_parse_tcp(uri, host, hostlen, port, sizeof(port)))
		return bad_uri(uri, err, errlen);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	int r = getaddrinfo(host, port, &hints, &ai);
	if (r) {
		snprintf(err, errlen, "%s: %s", uri, gai_strerror(r));
		return -1;
	}
	int fd = -1, last = 0;
	for (struct addrinfo *a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		mig_socket_tune(fd);
		test_flow_cap(fd);
		if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
			break;
		last = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		snprintf(err, errlen, "cannot connect to %s: %s", uri, strerror(last));
	return fd;
}

int mig_tcp_listen(const char *uri, char *err, size_t errlen)
{
	char host[256], port[32];
	if (mig_parse_tcp(uri, host, sizeof(host), port, sizeof(port)))
		return bad_uri(uri, err, errlen);
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	int r = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
	if (r) {
		snprintf(err, errlen, "%s: %s", uri, gai_strerror(r));
		return -1;
	}
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
	int one = 1;
	if (fd >= 0)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* room for a migration's page channels, which connect all at once
	 * (a full backlog drops a SYN: a second's retransmit) */
	if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) ||
	    listen(fd, MIG_CHANNELS_MAX + 2)) {
		snprintf(err, errlen, "cannot listen on %s: %s", uri, strerror(errno));
		if (fd >= 0)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	return fd;
}
