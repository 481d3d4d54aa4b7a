/*
 * http_client.h - HTTP calls over libcurl, with JSON bodies.
 *
 * One easy handle per call: simple, thread-safe (curl_global_init is done
 * once by http_client_init), and fast enough for a control plane.
 */
#ifndef FERRY_HTTP_CLIENT_H
#define FERRY_HTTP_CLIENT_H

#include <jansson.h>

void http_client_init(void);

/*
 * Sends METHOD URL with an optional JSON body (not stolen) and a bearer
 * token (may be NULL). Returns the decoded JSON reply (a JSON null for an
 * empty body) and sets *status to the HTTP status; returns NULL with a
 * message in err when the host could not be reached or the reply is not
 * JSON (then *status is 0, or the HTTP status).
 */
json_t *http_json(const char *method, const char *url, const char *token, json_t *body,
		  long timeout_ms, long *status, char *err, size_t errlen);

/* The same with raw bytes: the reply body is returned malloc'd (NUL-terminated). */
char *http_raw(const char *method, const char *url, const char *token, const char *body,
	       const char *content_type, long timeout_ms, long *status, char *err,
	       size_t errlen);

#endif
