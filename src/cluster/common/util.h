/*
 * util.h - small helpers shared by ferryd, ferry-center and ferry: JSON
 * error bodies, ISO times, files, logging.
 */
#ifndef FERRY_CLUSTER_UTIL_H
#define FERRY_CLUSTER_UTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "cluster/common/http_server.h"

/* Reply with JSON (stolen) and a status. */
void reply_json(struct http_response *resp, int status, json_t *body);
/* Reply {"error": {status, code, message, hint}}; hint may be NULL. */
void reply_error(struct http_response *resp, int status, const char *message,
		 const char *hint);
const char *error_code(int status);

/* Parse a request body as a JSON object; on failure replies 400 and returns NULL. */
json_t *parse_body(const struct http_request *req, struct http_response *resp);

/* "2026-12-02T04:10:00Z" */
void iso_time(time_t t, char *out, size_t len);
/* ISO time (UTC, "Z" or no zone) or "+10m"/"+30s"/"+2h"; -1 when neither. */
time_t parse_time(const char *s);

int64_t now_ms(void);

/* Whole file, NUL-terminated; NULL on failure. */
char *read_file(const char *path, size_t *len);
bool write_file(const char *path, const char *data);

/* The last n lines of a file (empty string if none). */
char *file_tail(const char *path, int n, size_t max_bytes);

/* A line on stderr with the time and the program's name. */
void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern const char *log_name;

#endif
