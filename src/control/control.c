/*
 * control.c - the JSON control socket server (see control.h for the
 * protocol).
 *
 * One thread polls the listening socket, every client and a wake-up pipe.
 * Each client has an input buffer of one maximal line: complete lines are
 * parsed with jansson and dispatched to the command table, and the replies
 * are appended to the client's output buffer. All sockets are non-blocking
 * and only this thread reads or writes them, so a client that stalls,
 * vanishes mid-line or floods cannot block the others:
 *
 * - a line longer than CONTROL_LINE_MAX gets one error, and the rest of it
 *   is skipped up to its newline;
 * - a client that sends requests but does not read the replies is not read
 *   any further while its output holds more than OUT_HIGH bytes (the kernel
 *   then pushes back on it), and one whose output grows past OUT_MAX
 *   (events it never reads) is dropped;
 * - a partial line at end of file is thrown away, never executed.
 *
 * Events may be sent from any thread: control_event() appends the line to
 * every client's output under the lock and pokes the pipe, and the thread
 * writes it out. The lock guards the client list and the output buffers;
 * it is never held while a handler runs, so a handler may send events.
 */
#include "control/control.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef FERRY_VERSION
#define FERRY_VERSION "unknown"
#endif

#define MAX_CLIENTS 32
#define OUT_HIGH (256 * 1024)        /* stop reading a client above this */
#define OUT_MAX (8 * 1024 * 1024)    /* drop a client above this */
#define ERR_LEN 512

struct client {
	int fd;
	bool eof;          /* the peer sent end of file: no more input */
	bool dead;         /* to be closed and freed by the thread */
	bool skipping;     /* dropping the rest of an over-long line */
	size_t in_start;   /* unread input is in[in_start, in_start + in_len) */
	size_t in_len;
	char *out;         /* output not yet written, under control.lock: */
	size_t out_off;    /* it is out[out_off, out_off + out_len) */
	size_t out_len;
	size_t out_cap;
	char in[CONTROL_LINE_MAX + 1];   /* a line and its newline */
};

struct control {
	char *path;
	dev_t dev;            /* the socket file we made, to remove only it */
	ino_t ino;
	int listen_fd;
	int wake[2];          /* pipe: other threads poke the poll loop */
	bool accept_paused;   /* out of file descriptors: wait for a close */
	const struct control_cmd *cmds;
	void *ctx;
	pthread_t thread;
	pthread_mutex_t lock;
	struct client *clients[MAX_CLIENTS];
	unsigned nclients;
	bool closed;                  /* serving no more; under lock */
	atomic_bool stopping;         /* control_stop() was called */
	atomic_bool close_requested;  /* a handler asked to close after its reply */
};

/* ---- output ------------------------------------------------------------------ */

static void control_wake(struct control *c)
{
	char b = 1;
	ssize_t r = write(c->wake[1], &b, 1);
	(void)r;   /* a full pipe already means "wake up" */
}

/* Queue bytes for a client; under c->lock. A client that lets its output
 * pile up past OUT_MAX is not reading: it is dropped. */
static void client_queue(struct client *cl, const char *s, size_t n)
{
	if (cl->dead)
		return;
	if (cl->out_len + n > OUT_MAX) {
		cl->dead = true;
		return;
	}
	if (cl->out_off && cl->out_off + cl->out_len + n > cl->out_cap) {
		memmove(cl->out, cl->out + cl->out_off, cl->out_len);
		cl->out_off = 0;
	}
	if (cl->out_len + n > cl->out_cap) {
		size_t cap = cl->out_cap ? cl->out_cap : 4096;
		while (cap < cl->out_len + n)
			cap *= 2;
		char *p = realloc(cl->out, cap);
		if (!p) {
			cl->dead = true;
			return;
		}
		cl->out = p;
		cl->out_cap = cap;
	}
	memcpy(cl->out + cl->out_off + cl->out_len, s, n);
	cl->out_len += n;
}

/* Write what the socket takes now; under c->lock. */
static void client_flush(struct client *cl)
{
	while (cl->out_len && !cl->dead) {
		ssize_t n = send(cl->fd, cl->out + cl->out_off, cl->out_len,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				cl->dead = true;    /* the peer is gone */
			return;
		}
		cl->out_off += (size_t)n;
		cl->out_len -= (size_t)n;
	}
	if (!cl->out_len)
		cl->out_off = 0;
}

static size_t client_pending(struct control *c, struct client *cl)
{
	pthread_mutex_lock(&c->lock);
	size_t n = cl->out_len;
	pthread_mutex_unlock(&c->lock);
	return n;
}

/* Send one JSON value as a line to one client, and free it. */
static void client_send(struct control *c, struct client *cl, json_t *msg)
{
	char *s = json_dumps(msg, JSON_COMPACT);
	json_decref(msg);
	pthread_mutex_lock(&c->lock);
	if (s) {
		client_queue(cl, s, strlen(s));
		client_queue(cl, "\n", 1);
	} else {
		static const char oom[] =
			"{\"error\":{\"class\":\"GenericError\",\"desc\":\"out of memory\"}}\n";
		client_queue(cl, oom, sizeof(oom) - 1);
	}
	client_flush(cl);
	pthread_mutex_unlock(&c->lock);
	free(s);
}

/* An error reply. The description may quote the client's bytes, cut
 * anywhere by the buffer: if that is not valid UTF-8 (which JSON needs),
 * non-ASCII bytes become '?'. */
static json_t *error_reply(const char *cls, const char *fmt, ...)
{
	char desc[ERR_LEN];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(desc, sizeof(desc), fmt, ap);
	va_end(ap);
	json_t *reply = json_pack("{s:{s:s, s:s}}", "error", "class", cls, "desc", desc);
	if (reply)
		return reply;
	for (char *p = desc; *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	return json_pack("{s:{s:s, s:s}}", "error", "class", cls, "desc", desc);
}

/* ---- requests ---------------------------------------------------------------- */

static const char *const builtin_names[] = { "qmp_capabilities", "query-commands" };

static json_t *builtin_query_commands(struct control *c)
{
	json_t *list = json_array();
	for (size_t i = 0; i < sizeof(builtin_names) / sizeof(builtin_names[0]); i++)
		json_array_append_new(list, json_pack("{s:s}", "name", builtin_names[i]));
	for (const struct control_cmd *cmd = c->cmds; cmd && cmd->name; cmd++)
		json_array_append_new(list, json_pack("{s:s}", "name", cmd->name));
	return list;
}

static const struct control_cmd *control_find(struct control *c, const char *name)
{
	for (const struct control_cmd *cmd = c->cmds; cmd && cmd->name; cmd++)
		if (!strcmp(cmd->name, name))
			return cmd;
	return NULL;
}

/* Checks the request's shape; returns an error reply, or NULL if it is good. */
static json_t *request_check(json_t *req)
{
	if (!json_is_object(req))
		return error_reply("GenericError",
				   "a request must be a JSON object like "
				   "{\"execute\":\"NAME\",\"arguments\":{...}}");
	json_t *execute = json_object_get(req, "execute");
	if (!execute)
		return error_reply("GenericError",
				   "the request has no \"execute\" member naming a command");
	if (!json_is_string(execute))
		return error_reply("GenericError",
				   "\"execute\" must be a string naming a command");
	json_t *args = json_object_get(req, "arguments");
	if (args && !json_is_object(args))
		return error_reply("GenericError", "\"arguments\" of %s must be a JSON object",
				   json_string_value(execute));
	const char *key;
	json_t *value;
	json_object_foreach(req, key, value) {
		if (strcmp(key, "execute") && strcmp(key, "arguments") && strcmp(key, "id"))
			return error_reply("GenericError",
					   "unexpected member \"%s\" in the request "
					   "(want execute, arguments and id)", key);
	}
	return NULL;
}

/* Runs a well-formed request; returns the reply. */
static json_t *request_run(struct control *c, const char *name, json_t *args)
{
	if (!strcmp(name, "qmp_capabilities"))
		return json_pack("{s:{}}", "return");
	if (!strcmp(name, "query-commands"))
		return json_pack("{s:o}", "return", builtin_query_commands(c));

	const struct control_cmd *cmd = control_find(c, name);
	if (!cmd)
		return error_reply("CommandNotFound",
				   "the command %s was not found; query-commands lists them", name);
	const char *cls = NULL;
	char err[ERR_LEN] = "";
	json_t *empty = json_object();
	json_t *ret = cmd->fn(c->ctx, args ? args : empty, &cls, err, sizeof(err));
	json_decref(empty);
	if (!ret)
		return error_reply(cls ? cls : "GenericError", "%s",
				   err[0] ? err : "the command failed and gave no reason");
	return json_pack("{s:o}", "return", ret);
}

static bool line_is_blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

/* Parses, runs and answers one request line (without its newline). */
static void control_handle_line(struct control *c, struct client *cl, const char *s,
				size_t n)
{
	if (line_is_blank(s, n))
		return;
	json_error_t jerr;
	json_t *req = json_loadb(s, n, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
	json_t *reply;
	if (!req) {
		reply = error_reply("GenericError", "JSON parse error at column %d: %s",
				    jerr.column, jerr.text);
	} else {
		reply = request_check(req);
		if (!reply)
			reply = request_run(c, json_string_value(json_object_get(req, "execute")),
					    json_object_get(req, "arguments"));
		json_t *id = json_is_object(req) ? json_object_get(req, "id") : NULL;
		if (id && reply)
			json_object_set(reply, "id", id);
	}
	json_decref(req);
	if (reply)
		client_send(c, cl, reply);
}

/* ---- clients ----------------------------------------------------------------- */

static bool control_is_closed(struct control *c)
{
	pthread_mutex_lock(&c->lock);
	bool closed = c->closed;
	pthread_mutex_unlock(&c->lock);
	return closed;
}

/* After a handler asked for it: close the listening socket and let every
 * client go once its output is written. */
static void control_close_all(struct control *c)
{
	pthread_mutex_lock(&c->lock);
	c->closed = true;
	for (unsigned i = 0; i < c->nclients; i++) {
		struct client *cl = c->clients[i];
		cl->eof = true;
		cl->in_len = 0;
		if (!cl->out_len)
			cl->dead = true;
	}
	pthread_mutex_unlock(&c->lock);
	if (c->listen_fd >= 0) {
		close(c->listen_fd);
		c->listen_fd = -1;
	}
}

/* Runs the complete lines in the input buffer, as long as the client
 * reads its replies. */
static void client_run_lines(struct control *c, struct client *cl)
{
	while (cl->in_len && !atomic_load(&c->stopping) && !control_is_closed(c)) {
		if (client_pending(c, cl) > OUT_HIGH)
			return;
		char *line = cl->in + cl->in_start;
		char *nl = memchr(line, '\n', cl->in_len);
		if (!nl)
			return;
		size_t n = (size_t)(nl - line);
		cl->in_start += n + 1;
		cl->in_len -= n + 1;
		control_handle_line(c, cl, line, n);
		if (atomic_load(&c->close_requested))
			control_close_all(c);
	}
}

/* Drops what is left of an over-long line up to its newline. */
static void client_skip(struct client *cl)
{
	char *p = cl->in + cl->in_start;
	char *nl = memchr(p, '\n', cl->in_len);
	if (!nl) {
		cl->in_len = 0;
		return;
	}
	size_t n = (size_t)(nl - p) + 1;
	cl->in_start += n;
	cl->in_len -= n;
	cl->skipping = false;
}

/* Whatever the client's state after some input or output: run the lines
 * it can, reject a line that cannot fit, and retire it when done. */
static void client_advance(struct control *c, struct client *cl)
{
	if (cl->skipping)
		client_skip(cl);
	client_run_lines(c, cl);
	bool has_line = memchr(cl->in + cl->in_start, '\n', cl->in_len) != NULL;
	if (!has_line && cl->in_len == sizeof(cl->in)) {
		client_send(c, cl, error_reply("GenericError",
			"request line longer than %d bytes; send one JSON object per line",
			CONTROL_LINE_MAX));
		cl->in_len = 0;
		cl->skipping = true;
	}
	if (cl->eof && !has_line) {
		cl->in_len = 0;   /* a partial line at end of file is never run */
		pthread_mutex_lock(&c->lock);
		if (!cl->out_len)
			cl->dead = true;
		pthread_mutex_unlock(&c->lock);
	}
}

static void client_read(struct control *c, struct client *cl)
{
	if (cl->eof || cl->in_len == sizeof(cl->in))
		return;   /* nothing more to read, or no room until lines run */
	if (cl->in_start) {
		memmove(cl->in, cl->in + cl->in_start, cl->in_len);
		cl->in_start = 0;
	}
	ssize_t n = recv(cl->fd, cl->in + cl->in_len, sizeof(cl->in) - cl->in_len, 0);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		cl->eof = true;
		cl->in_len = 0;
		pthread_mutex_lock(&c->lock);
		cl->dead = true;
		pthread_mutex_unlock(&c->lock);
		return;
	}
	if (n == 0)
		cl->eof = true;
	cl->in_len += (size_t)n;
	client_advance(c, cl);
}

/* The greeting line, as a string to free. */
static char *control_greeting(void)
{
	json_t *msg = json_pack("{s:{s:{s:s}, s:[]}}", "QMP", "version", "ferry",
				FERRY_VERSION, "capabilities");
	char *s = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
	json_decref(msg);
	return s;
}

static void control_refuse(int fd)
{
	static const char msg[] = "{\"error\":{\"class\":\"GenericError\",\"desc\":"
		"\"too many control clients; close one and retry\"}}\n";
	if (send(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		/* it is being turned away anyway */
	}
	close(fd);
}

static void control_accept(struct control *c)
{
	for (;;) {
		int fd = accept4(c->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOMEM ||
			    errno == ENOBUFS)
				c->accept_paused = true;   /* until a client leaves */
			return;
		}
		struct client *cl = calloc(1, sizeof(*cl));
		char *hello = control_greeting();
		pthread_mutex_lock(&c->lock);
		bool added = false;
		if (cl && hello && c->nclients < MAX_CLIENTS) {
			/* queued under the lock so that no event can come first */
			cl->fd = fd;
			client_queue(cl, hello, strlen(hello));
			client_queue(cl, "\n", 1);
			client_flush(cl);
			c->clients[c->nclients++] = cl;
			added = true;
		}
		pthread_mutex_unlock(&c->lock);
		free(hello);
		if (!added) {
			free(cl);
			control_refuse(fd);
		}
	}
}

/* Closes and frees the clients marked dead. */
static void control_reap(struct control *c)
{
	pthread_mutex_lock(&c->lock);
	for (unsigned i = 0; i < c->nclients;) {
		struct client *cl = c->clients[i];
		if (!cl->dead) {
			i++;
			continue;
		}
		close(cl->fd);
		free(cl->out);
		free(cl);
		c->clients[i] = c->clients[--c->nclients];
		c->accept_paused = false;
	}
	pthread_mutex_unlock(&c->lock);
}

/* ---- the thread -------------------------------------------------------------- */

/* Fills the poll set; returns how many entries. fds[0] is the wake pipe,
 * fds[1] the listening socket (or -1), then one per client in who[]. */
static nfds_t control_poll_set(struct control *c, struct pollfd *fds, struct client **who)
{
	fds[0] = (struct pollfd){ .fd = c->wake[0], .events = POLLIN };
	fds[1] = (struct pollfd){ .fd = c->accept_paused ? -1 : c->listen_fd,
				  .events = POLLIN };
	nfds_t n = 2;
	pthread_mutex_lock(&c->lock);
	for (unsigned i = 0; i < c->nclients; i++) {
		struct client *cl = c->clients[i];
		short ev = 0;
		if (!cl->eof && cl->out_len <= OUT_HIGH && cl->in_len < sizeof(cl->in))
			ev |= POLLIN;
		if (cl->out_len)
			ev |= POLLOUT;
		fds[n] = (struct pollfd){ .fd = cl->fd, .events = ev };
		who[n++] = cl;
	}
	pthread_mutex_unlock(&c->lock);
	return n;
}

static void control_drain_wake(struct control *c)
{
	char buf[64];
	while (read(c->wake[0], buf, sizeof(buf)) > 0)
		;
}

static void control_serve_client(struct control *c, struct client *cl, short revents)
{
	if (revents & POLLOUT) {
		pthread_mutex_lock(&c->lock);
		client_flush(cl);
		pthread_mutex_unlock(&c->lock);
		client_advance(c, cl);   /* lines held back while it was behind */
	}
	if (revents & (POLLIN | POLLHUP | POLLERR))
		client_read(c, cl);
	if ((revents & (POLLHUP | POLLERR)) && cl->eof) {
		/* gone for good: nothing more can be read or written */
		pthread_mutex_lock(&c->lock);
		cl->dead = true;
		pthread_mutex_unlock(&c->lock);
	}
}

static void *control_thread(void *arg)
{
	struct control *c = arg;
	struct pollfd fds[MAX_CLIENTS + 2];
	struct client *who[MAX_CLIENTS + 2];

	while (!atomic_load(&c->stopping)) {
		nfds_t n = control_poll_set(c, fds, who);
		if (poll(fds, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (fds[0].revents)
			control_drain_wake(c);
		if (fds[1].revents && c->listen_fd >= 0)
			control_accept(c);
		for (nfds_t i = 2; i < n && !atomic_load(&c->stopping); i++)
			if (fds[i].revents && !who[i]->dead)
				control_serve_client(c, who[i], fds[i].revents);
		control_reap(c);
	}
	return NULL;
}

/* ---- the socket -------------------------------------------------------------- */

static int socket_address(const char *path, struct sockaddr_un *sa, char *err, size_t errlen)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (!path[0] || strlen(path) >= sizeof(sa->sun_path)) {
		snprintf(err, errlen, "control socket path '%s' is empty or longer than %zu "
			 "bytes; choose a shorter one", path, sizeof(sa->sun_path) - 1);
		return -1;
	}
	strcpy(sa->sun_path, path);
	return 0;
}

/* Removes a stale socket file at path; refuses one that a live process
 * serves, or a file that is not a socket. */
static int socket_claim(const struct sockaddr_un *sa, char *err, size_t errlen)
{
	const char *path = sa->sun_path;
	struct stat st;
	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen, "control socket %s: the path exists and is not a socket; "
			 "remove it or choose another path", path);
		return -1;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "control socket: socket(): %s", strerror(errno));
		return -1;
	}
	int r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	int e = errno;
	close(fd);
	if (r == 0) {
		snprintf(err, errlen, "control socket %s is served by another live process "
			 "(another ferry-vm?); stop it or choose another path", path);
		return -1;
	}
	if (e != ECONNREFUSED && e != ENOENT) {
		snprintf(err, errlen, "control socket %s exists and cannot be checked: %s",
			 path, strerror(e));
		return -1;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		snprintf(err, errlen, "cannot remove the stale control socket %s: %s",
			 path, strerror(errno));
		return -1;
	}
	return 0;
}

static int socket_listen(struct control *c, const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sa;
	if (socket_address(path, &sa, err, errlen) || socket_claim(&sa, err, errlen))
		return -1;
	path = sa.sun_path;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "control socket: socket(): %s", strerror(errno));
		return -1;
	}
	struct stat st;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		snprintf(err, errlen, "cannot create the control socket %s: %s", path,
			 strerror(errno));
		close(fd);
		return -1;
	}
	/* whoever can connect can stop or migrate the VM: owner only */
	if (chmod(path, 0600) < 0 || stat(path, &st) < 0 || listen(fd, 16) < 0) {
		snprintf(err, errlen, "cannot set up the control socket %s: %s", path,
			 strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	c->listen_fd = fd;
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	return 0;
}

/* Removes the socket file only if it is still the one we created. */
static void socket_remove(struct control *c)
{
	struct stat st;
	if (lstat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino)
		unlink(c->path);
}

/* ---- public ------------------------------------------------------------------ */

struct control *control_start(const char *socket_path, const struct control_cmd *cmds,
			      void *ctx, char *err, size_t errlen)
{
	struct control *c = calloc(1, sizeof(*c));
	if (!c || !(c->path = strdup(socket_path))) {
		snprintf(err, errlen, "control socket: out of memory");
		free(c);
		return NULL;
	}
	c->cmds = cmds;
	c->ctx = ctx;
	c->listen_fd = -1;
	c->wake[0] = c->wake[1] = -1;
	pthread_mutex_init(&c->lock, NULL);
	if (pipe2(c->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
		snprintf(err, errlen, "control socket: pipe(): %s", strerror(errno));
		goto fail;
	}
	if (socket_listen(c, socket_path, err, errlen))
		goto fail;
	int e = pthread_create(&c->thread, NULL, control_thread, c);
	if (e) {
		snprintf(err, errlen, "control socket: cannot start its thread: %s", strerror(e));
		socket_remove(c);
		goto fail;
	}
	return c;
fail:
	if (c->listen_fd >= 0)
		close(c->listen_fd);
	if (c->wake[0] >= 0) {
		close(c->wake[0]);
		close(c->wake[1]);
	}
	pthread_mutex_destroy(&c->lock);
	free(c->path);
	free(c);
	return NULL;
}

static json_t *event_message(const char *name, json_t *data)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return json_pack("{s:s, s:o, s:{s:I, s:I}}", "event", name,
			 "data", data ? data : json_object(),
			 "timestamp", "seconds", (json_int_t)ts.tv_sec,
			 "microseconds", (json_int_t)(ts.tv_nsec / 1000));
}

void control_event(struct control *c, const char *name, json_t *data)
{
	if (!c) {
		json_decref(data);
		return;
	}
	json_t *msg = event_message(name, data);
	char *s = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
	json_decref(msg);
	if (!s)
		return;
	size_t n = strlen(s);
	s[n] = '\n';   /* replaces the terminator: the line is s[0..n] */
	pthread_mutex_lock(&c->lock);
	if (!c->closed)
		for (unsigned i = 0; i < c->nclients; i++)
			client_queue(c->clients[i], s, n + 1);
	pthread_mutex_unlock(&c->lock);
	free(s);
	control_wake(c);
}

void control_close_after_reply(struct control *c)
{
	atomic_store(&c->close_requested, true);
}

void control_stop(struct control *c)
{
	if (!c)
		return;
	atomic_store(&c->stopping, true);
	control_wake(c);
	pthread_join(c->thread, NULL);

	for (unsigned i = 0; i < c->nclients; i++) {
		struct client *cl = c->clients[i];
		client_flush(cl);   /* a last reply, e.g. to quit, if it fits */
		close(cl->fd);
		free(cl->out);
		free(cl);
	}
	if (c->listen_fd >= 0)
		close(c->listen_fd);
	socket_remove(c);
	close(c->wake[0]);
	close(c->wake[1]);
	pthread_mutex_destroy(&c->lock);
	free(c->path);
	free(c);
}
