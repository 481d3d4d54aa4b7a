/*
 * udpcount.c - a guest program for the fault-tolerance tests: a counter
 * whose every value goes out as one UDP datagram.
 *
 *   udpcount HOST PORT [PER_SECOND]
 *
 * Datagram k carries "udpcount K\n" with K = 1, 2, 3, ... (PER_SECOND of
 * them a second, default 1000). The counter lives only in guest memory, so
 * after a failover the secondary goes on from the value of the epoch it
 * resumed; unlike TCP, UDP hides nothing from the receiver: if output of
 * an epoch the secondary never got had been released, the receiver would
 * see numbers repeat. Built static for riscv64 by tests/integration/
 * test_ft.py and put into an initramfs with guest/mkinitrd.sh.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: udpcount HOST PORT [PER_SECOND]\n");
		return 2;
	}
	struct sockaddr_in to = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)atoi(argv[2])) };
	if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
		fprintf(stderr, "udpcount: bad address %s\n", argv[1]);
		return 2;
	}
	long rate = argc > 3 ? atol(argv[3]) : 1000;
	if (rate < 1)
		rate = 1;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("udpcount: socket");
		return 1;
	}
	printf("udpcount: sending to %s port %s\n", argv[1], argv[2]);
	fflush(stdout);
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (uint64_t k = 1;; k++) {
		char msg[64];
		int n = snprintf(msg, sizeof(msg), "udpcount %" PRIu64 "\n", k);
		sendto(fd, msg, (size_t)n, 0, (struct sockaddr *)&to, sizeof(to));
		next.tv_nsec += 1000000000L / rate;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_sec++;
			next.tv_nsec -= 1000000000L;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
	}
}
