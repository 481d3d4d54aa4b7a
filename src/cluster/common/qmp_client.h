/*
 * qmp_client.h - a client of ferry-vm's control socket (JSON lines in
 * QMP's shape). Used by ferryd only. Events that arrive while waiting for
 * a reply are handed to an optional callback.
 */
#ifndef FERRY_QMP_CLIENT_H
#define FERRY_QMP_CLIENT_H

#include <jansson.h>
#include <stdbool.h>

struct qmp {
	int fd;
	char buf[65536];
	size_t len;
	void (*on_event)(void *ctx, json_t *event);
	void *ctx;
};

/* Connects, reads the greeting, negotiates; false with a message in err. */
bool qmp_open(struct qmp *q, const char *path, char *err, size_t errlen);
void qmp_close(struct qmp *q);
/* Runs a command (args not stolen, may be NULL); returns "return" (new
 * reference) or NULL with the error's desc (or the I/O error) in err. */
json_t *qmp_cmd(struct qmp *q, const char *name, json_t *args, int timeout_ms, char *err,
		size_t errlen);
/* Open, run one command, close. */
json_t *qmp_call(const char *path, const char *name, json_t *args, char *err, size_t errlen);

#endif
