/*
 * http_server.h - a small HTTP server over libmicrohttpd.
 *
 * One handler for every request, called with the whole body already read
 * (libmicrohttpd does the parsing; we only gather the upload). The server
 * runs a thread per connection, so a handler may block (on SQLite, on a
 * call to another host) without stalling other clients.
 */
#ifndef FERRY_HTTP_SERVER_H
#define FERRY_HTTP_SERVER_H

#include <stddef.h>

struct MHD_Connection;

struct http_request {
	const char *method;
	const char *path;        /* without the query string */
	const char *body;        /* NUL-terminated, may be "" */
	size_t body_len;
	const char *auth;        /* Authorization header, or NULL */
	char peer[64];           /* the client's address */
	struct MHD_Connection *conn;
};

struct http_response {
	int status;
	char *body;              /* malloc'd, freed by the server */
	size_t body_len;
	const char *content_type;
};

typedef void (*http_handler)(void *ctx, const struct http_request *req,
			     struct http_response *resp);

struct http_server;

/* Listen on "ADDR:PORT"; NULL with a message in err when that fails. */
struct http_server *http_server_start(const char *listen, http_handler handler, void *ctx,
				      char *err, size_t errlen);
void http_server_stop(struct http_server *s);

/* A query-string argument, or NULL. */
const char *http_query(const struct http_request *req, const char *key);

/* Set a response: takes ownership of body (malloc'd). */
void http_respond(struct http_response *resp, int status, const char *content_type,
		  char *body, size_t len);

#endif
