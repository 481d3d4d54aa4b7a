/*
 * util.c - small helpers shared by the cluster programs (see util.h).
 */
#include "cluster/common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *log_name = "ferry";

void reply_json(struct http_response *resp, int status, json_t *body)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text) {
		status = 500;
		text = strdup("{\"error\":{\"status\":500,\"code\":\"internal\","
			      "\"message\":\"the reply could not be encoded as JSON\"}}");
	}
	http_respond(resp, status, "application/json", text, strlen(text));
}

const char *error_code(int status)
{
	switch (status) {
	case 400: return "bad_request";
	case 401: return "unauthorized";
	case 403: return "forbidden";
	case 404: return "not_found";
	case 405: return "bad_request";
	case 409: return "conflict";
	case 502:
	case 503: return "unavailable";
	default: return status >= 500 ? "internal" : "bad_request";
	}
}

void reply_error(struct http_response *resp, int status, const char *message,
		 const char *hint)
{
	json_t *msg = json_string(message);
	if (!msg)   /* not UTF-8: it quoted the caller's bytes */
		msg = json_string("the request carries text that is not UTF-8");
	json_t *e = json_pack("{s:i, s:s, s:o}", "status", status, "code", error_code(status),
			      "message", msg);
	if (hint)
		json_object_set_new(e, "hint", json_string(hint));
	reply_json(resp, status, json_pack("{s:o}", "error", e));
}

json_t *parse_body(const struct http_request *req, struct http_response *resp)
{
	json_error_t je;
	json_t *j = json_loadb(req->body, req->body_len, 0, &je);
	if (!j || !json_is_object(j)) {
		char msg[300];
		if (!j)
			snprintf(msg, sizeof(msg), "the request body is not JSON: %s (line %d)",
				 je.text, je.line);
		else
			snprintf(msg, sizeof(msg), "the request body must be a JSON object");
		json_decref(j);
		reply_error(resp, 400, msg, "see docs/api.md for the request's fields");
		return NULL;
	}
	return j;
}

void iso_time(time_t t, char *out, size_t len)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

time_t parse_time(const char *s)
{
	if (!s || !*s)
		return -1;
	if (s[0] == '+') {
		char *end;
		long n = strtol(s + 1, &end, 10);
		if (end == s + 1 || n < 0)
			return -1;
		long mult = !*end || !strcmp(end, "s") ? 1 : !strcmp(end, "m") ? 60
			  : !strcmp(end, "h") ? 3600 : !strcmp(end, "d") ? 86400 : 0;
		return mult ? time(NULL) + n * mult : -1;
	}
	struct tm tm = { 0 };
	const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!end)
		end = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
	if (!end)
		return -1;
	if (*end == '.')
		while (*++end >= '0' && *end <= '9')
			;
	if (*end && strcmp(end, "Z") && strcmp(end, "+00:00"))
		return -1;
	return timegm(&tm);
}

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	size_t got;
	while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
		n += got;
		if (cap - n < 2) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
	}
	fclose(f);
	if (buf)
		buf[n] = 0;
	if (len)
		*len = n;
	return buf;
}

bool write_file(const char *path, const char *data)
{
	char tmp[4200];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return false;
	bool ok = fputs(data, f) >= 0;
	ok = (fclose(f) == 0) && ok;
	return ok && rename(tmp, path) == 0;
}

char *file_tail(const char *path, int lines, size_t max_bytes)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return strdup("");
	struct stat st;
	fstat(fd, &st);
	off_t start = st.st_size > (off_t)max_bytes ? st.st_size - (off_t)max_bytes : 0;
	size_t n = (size_t)(st.st_size - start);
	char *buf = malloc(n + 1);
	ssize_t got = pread(fd, buf, n, start);
	close(fd);
	if (got < 0)
		got = 0;
	buf[got] = 0;
	/* drop carriage returns */
	char *w = buf;
	for (char *r = buf; *r; r++)
		if (*r != '\r')
			*w++ = *r;
	*w = 0;
	if (lines <= 0)
		return buf;
	size_t len = strlen(buf);
	if (len && buf[len - 1] == '\n')
		len--;
	int seen = 0;
	size_t i = len;
	while (i > 0) {
		if (buf[i - 1] == '\n' && ++seen == lines)
			break;
		i--;
	}
	memmove(buf, buf + i, strlen(buf + i) + 1);
	return buf;
}

void logf_(const char *fmt, ...)
{
	char t[32];
	iso_time(time(NULL), t, sizeof(t));
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s %s: ", t, log_name);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}
