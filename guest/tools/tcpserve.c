/*
 * tcpserve.c - a small TCP server for the network-migration tests.
 *
 *   tcpserve [--port N] [--echo | --sink]
 *
 * --echo (the default) sends every byte back as it arrives, so a client
 * that sends a sequence-numbered stream and checks what comes back sees
 * any loss, duplication or reordering across a migration. --sink reads
 * until the client shuts down its sending side, keeping a running FNV-1a
 * checksum, then answers one line "bytes N fnv1a 0xHHHHHHHHHHHHHHHH" and
 * closes.
 *
 * One forked child serves each connection, so a stuck client blocks no one;
 * SIGCHLD is ignored so children are reaped by the kernel. Every accepted
 * and finished connection is logged on stdout ("tcpserve: ...").
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_BYTES	65536

struct tcpserve_conn {
	int fd;
	char peer[64];
	uint64_t bytes;
};

static bool tcpserve_write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		buf += n;
		len -= n;
	}
	return true;
}

/* Read some bytes; 0 at end of stream, -1 on error (errno set). */
static ssize_t tcpserve_read(int fd, char *buf, size_t len)
{
	ssize_t n;

	do
		n = read(fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n;
}

static int tcpserve_echo(struct tcpserve_conn *c)
{
	static char buf[BUF_BYTES];
	ssize_t n;

	while ((n = tcpserve_read(c->fd, buf, sizeof(buf))) > 0) {
		if (!tcpserve_write_all(c->fd, buf, n))
			return -1;
		c->bytes += n;
	}
	return n < 0 ? -1 : 0;
}

static int tcpserve_sink(struct tcpserve_conn *c)
{
	static char buf[BUF_BYTES];
	uint64_t sum = 0xcbf29ce484222325ull;
	char line[80];
	ssize_t n;
	int len;

	while ((n = tcpserve_read(c->fd, buf, sizeof(buf))) > 0) {
		for (ssize_t i = 0; i < n; i++)
			sum = (sum ^ (unsigned char)buf[i]) * 0x100000001b3ull;
		c->bytes += n;
	}
	if (n < 0)
		return -1;
	len = snprintf(line, sizeof(line), "bytes %" PRIu64 " fnv1a 0x%016" PRIx64 "\n",
		       c->bytes, sum);
	printf("tcpserve: %s %s", c->peer, line);
	fflush(stdout);
	return tcpserve_write_all(c->fd, line, len) ? 0 : -1;
}

static void __attribute__((noreturn)) tcpserve_child(struct tcpserve_conn *c,
						      bool sink)
{
	int rc = sink ? tcpserve_sink(c) : tcpserve_echo(c);

	if (rc < 0)
		printf("tcpserve: %s failed after %" PRIu64 " bytes: %s\n", c->peer,
		       c->bytes, strerror(errno));
	else
		printf("tcpserve: %s closed after %" PRIu64 " bytes\n", c->peer,
		       c->bytes);
	fflush(stdout);
	_exit(rc < 0);
}

static int tcpserve_listen(int port)
{
	struct sockaddr_in sin = {
		.sin_family = AF_INET,
		.sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_ANY),
	};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		fprintf(stderr, "tcpserve: socket: %s\n", strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, 16) < 0) {
		fprintf(stderr, "tcpserve: cannot listen on port %d: %s\n", port,
			strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static void tcpserve_usage(FILE *f)
{
	fprintf(f, "usage: tcpserve [--port N] [--echo | --sink]\n"
		   "Serve TCP on port N (default 7000): --echo sends bytes back,\n"
		   "--sink answers \"bytes N fnv1a 0xH\" once the client shuts down writing.\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "echo", no_argument, NULL, 'e' },
		{ "sink", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	bool sink = false;
	long port = 7000;
	char *end;
	int lfd, c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'p':
			port = strtol(optarg, &end, 10);
			if (end == optarg || *end || port < 1 || port > 65535) {
				fprintf(stderr, "tcpserve: bad --port '%s': want 1-65535\n",
					optarg);
				return 2;
			}
			break;
		case 'e':
			sink = false;
			break;
		case 's':
			sink = true;
			break;
		case 'h':
			tcpserve_usage(stdout);
			return 0;
		default:
			tcpserve_usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tcpserve: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	signal(SIGCHLD, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	lfd = tcpserve_listen(port);
	if (lfd < 0)
		return 1;
	printf("tcpserve: listening on port %ld (%s)\n", port, sink ? "sink" : "echo");
	fflush(stdout);
	for (;;) {
		struct sockaddr_in peer;
		socklen_t plen = sizeof(peer);
		struct tcpserve_conn conn = { 0 };
		pid_t pid;

		conn.fd = accept(lfd, (struct sockaddr *)&peer, &plen);
		if (conn.fd < 0) {
			if (errno != EINTR && errno != ECONNABORTED) {
				fprintf(stderr, "tcpserve: accept: %s\n", strerror(errno));
				sleep(1);
			}
			continue;
		}
		snprintf(conn.peer, sizeof(conn.peer), "%s:%u",
			 inet_ntoa(peer.sin_addr), ntohs(peer.sin_port));
		printf("tcpserve: connection from %s\n", conn.peer);
		fflush(stdout);
		pid = fork();
		if (pid == 0) {
			close(lfd);
			tcpserve_child(&conn, sink);
		}
		if (pid < 0)
			fprintf(stderr, "tcpserve: cannot fork for %s: %s\n", conn.peer,
				strerror(errno));
		close(conn.fd);
	}
}
