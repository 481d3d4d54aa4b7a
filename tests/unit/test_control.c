/*
 * test_control.c - the control socket server, from the outside: a real
 * server on a socket in a temporary directory, with a few fake commands,
 * and clients that speak to it over plain sockets.
 *
 * Every test gets a fresh server. Reads carry a generous receive timeout
 * only so that a broken server fails a test instead of hanging it; no test
 * measures time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "control/control.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define GUARD_SECONDS 30

/* ---- the server under test ----------------------------------------------------- */

struct fixture {
	char dir[64];
	char path[96];
	struct control *c;
	atomic_int count;      /* how many times "count" ran */
};

static json_t *fake_echo(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	(void)ctx; (void)cls; (void)err; (void)errlen;
	return json_deep_copy(args);
}

static json_t *fake_count(void *ctx, json_t *args, const char **cls, char *err,
			  size_t errlen)
{
	struct fixture *f = ctx;
	(void)args; (void)cls; (void)err; (void)errlen;
	return json_pack("{s:i}", "count", atomic_fetch_add(&f->count, 1) + 1);
}

static json_t *fake_fail(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	(void)ctx; (void)args;
	*cls = "DeviceNotActive";
	snprintf(err, errlen, "the frobnicator is not active");
	return NULL;
}

static json_t *fake_silent_fail(void *ctx, json_t *args, const char **cls, char *err,
				size_t errlen)
{
	(void)ctx; (void)args; (void)cls; (void)err; (void)errlen;
	return NULL;
}

static json_t *fake_emit(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct fixture *f = ctx;
	(void)cls; (void)err; (void)errlen;
	control_event(f->c, "EMITTED", json_deep_copy(args));
	return json_object();
}

static json_t *fake_bye(void *ctx, json_t *args, const char **cls, char *err, size_t errlen)
{
	struct fixture *f = ctx;
	(void)args; (void)cls; (void)err; (void)errlen;
	control_close_after_reply(f->c);
	return json_pack("{s:s}", "bye", "now");
}

static const struct control_cmd fake_cmds[] = {
	{ "echo", fake_echo },
	{ "count", fake_count },
	{ "fail", fake_fail },
	{ "silent-fail", fake_silent_fail },
	{ "emit", fake_emit },
	{ "bye", fake_bye },
	{ NULL, NULL },
};

static int server_up(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	strcpy(f->dir, "/tmp/ferry-test-control-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/ctl.sock", f->dir);
	char err[512] = "";
	f->c = control_start(f->path, fake_cmds, f, err, sizeof(err));
	if (!f->c)
		fail_msg("control_start: %s", err);
	*state = f;
	return 0;
}

static int server_down(void **state)
{
	struct fixture *f = *state;
	if (f->c)
		control_stop(f->c);
	char other[96];
	snprintf(other, sizeof(other), "%s/other", f->dir);
	unlink(other);
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

/* ---- a client ---------------------------------------------------------------- */

struct conn {
	int fd;
	size_t len;
	char buf[256 * 1024];
};

static int unix_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = { .tv_sec = GUARD_SECONDS };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Connects without reading the greeting. */
static struct conn *conn_raw(struct fixture *f)
{
	struct conn *k = calloc(1, sizeof(*k));
	assert_non_null(k);
	k->fd = unix_connect(f->path);
	assert_true(k->fd >= 0);
	return k;
}

static void conn_close(struct conn *k)
{
	close(k->fd);
	free(k);
}

/* The next line without its newline (malloc'd), or NULL at end of file. */
static char *conn_line(struct conn *k)
{
	for (;;) {
		char *nl = memchr(k->buf, '\n', k->len);
		if (nl) {
			size_t n = (size_t)(nl - k->buf);
			char *line = strndup(k->buf, n);
			memmove(k->buf, nl + 1, k->len - n - 1);
			k->len -= n + 1;
			return line;
		}
		assert_true(k->len < sizeof(k->buf));
		ssize_t r = recv(k->fd, k->buf + k->len, sizeof(k->buf) - k->len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			fail_msg("no line from the server in %d s", GUARD_SECONDS);
		if (r <= 0)
			return NULL;
		k->len += (size_t)r;
	}
}

static json_t *conn_json(struct conn *k)
{
	char *line = conn_line(k);
	if (!line)
		fail_msg("the server closed the connection instead of answering");
	json_error_t jerr;
	json_t *v = json_loads(line, 0, &jerr);
	if (!v)
		fail_msg("the server sent a line that is not JSON (%s): %.200s", jerr.text, line);
	free(line);
	return v;
}

/* True when the server closed this connection (after what it sent). */
static bool conn_at_eof(struct conn *k)
{
	for (;;) {
		char *line = conn_line(k);
		if (!line)
			return true;
		free(line);
	}
}

static void conn_send_bytes(struct conn *k, const char *s, size_t n)
{
	while (n) {
		ssize_t w = send(k->fd, s, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		assert_true(w > 0);
		s += w;
		n -= (size_t)w;
	}
}

static void conn_send(struct conn *k, const char *s)
{
	conn_send_bytes(k, s, strlen(s));
}

/* Connects and checks the greeting. */
static struct conn *conn_open(struct fixture *f)
{
	struct conn *k = conn_raw(f);
	json_t *hello = conn_json(k);
	assert_non_null(json_object_get(hello, "QMP"));
	json_decref(hello);
	return k;
}

/* Sends one line and returns the next line received, parsed. */
static json_t *conn_cmd(struct conn *k, const char *line)
{
	conn_send(k, line);
	conn_send(k, "\n");
	return conn_json(k);
}

static void assert_error_class(json_t *reply, const char *cls)
{
	json_t *e = json_object_get(reply, "error");
	if (!e) {
		char *s = json_dumps(reply, JSON_COMPACT);
		fail_msg("expected an error of class %s, got %s", cls, s);
	}
	assert_string_equal(json_string_value(json_object_get(e, "class")), cls);
	const char *desc = json_string_value(json_object_get(e, "desc"));
	assert_non_null(desc);
	assert_true(strlen(desc) > 10);
	assert_null(json_object_get(reply, "return"));
}

/* The "count" command still answers on this connection, with n. */
static void assert_counts(struct conn *k, int n)
{
	json_t *r = conn_cmd(k, "{\"execute\":\"count\"}");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "return"),
							    "count")), n);
	json_decref(r);
}

/* ---- tests ------------------------------------------------------------------- */

static void greeting_comes_first(void **state)
{
	struct conn *k = conn_raw(*state);
	char *line = conn_line(k);
	assert_non_null(line);
	assert_string_equal(line, "{\"QMP\":{\"version\":{\"ferry\":\"" FERRY_VERSION
			    "\"},\"capabilities\":[]}}");
	free(line);
	conn_close(k);
}

static void good_commands_answer(void **state)
{
	struct conn *k = conn_open(*state);
	json_t *r = conn_cmd(k, "{\"execute\":\"qmp_capabilities\"}");
	char *s = json_dumps(r, JSON_COMPACT);
	assert_string_equal(s, "{\"return\":{}}");
	free(s);
	json_decref(r);

	r = conn_cmd(k, "{\"execute\":\"echo\",\"arguments\":{\"a\":1,\"b\":[true,\"x\"]}}");
	json_t *want = json_pack("{s:i, s:[b,s]}", "a", 1, "b", 1, "x");
	assert_true(json_equal(json_object_get(r, "return"), want));
	assert_int_equal(json_object_size(r), 1);
	json_decref(want);
	json_decref(r);

	/* no "arguments": the handler sees an empty object */
	r = conn_cmd(k, "{\"execute\":\"echo\"}");
	assert_true(json_is_object(json_object_get(r, "return")));
	assert_int_equal(json_object_size(json_object_get(r, "return")), 0);
	json_decref(r);
	assert_counts(k, 1);
	assert_counts(k, 2);
	conn_close(k);
}

static void query_commands_lists_all(void **state)
{
	struct conn *k = conn_open(*state);
	json_t *r = conn_cmd(k, "{\"execute\":\"query-commands\"}");
	json_t *list = json_object_get(r, "return");
	assert_true(json_is_array(list));
	const char *want[] = { "qmp_capabilities", "query-commands", "echo", "count", "fail",
			       "silent-fail", "emit", "bye" };
	assert_int_equal(json_array_size(list), sizeof(want) / sizeof(want[0]));
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		bool found = false;
		size_t j;
		json_t *item;
		json_array_foreach(list, j, item)
			if (!strcmp(json_string_value(json_object_get(item, "name")), want[i]))
				found = true;
		if (!found)
			fail_msg("query-commands does not list %s", want[i]);
	}
	json_decref(r);
	conn_close(k);
}

static void failing_commands_report_their_class(void **state)
{
	struct conn *k = conn_open(*state);
	json_t *r = conn_cmd(k, "{\"execute\":\"fail\"}");
	assert_error_class(r, "DeviceNotActive");
	assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"),
							      "desc")),
			    "the frobnicator is not active");
	json_decref(r);
	r = conn_cmd(k, "{\"execute\":\"silent-fail\"}");
	assert_error_class(r, "GenericError");
	json_decref(r);
	assert_counts(k, 1);
	conn_close(k);
}

static void malformed_requests_get_one_error_each(void **state)
{
	static const struct {
		const char *line;
		const char *cls;
	} cases[] = {
		{ "not json at all", "GenericError" },
		{ "{\"execute\":", "GenericError" },
		{ "{\"execute\":\"echo\"} {\"execute\":\"echo\"}", "GenericError" },
		{ "{\"execute\":\"\xff\xfe\"}", "GenericError" },
		{ "[\"execute\",\"echo\"]", "GenericError" },
		{ "42", "GenericError" },
		{ "\"execute\"", "GenericError" },
		{ "null", "GenericError" },
		{ "{}", "GenericError" },
		{ "{\"arguments\":{}}", "GenericError" },
		{ "{\"execute\":42}", "GenericError" },
		{ "{\"execute\":null}", "GenericError" },
		{ "{\"execute\":{\"name\":\"echo\"}}", "GenericError" },
		{ "{\"execute\":\"echo\",\"arguments\":[1]}", "GenericError" },
		{ "{\"execute\":\"echo\",\"arguments\":\"a=1\"}", "GenericError" },
		{ "{\"execute\":\"echo\",\"arguments\":null}", "GenericError" },
		{ "{\"execute\":\"echo\",\"argument\":{}}", "GenericError" },
		{ "{\"execute\":\"echo\",\"execute\":\"count\"}", "GenericError" },
		{ "{\"execute\":\"no-such-command\"}", "CommandNotFound" },
		{ "{\"execute\":\"\"}", "CommandNotFound" },
	};
	struct conn *k = conn_open(*state);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		/* the bad line and a good one at once: exactly one error comes
		 * back, then the good reply, on the same connection */
		conn_send(k, cases[i].line);
		conn_send(k, "\n{\"execute\":\"count\",\"id\":\"after\"}\n");
		json_t *r = conn_json(k);
		assert_error_class(r, cases[i].cls);
		json_decref(r);
		r = conn_json(k);
		assert_string_equal(json_string_value(json_object_get(r, "id")), "after");
		assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "return"),
								    "count")), (int)i + 1);
		json_decref(r);
	}
	conn_close(k);
}

static void error_descriptions_stay_valid_utf8(void **state)
{
	/* an unknown command with a long name of two-byte characters: quoting
	 * it in the description cuts it somewhere */
	struct conn *k = conn_open(*state);
	for (size_t odd = 0; odd < 2; odd++) {
		char line[4096];
		size_t n = (size_t)snprintf(line, sizeof(line), "{\"execute\":\"%s", odd ? "x" : "");
		for (int i = 0; i < 1000; i++)
			n += (size_t)snprintf(line + n, sizeof(line) - n, "\xc3\xa9");
		snprintf(line + n, sizeof(line) - n, "\",\"id\":%zu}", odd);
		json_t *r = conn_cmd(k, line);     /* conn_json checks it parses */
		assert_error_class(r, "CommandNotFound");
		assert_int_equal(json_integer_value(json_object_get(r, "id")), odd);
		json_decref(r);
	}
	assert_counts(k, 1);
	conn_close(k);
}

static void blank_lines_are_ignored(void **state)
{
	struct conn *k = conn_open(*state);
	conn_send(k, "\n  \r\n\t\n");
	assert_counts(k, 1);     /* the next line is count's reply, not an error */
	conn_close(k);
}

static const char line_head[] = "{\"execute\":\"echo\",\"arguments\":{\"s\":\"";
static const char line_tail[] = "\"}}";
#define LINE_FRAME (sizeof(line_head) - 1 + sizeof(line_tail) - 1)

/* A request line of exactly n bytes (and a newline): echo with a string
 * padded to fit. */
static char *line_of(size_t n)
{
	const char *head = line_head, *tail = line_tail;
	size_t fill = n - LINE_FRAME;
	char *s = malloc(n + 2);
	assert_non_null(s);
	strcpy(s, head);
	memset(s + strlen(head), 'x', fill);
	strcpy(s + strlen(head) + fill, tail);
	s[n] = '\n';
	s[n + 1] = 0;
	return s;
}

static void longest_line_is_accepted(void **state)
{
	struct conn *k = conn_open(*state);
	char *s = line_of(CONTROL_LINE_MAX);
	conn_send(k, s);
	json_t *r = conn_json(k);
	const char *echoed = json_string_value(json_object_get(json_object_get(r, "return"),
							       "s"));
	assert_non_null(echoed);
	assert_int_equal(strlen(echoed), CONTROL_LINE_MAX - LINE_FRAME);
	json_decref(r);
	free(s);
	conn_close(k);
}

static void overlong_line_gets_one_error(void **state)
{
	struct conn *k = conn_open(*state);
	/* one byte too many, then a line several times the limit */
	char *s = line_of(CONTROL_LINE_MAX + 1);
	conn_send(k, s);
	free(s);
	size_t big = 5 * CONTROL_LINE_MAX + 123;
	s = malloc(big);
	memset(s, '{', big);
	conn_send_bytes(k, s, big);
	free(s);
	conn_send(k, "\n");
	for (int i = 0; i < 2; i++) {
		json_t *r = conn_json(k);
		assert_error_class(r, "GenericError");
		json_decref(r);
	}
	assert_counts(k, 1);     /* and nothing of the skipped bytes ran */
	conn_close(k);
}

static void id_is_echoed(void **state)
{
	static const char *const ids[] = { "7", "\"abc\"", "{\"x\":[1,null]}", "-1.5", "null" };
	struct conn *k = conn_open(*state);
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		static const char *const fmts[] = {
			"{\"execute\":\"echo\",\"id\":%s}",
			"{\"id\":%s,\"execute\":\"no-such-command\"}",
			"{\"execute\":\"fail\",\"id\":%s}",
			"{\"execute\":\"echo\",\"arguments\":3,\"id\":%s}",
		};
		for (size_t j = 0; j < sizeof(fmts) / sizeof(fmts[0]); j++) {
			char line[256];
			snprintf(line, sizeof(line), fmts[j], ids[i]);
			json_t *r = conn_cmd(k, line);
			json_t *want = json_loads(ids[i], JSON_DECODE_ANY, NULL);
			json_t *got = json_object_get(r, "id");
			if (!got || !json_equal(got, want))
				fail_msg("id %s not echoed in the reply to %s", ids[i], line);
			assert_true(json_object_get(r, "return") || json_object_get(r, "error"));
			json_decref(want);
			json_decref(r);
		}
	}
	/* and no id when none was given */
	json_t *r = conn_cmd(k, "{\"execute\":\"echo\"}");
	assert_null(json_object_get(r, "id"));
	json_decref(r);
	conn_close(k);
}

static void assert_event(json_t *ev, const char *name, json_t *data)
{
	assert_string_equal(json_string_value(json_object_get(ev, "event")), name);
	assert_true(json_equal(json_object_get(ev, "data"), data));
	json_t *ts = json_object_get(ev, "timestamp");
	json_t *sec = json_object_get(ts, "seconds");
	json_t *usec = json_object_get(ts, "microseconds");
	assert_true(json_is_integer(sec) && json_integer_value(sec) > 1600000000);
	assert_true(json_is_integer(usec));
	assert_in_range(json_integer_value(usec), 0, 999999);
	assert_int_equal(json_object_size(ev), 3);
}

static void events_reach_every_client(void **state)
{
	struct fixture *f = *state;
	struct conn *a = conn_open(f), *b = conn_open(f);
	/* both greetings were read: both clients are registered */
	control_event(f->c, "SOMETHING", json_pack("{s:i}", "n", 1));
	control_event(f->c, "NOTHING", NULL);
	json_t *d1 = json_pack("{s:i}", "n", 1), *empty = json_object();
	struct conn *both[] = { a, b };
	for (int i = 0; i < 2; i++) {
		json_t *ev = conn_json(both[i]);
		assert_event(ev, "SOMETHING", d1);
		json_decref(ev);
		ev = conn_json(both[i]);
		assert_event(ev, "NOTHING", empty);
		json_decref(ev);
	}

	/* an event sent by a handler, while it runs on the control thread */
	conn_send(a, "{\"execute\":\"emit\",\"arguments\":{\"why\":\"test\"}}\n");
	json_t *data = json_pack("{s:s}", "why", "test");
	json_t *first = conn_json(a), *second = conn_json(a);
	json_t *ev = json_object_get(first, "event") ? first : second;
	json_t *ret = ev == first ? second : first;
	assert_event(ev, "EMITTED", data);
	assert_true(json_is_object(json_object_get(ret, "return")));
	json_decref(first);
	json_decref(second);
	ev = conn_json(b);
	assert_event(ev, "EMITTED", data);
	json_decref(ev);
	json_decref(data);
	json_decref(d1);
	json_decref(empty);
	conn_close(a);
	conn_close(b);
}

static void vanished_client_mid_line_is_harmless(void **state)
{
	struct fixture *f = *state;
	struct conn *a = conn_open(f), *b = conn_open(f);
	/* a half-sent line, interleaved with another client's request, is
	 * completed later: each connection has its own line */
	conn_send(a, "{\"execute\":\"co");
	assert_counts(b, 1);
	conn_send(a, "unt\",\"id\":1}\n");
	json_t *r = conn_json(a);
	assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
	json_decref(r);

	/* a complete request with no newline, then end of file: never run */
	conn_send(a, "{\"execute\":\"count\"}");
	shutdown(a->fd, SHUT_WR);
	assert_true(conn_at_eof(a));          /* the server let it go */
	conn_close(a);

	/* a client that vanishes outright mid-line */
	struct conn *c = conn_open(f);
	conn_send(c, "{\"execute\":\"count\",\"arguments\":{\"a\":[1,2,");
	conn_close(c);

	assert_counts(b, 3);
	assert_int_equal(atomic_load(&f->count), 3);
	conn_close(b);
}

static void flooding_client_does_not_starve_others(void **state)
{
	struct fixture *f = *state;
	struct conn *a = conn_open(f), *b = conn_open(f);
	/* a sends requests and never reads the replies, until its socket
	 * is full in both directions */
	fcntl(a->fd, F_SETFL, O_NONBLOCK);
	static const char req[] = "{\"execute\":\"echo\",\"arguments\":{\"pad\":"
		"\"................................................................\"}}\n";
	size_t sent = 0;
	for (int stalls = 0; stalls < 50 && sent < (64u << 20);) {
		ssize_t w = send(a->fd, req, sizeof(req) - 1, MSG_NOSIGNAL);
		if (w > 0) {
			sent += (size_t)w;
			stalls = 0;
			continue;
		}
		assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
		stalls++;
		usleep(2000);
	}
	/* b is still served, and events still reach it */
	assert_counts(b, 1);
	control_event(f->c, "STILL-HERE", NULL);
	json_t *ev = conn_json(b);
	assert_string_equal(json_string_value(json_object_get(ev, "event")), "STILL-HERE");
	json_decref(ev);
	conn_close(a);
	assert_counts(b, 2);
	conn_close(b);
}

struct sender {
	struct conn *k;
	int n;
	size_t size;
};

static void *send_echoes(void *arg)
{
	struct sender *w = arg;
	char *line = malloc(w->size + 128);
	for (int i = 0; i < w->n; i++) {
		int len = sprintf(line, "{\"execute\":\"echo\",\"id\":%d,\"arguments\":{\"s\":\"", i);
		memset(line + len, 'a' + i % 26, w->size);
		strcpy(line + len + w->size, "\"}}\n");
		conn_send(w->k, line);
	}
	free(line);
	return NULL;
}

static void large_replies_arrive_whole(void **state)
{
	/* far more reply bytes than a socket holds, read while the requests
	 * are still being written: every reply arrives whole and in order */
	struct conn *k = conn_open(*state);
	struct sender w = { k, 100, 60000 };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, send_echoes, &w), 0);
	/* let replies pile up in the server first, so that it has to write
	 * them in pieces (the outcome does not depend on how long this is) */
	usleep(300 * 1000);
	for (int i = 0; i < w.n; i++) {
		json_t *r = conn_json(k);
		assert_int_equal(json_integer_value(json_object_get(r, "id")), i);
		const char *got = json_string_value(json_object_get(json_object_get(r, "return"),
								    "s"));
		assert_non_null(got);
		assert_int_equal(strlen(got), w.size);
		char letter[2] = { (char)('a' + i % 26), 0 };
		assert_int_equal(strspn(got, letter), w.size);
		json_decref(r);
	}
	pthread_join(t, NULL);
	conn_close(k);
}

static void client_that_never_reads_is_dropped(void **state)
{
	struct fixture *f = *state;
	struct conn *a = conn_open(f), *b = conn_open(f);
	/* big events that b reads and a does not, until a's share exceeds
	 * what the server keeps for one client */
	size_t size = 60 * 1024;
	char *blob = malloc(size + 1);
	memset(blob, 'e', size);
	blob[size] = 0;
	for (int i = 0; i < 400; i++) {
		control_event(f->c, "BIG", json_pack("{s:s}", "blob", blob));
		json_t *ev = conn_json(b);
		assert_string_equal(json_string_value(json_object_get(ev, "event")), "BIG");
		json_decref(ev);
	}
	free(blob);
	/* a finds the end of its stream after what was written to it */
	assert_true(conn_at_eof(a));
	conn_close(a);
	assert_counts(b, 1);
	conn_close(b);
}

static void close_after_reply_ends_every_client(void **state)
{
	struct fixture *f = *state;
	struct conn *a = conn_open(f), *b = conn_open(f);
	json_t *r = conn_cmd(a, "{\"execute\":\"bye\",\"id\":\"q\"}");
	assert_string_equal(json_string_value(json_object_get(json_object_get(r, "return"),
							      "bye")), "now");
	json_decref(r);
	assert_true(conn_at_eof(a));
	assert_true(conn_at_eof(b));
	conn_close(a);
	conn_close(b);
	assert_true(unix_connect(f->path) < 0);   /* nobody serves it any more */
	control_event(f->c, "AFTER", NULL);       /* harmless */
}

static void stop_closes_clients_and_removes_the_socket(void **state)
{
	struct fixture *f = *state;
	struct conn *a = conn_open(f);
	control_stop(f->c);
	f->c = NULL;
	assert_true(conn_at_eof(a));
	conn_close(a);
	assert_int_equal(access(f->path, F_OK), -1);
	assert_int_equal(errno, ENOENT);
}

static void stale_socket_is_replaced(void **state)
{
	struct fixture *f = *state;
	char other[96];
	snprintf(other, sizeof(other), "%s/other", f->dir);
	/* a socket file whose server is gone */
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", other);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	assert_int_equal(access(other, F_OK), 0);

	char err[512] = "";
	struct control *c = control_start(other, fake_cmds, f, err, sizeof(err));
	if (!c)
		fail_msg("control_start over a stale socket: %s", err);
	int k = unix_connect(other);
	assert_true(k >= 0);
	close(k);
	control_stop(c);
	assert_int_equal(access(other, F_OK), -1);
}

static void live_socket_is_refused(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	struct control *c = control_start(f->path, fake_cmds, f, err, sizeof(err));
	assert_null(c);
	assert_non_null(strstr(err, f->path));
	assert_non_null(strstr(err, "live process"));
	/* the first server is untouched */
	struct conn *k = conn_open(f);
	assert_counts(k, 1);
	conn_close(k);
}

static void bad_paths_are_refused(void **state)
{
	struct fixture *f = *state;
	char other[96], err[512] = "";
	snprintf(other, sizeof(other), "%s/other", f->dir);
	FILE *fp = fopen(other, "w");
	assert_non_null(fp);
	fputs("precious\n", fp);
	fclose(fp);
	assert_null(control_start(other, fake_cmds, f, err, sizeof(err)));
	assert_non_null(strstr(err, "not a socket"));
	struct stat st;
	assert_int_equal(stat(other, &st), 0);      /* and it is still there */
	assert_true(S_ISREG(st.st_mode));

	char longpath[300];
	memset(longpath, 'p', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = 0;
	err[0] = 0;
	assert_null(control_start(longpath, fake_cmds, f, err, sizeof(err)));
	assert_non_null(strstr(err, "longer than"));
	err[0] = 0;
	assert_null(control_start("/nonexistent-dir/ctl.sock", fake_cmds, f, err,
				  sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent-dir/ctl.sock"));
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, server_up, server_down)
	const struct CMUnitTest tests[] = {
		T(greeting_comes_first),
		T(good_commands_answer),
		T(query_commands_lists_all),
		T(failing_commands_report_their_class),
		T(malformed_requests_get_one_error_each),
		T(error_descriptions_stay_valid_utf8),
		T(blank_lines_are_ignored),
		T(longest_line_is_accepted),
		T(overlong_line_gets_one_error),
		T(id_is_echoed),
		T(events_reach_every_client),
		T(vanished_client_mid_line_is_harmless),
		T(flooding_client_does_not_starve_others),
		T(large_replies_arrive_whole),
		T(client_that_never_reads_is_dropped),
		T(close_after_reply_ends_every_client),
		T(stop_closes_clients_and_removes_the_socket),
		T(stale_socket_is_replaced),
		T(live_socket_is_refused),
		T(bad_paths_are_refused),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
