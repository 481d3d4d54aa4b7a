/*
 * http_server.c - the HTTP server wrapper over libmicrohttpd.
 *
 * libmicrohttpd calls the access handler several times per request: once
 * with the headers, then once per chunk of upload, then once with no data
 * left. We gather the upload in a per-connection buffer (capped at
 * MAX_BODY) and call the user's handler on the last call.
 */
#include "cluster/common/http_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY (4 * 1024 * 1024)

struct http_server {
	struct MHD_Daemon *daemon;
	http_handler handler;
	void *ctx;
};

struct upload {
	char *data;
	size_t len;
	bool too_big;
};

static enum MHD_Result send_response(struct MHD_Connection *conn, struct http_response *r)
{
	struct MHD_Response *mr = MHD_create_response_from_buffer(
		r->body_len, r->body ? r->body : (char *)"", r->body ? MHD_RESPMEM_MUST_FREE
								   : MHD_RESPMEM_PERSISTENT);
	if (!mr)
		return MHD_NO;
	MHD_add_response_header(mr, "Content-Type",
				r->content_type ? r->content_type : "application/json");
	MHD_add_response_header(mr, "Cache-Control", "no-store");
	enum MHD_Result ret = MHD_queue_response(conn, r->status, mr);
	MHD_destroy_response(mr);
	return ret;
}

static void peer_address(struct MHD_Connection *conn, char *out, size_t len)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	snprintf(out, len, "?");
	if (!ci || !ci->client_addr)
		return;
	const struct sockaddr *sa = ci->client_addr;
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, len);
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, len);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_size, void **con_cls)
{
	struct http_server *s = cls;
	(void)version;
	struct upload *up = *con_cls;
	if (!up) {
		up = calloc(1, sizeof(*up));
		if (!up)
			return MHD_NO;
		*con_cls = up;
		return MHD_YES;
	}
	if (*upload_size) {
		if (up->len + *upload_size > MAX_BODY) {
			up->too_big = true;
		} else {
			char *n = realloc(up->data, up->len + *upload_size + 1);
			if (!n)
				return MHD_NO;
			up->data = n;
			memcpy(up->data + up->len, upload_data, *upload_size);
			up->len += *upload_size;
			up->data[up->len] = 0;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	struct http_response resp = { 0 };
	if (up->too_big) {
		const char *msg = "{\"error\":{\"status\":413,\"code\":\"bad_request\","
				  "\"message\":\"request body larger than 4 MiB\"}}";
		http_respond(&resp, 413, NULL, strdup(msg), strlen(msg));
	} else {
		struct http_request req = {
			.method = method,
			.path = url,
			.body = up->data ? up->data : "",
			.body_len = up->len,
			.auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							    MHD_HTTP_HEADER_AUTHORIZATION),
			.conn = conn,
		};
		peer_address(conn, req.peer, sizeof(req.peer));
		s->handler(s->ctx, &req, &resp);
	}
	if (!resp.status)
		resp.status = 500;
	return send_response(conn, &resp);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	(void)cls; (void)conn; (void)toe;
	struct upload *up = *con_cls;
	if (up) {
		free(up->data);
		free(up);
		*con_cls = NULL;
	}
}

static bool parse_listen(const char *listen, struct sockaddr_in *sa, char *err, size_t errlen)
{
	char host[64];
	const char *colon = strrchr(listen, ':');
	if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof(host)) {
		snprintf(err, errlen, "--listen %s: want ADDR:PORT, e.g. 127.0.0.1:7800", listen);
		return false;
	}
	memcpy(host, listen, colon - listen);
	host[colon - listen] = 0;
	char *end;
	long port = strtol(colon + 1, &end, 10);
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	if (*end || port <= 0 || port > 65535 || inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
		snprintf(err, errlen, "--listen %s: want an IPv4 ADDR:PORT, e.g. 127.0.0.1:7800",
			 listen);
		return false;
	}
	sa->sin_port = htons((uint16_t)port);
	return true;
}

struct http_server *http_server_start(const char *listen, http_handler handler, void *ctx,
				      char *err, size_t errlen)
{
	struct sockaddr_in sa;
	if (!parse_listen(listen, &sa, err, errlen))
		return NULL;
	struct http_server *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->handler = handler;
	s->ctx = ctx;
	s->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
				     MHD_USE_POLL | MHD_USE_ERROR_LOG,
				     ntohs(sa.sin_port), NULL, NULL, on_request, s,
				     MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
				     MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
				     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
				     MHD_OPTION_END);
	if (!s->daemon) {
		snprintf(err, errlen, "cannot listen on %s (address in use, or not on this host?)",
			 listen);
		free(s);
		return NULL;
	}
	return s;
}

void http_server_stop(struct http_server *s)
{
	if (!s)
		return;
	MHD_stop_daemon(s->daemon);
	free(s);
}

const char *http_query(const struct http_request *req, const char *key)
{
	return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, key);
}

void http_respond(struct http_response *resp, int status, const char *content_type,
		  char *body, size_t len)
{
	free(resp->body);
	resp->status = status;
	resp->content_type = content_type;
	resp->body = body;
	resp->body_len = len;
}
