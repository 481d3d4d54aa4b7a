/*
 * qmp_client.c - ferry-vm control socket client (see qmp_client.h).
 */
#include "cluster/common/qmp_client.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* The next JSON message, or NULL (err set) on timeout, close or bad JSON. */
static json_t *qmp_read(struct qmp *q, int timeout_ms, char *err, size_t errlen)
{
	long long deadline = mono_ms() + timeout_ms;
	for (;;) {
		char *nl = memchr(q->buf, '\n', q->len);
		if (nl) {
			json_error_t je;
			json_t *msg = json_loadb(q->buf, nl - q->buf, 0, &je);
			size_t used = nl - q->buf + 1;
			memmove(q->buf, q->buf + used, q->len - used);
			q->len -= used;
			if (!msg)
				snprintf(err, errlen, "ferry-vm sent a line that is not JSON: %s", je.text);
			return msg;
		}
		if (q->len == sizeof(q->buf)) {
			snprintf(err, errlen, "ferry-vm sent a line longer than 64 KiB");
			return NULL;
		}
		long long left = deadline - mono_ms();
		struct pollfd p = { .fd = q->fd, .events = POLLIN };
		if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
			snprintf(err, errlen, "ferry-vm did not answer within %d ms", timeout_ms);
			return NULL;
		}
		ssize_t n = read(q->fd, q->buf + q->len, sizeof(q->buf) - q->len);
		if (n <= 0) {
			snprintf(err, errlen, "ferry-vm closed its control socket");
			return NULL;
		}
		q->len += (size_t)n;
	}
}

bool qmp_open(struct qmp *q, const char *path, char *err, size_t errlen)
{
	memset(q, 0, sizeof(*q));
	q->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (q->fd < 0 || connect(q->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		snprintf(err, errlen, "cannot connect to %s: %s", path, strerror(errno));
		if (q->fd >= 0)
			close(q->fd);
		q->fd = -1;
		return false;
	}
	json_t *greeting = qmp_read(q, 5000, err, errlen);
	if (!greeting || !json_object_get(greeting, "QMP")) {
		if (greeting)
			snprintf(err, errlen, "%s: no QMP greeting", path);
		json_decref(greeting);
		qmp_close(q);
		return false;
	}
	json_decref(greeting);
	json_t *r = qmp_cmd(q, "qmp_capabilities", NULL, 5000, err, errlen);
	if (!r) {
		qmp_close(q);
		return false;
	}
	json_decref(r);
	return true;
}

void qmp_close(struct qmp *q)
{
	if (q->fd >= 0)
		close(q->fd);
	q->fd = -1;
}

json_t *qmp_cmd(struct qmp *q, const char *name, json_t *args, int timeout_ms, char *err,
		size_t errlen)
{
	json_t *req = json_pack("{s:s}", "execute", name);
	if (args)
		json_object_set(req, "arguments", args);
	char *line = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	size_t n = strlen(line);
	line[n] = '\n';
	ssize_t w = send(q->fd, line, n + 1, MSG_NOSIGNAL);
	free(line);
	if (w != (ssize_t)(n + 1)) {
		snprintf(err, errlen, "cannot send %s to ferry-vm: %s", name, strerror(errno));
		/* it closed: the events it sent before are still to be read */
		char e2[64];
		json_t *msg;
		while ((msg = qmp_read(q, 100, e2, sizeof(e2)))) {
			if (json_object_get(msg, "event") && q->on_event)
				q->on_event(q->ctx, msg);
			json_decref(msg);
		}
		return NULL;
	}
	for (;;) {
		json_t *msg = qmp_read(q, timeout_ms, err, errlen);
		if (!msg)
			return NULL;
		if (json_object_get(msg, "event")) {
			if (q->on_event)
				q->on_event(q->ctx, msg);
			json_decref(msg);
			continue;
		}
		json_t *ret = json_object_get(msg, "return");
		if (ret) {
			json_incref(ret);
			json_decref(msg);
			return ret;
		}
		const char *desc = json_string_value(
			json_object_get(json_object_get(msg, "error"), "desc"));
		snprintf(err, errlen, "%s", desc ? desc : "ferry-vm answered with an error");
		json_decref(msg);
		return NULL;
	}
}

json_t *qmp_call(const char *path, const char *name, json_t *args, char *err, size_t errlen)
{
	struct qmp q;
	if (!qmp_open(&q, path, err, errlen))
		return NULL;
	json_t *r = qmp_cmd(&q, name, args, 5000, err, errlen);
	qmp_close(&q);
	return r;
}
