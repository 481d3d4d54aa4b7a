/*
 * test_channel.c - the secret exchange of a migration channel, over
 * socketpairs: both sides prove the secret; a wrong secret, a replayed
 * answer, a destination that does not ask, garbage and silence are all
 * refused within the time limit; `quit` (the cancel descriptor) stops a
 * wait at once; a wrapped fd reads and writes as before. TLS needs
 * certificates and is tested end to end in tests/integration/test_channel.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "migrate/channel.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WAIT_MS 2000

static struct mig_secret make_secret(const char *text)
{
	struct mig_secret k = { .len = strlen(text) };
	memcpy(k.key, text, k.len);
	return k;
}

struct side {
	int fd;
	struct mig_auth auth;
	int cancel_fd;
	int timeout_ms;
	struct mig_channel *ch;
	char err[512];
};

static void *run_server(void *arg)
{
	struct side *sd = arg;
	sd->ch = mig_channel_server(sd->fd, &sd->auth, sd->timeout_ms, sd->cancel_fd, sd->err,
				    sizeof(sd->err));
	return NULL;
}

static void *run_client(void *arg)
{
	struct side *sd = arg;
	sd->ch = mig_channel_client(sd->fd, "localhost", &sd->auth, sd->timeout_ms, sd->err,
				    sizeof(sd->err));
	return NULL;
}

/* Both sides at once over a socketpair; the caller closes the channels. */
static void exchange(struct side *server, struct side *client)
{
	int sv[2];
	pthread_t t;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	server->fd = sv[0];
	client->fd = sv[1];
	if (!server->timeout_ms)
		server->timeout_ms = WAIT_MS;
	if (!client->timeout_ms)
		client->timeout_ms = WAIT_MS;
	server->cancel_fd = server->cancel_fd ? server->cancel_fd : -1;
	assert_int_equal(pthread_create(&t, NULL, run_server, server), 0);
	run_client(client);
	pthread_join(t, NULL);
}

static void assert_contains(const char *text, const char *want)
{
	if (!strstr(text, want))
		fail_msg("\"%s\" does not contain \"%s\"", text, want);
}

static void same_secret_proves_both_ways(void **state)
{
	(void)state;
	struct mig_secret k = make_secret("a secret of some length");
	struct side s = { .auth = { NULL, &k } }, c = { .auth = { NULL, &k } };
	exchange(&s, &c);
	assert_non_null(s.ch);
	assert_non_null(c.ch);
	/* the channel carries bytes afterwards */
	struct iovec iov = { "hello", 5 };
	char buf[8] = "";
	assert_int_equal(mig_channel_writev(c.ch, &iov, 1), 5);
	assert_int_equal(mig_channel_read(s.ch, buf, sizeof(buf)), 5);
	assert_memory_equal(buf, "hello", 5);
	mig_channel_close(s.ch);
	mig_channel_close(c.ch);
}

static void wrong_secret_is_refused_by_both(void **state)
{
	(void)state;
	struct mig_secret a = make_secret("the destination's secret");
	struct mig_secret b = make_secret("a source's other secret!");
	struct side s = { .auth = { NULL, &a } }, c = { .auth = { NULL, &b } };
	exchange(&s, &c);
	assert_null(s.ch);
	assert_null(c.ch);
	assert_contains(s.err, "does not know the secret");
	assert_contains(c.err, "refused the secret");
}

static void source_without_secret_gets_nothing(void **state)
{
	(void)state;
	struct mig_secret a = make_secret("the destination's secret");
	struct side s = { .auth = { NULL, &a }, .timeout_ms = 300 }, c = { .auth = { NULL, NULL } };
	exchange(&s, &c);
	/* a plain client succeeds at once (no exchange on its side) but the
	 * server waits for a proof that never comes */
	assert_non_null(c.ch);
	assert_null(s.ch);
	assert_contains(s.err, "did not answer in time");
	mig_channel_close(c.ch);
}

static void destination_that_does_not_ask_is_refused(void **state)
{
	(void)state;
	struct mig_secret k = make_secret("the source's secret here");
	int sv[2];
	char err[512];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	/* what a destination without the secret sends first: its stream */
	assert_int_equal(write(sv[0], "FERRYMIG\1\0\0\0\0\0\0\0" "0123456789abcdef0123456789abcdef",
			       48), 48);
	struct mig_auth auth = { NULL, &k };
	assert_null(mig_channel_client(sv[1], "localhost", &auth, WAIT_MS, err, sizeof(err)));
	assert_contains(err, "does not ask for the secret");
	close(sv[0]);
}

/* Play a destination by hand: send a challenge, return the answer. */
static void record_answer(const struct mig_secret *k, uint8_t answer[64])
{
	int sv[2];
	struct side c = { .auth = { NULL, k }, .timeout_ms = 500 };
	pthread_t t;
	uint8_t hello[48] = "FERRYKEY\1\0\0\0\0\0\0\0";
	for (int i = 16; i < 48; i++)
		hello[i] = (uint8_t)(i * 7);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	c.fd = sv[1];
	assert_int_equal(write(sv[0], hello, sizeof(hello)), 48);
	assert_int_equal(pthread_create(&t, NULL, run_client, &c), 0);
	size_t got = 0;
	while (got < 64) {
		ssize_t r = read(sv[0], answer + got, 64 - got);
		assert_true(r > 0);
		got += (size_t)r;
	}
	close(sv[0]);           /* no proof back: the client gives up */
	pthread_join(t, NULL);
	assert_null(c.ch);
}

static void replayed_answer_is_refused(void **state)
{
	(void)state;
	struct mig_secret k = make_secret("the shared secret, 32 bytes long");
	uint8_t answer[64], hello[48];
	char err[512];
	record_answer(&k, answer);
	/* replay the recorded answer to a real destination: its nonce is new */
	int sv[2];
	struct side s = { .auth = { NULL, &k }, .timeout_ms = WAIT_MS, .cancel_fd = -1 };
	pthread_t t;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	s.fd = sv[0];
	assert_int_equal(pthread_create(&t, NULL, run_server, &s), 0);
	size_t got = 0;
	while (got < sizeof(hello)) {
		ssize_t r = read(sv[1], hello + got, sizeof(hello) - got);
		assert_true(r > 0);
		got += (size_t)r;
	}
	assert_memory_equal(hello, "FERRYKEY", 8);
	assert_int_equal(write(sv[1], answer, sizeof(answer)), 64);
	pthread_join(t, NULL);
	assert_null(s.ch);
	assert_contains(s.err, "does not know the secret");
	/* and nothing but the challenge came back */
	assert_int_equal(read(sv[1], err, sizeof(err)), 0);
	close(sv[1]);
}

static void garbage_and_silence_end_in_time(void **state)
{
	(void)state;
	struct mig_secret k = make_secret("the destination's secret");
	char err[512];
	int sv[2];
	/* garbage: refused as soon as it is read */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	static uint8_t junk[4096];
	memset(junk, 0x5a, sizeof(junk));
	assert_int_equal(write(sv[1], junk, sizeof(junk)), (ssize_t)sizeof(junk));
	struct mig_auth auth = { NULL, &k };
	assert_null(mig_channel_server(sv[0], &auth, WAIT_MS, -1, err, sizeof(err)));
	assert_contains(err, "does not know the secret");
	close(sv[1]);
	/* silence: given up at the time limit (a hang would time the test out) */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_null(mig_channel_server(sv[0], &auth, 300, -1, err, sizeof(err)));
	assert_contains(err, "did not answer in time");
	close(sv[1]);
}

static void cancel_descriptor_stops_the_wait(void **state)
{
	(void)state;
	struct mig_secret k = make_secret("the destination's secret");
	char err[512];
	int sv[2], quit[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(pipe(quit), 0);
	assert_int_equal(write(quit[1], "q", 1), 1);
	struct mig_auth auth = { NULL, &k };
	/* with an hour to answer: only the cancel descriptor ends this */
	assert_null(mig_channel_server(sv[0], &auth, 3600000, quit[0], err, sizeof(err)));
	assert_contains(err, "Operation canceled");
	/* a wrapped fd with the cancel descriptor: reads fail with ECANCELED */
	struct mig_channel *c = mig_channel_wrap(sv[1]);
	mig_channel_set_cancel_fd(c, quit[0]);
	char b;
	assert_int_equal(mig_channel_read(c, &b, 1), -1);
	assert_int_equal(errno, ECANCELED);
	mig_channel_close(c);
	close(sv[1]);
	close(quit[0]);
	close(quit[1]);
}

static void secret_files(void **state)
{
	(void)state;
	char path[] = "/tmp/ferry-secret-XXXXXX", err[512];
	struct mig_secret k;
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "0123456789abcdef\n", 17), 17);
	assert_int_equal(mig_secret_load(path, &k, err, sizeof(err)), 0);
	assert_int_equal(k.len, 16);          /* the newline is not part of it */
	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(pwrite(fd, "short\n", 6, 0), 6);
	assert_int_equal(mig_secret_load(path, &k, err, sizeof(err)), -1);
	assert_contains(err, "5 bytes");
	close(fd);
	unlink(path);
	assert_int_equal(mig_secret_load(path, &k, err, sizeof(err)), -1);
	assert_contains(err, "No such file");
}

static void tls_credentials_need_the_ca(void **state)
{
	(void)state;
	char dir[] = "/tmp/ferry-tls-XXXXXX", err[512];
	assert_non_null(mkdtemp(dir));
	assert_null(mig_tls_load(dir, err, sizeof(err)));
	assert_contains(err, "ca-cert.pem");
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(same_secret_proves_both_ways),
		cmocka_unit_test(wrong_secret_is_refused_by_both),
		cmocka_unit_test(source_without_secret_gets_nothing),
		cmocka_unit_test(destination_that_does_not_ask_is_refused),
		cmocka_unit_test(replayed_answer_is_refused),
		cmocka_unit_test(garbage_and_silence_end_in_time),
		cmocka_unit_test(cancel_descriptor_stops_the_wait),
		cmocka_unit_test(secret_files),
		cmocka_unit_test(tls_credentials_need_the_ca),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
