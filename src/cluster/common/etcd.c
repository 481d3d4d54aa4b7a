/*
 * etcd.c - the etcd v3 JSON-gateway client (see etcd.h). Base64 comes from
 * OpenSSL's EVP_EncodeBlock/EVP_DecodeBlock.
 */
#include "cluster/common/etcd.h"

#include "cluster/common/http_client.h"

#include <curl/curl.h>

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ETCD_TIMEOUT_MS 2000

bool etcd_init(struct etcd *e, const char *urls)
{
	memset(e, 0, sizeof(*e));
	char *copy = strdup(urls), *save = NULL;
	for (char *u = strtok_r(copy, ",", &save); u; u = strtok_r(NULL, ",", &save)) {
		e->urls = realloc(e->urls, (e->n + 1) * sizeof(char *));
		size_t l = strlen(u);
		while (l && u[l - 1] == '/')
			u[--l] = 0;
		e->urls[e->n++] = strdup(u);
	}
	free(copy);
	return e->n > 0;
}

static char *b64_encode(const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(4 * ((n + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)n);
	return out;
}

static char *b64_decode(const char *s)
{
	size_t n = strlen(s);
	unsigned char *out = malloc(3 * (n / 4) + 4);
	int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
	if (len < 0) {
		free(out);
		return NULL;
	}
	/* EVP_DecodeBlock counts the padding as data: drop it */
	while (n && s[n - 1] == '=') {
		n--;
		len--;
	}
	out[len] = 0;
	return (char *)out;
}

/* POST a JSON request to one path, trying each member; the reply or NULL. */
static json_t *etcd_call(struct etcd *e, const char *path, json_t *req, char *err,
			 size_t errlen)
{
	for (int i = 0; i < e->n; i++) {
		int m = (e->current + i) % e->n;
		char url[512];
		snprintf(url, sizeof(url), "%s%s", e->urls[m], path);
		long status;
		json_t *reply = http_json("POST", url, NULL, req,
					  e->timeout_ms ? e->timeout_ms : ETCD_TIMEOUT_MS, &status, err,
					  errlen);
		if (reply && status == 200) {
			e->current = m;
			return reply;
		}
		if (reply) {
			const char *msg = json_string_value(json_object_get(reply, "error"));
			if (!msg)
				msg = json_string_value(json_object_get(reply, "message"));
			snprintf(err, errlen, "etcd %s: HTTP %ld: %s", url, status, msg ? msg : "?");
			json_decref(reply);
		}
	}
	return NULL;
}

int64_t etcd_lease_grant(struct etcd *e, int ttl, char *err, size_t errlen)
{
	json_t *req = json_pack("{s:i}", "TTL", ttl);
	json_t *r = etcd_call(e, "/v3/lease/grant", req, err, errlen);
	json_decref(req);
	if (!r)
		return 0;
	const char *id = json_string_value(json_object_get(r, "ID"));
	int64_t lease = id ? strtoll(id, NULL, 10) : 0;
	if (!lease)
		snprintf(err, errlen, "etcd lease grant: no ID in the reply");
	json_decref(r);
	return lease;
}

bool etcd_lease_keepalive(struct etcd *e, int64_t lease, char *err, size_t errlen)
{
	char id[32];
	snprintf(id, sizeof(id), "%" PRId64, lease);
	json_t *req = json_pack("{s:s}", "ID", id);
	json_t *r = etcd_call(e, "/v3/lease/keepalive", req, err, errlen);
	json_decref(req);
	if (!r)
		return false;
	/* the gateway streams: {"result": {"ID":..., "TTL": "N"}}; TTL absent or
	 * 0 means the lease has expired */
	json_t *res = json_object_get(r, "result");
	const char *ttl = json_string_value(json_object_get(res ? res : r, "TTL"));
	bool ok = ttl && atoll(ttl) > 0;
	if (!ok)
		snprintf(err, errlen, "etcd lease %s has expired", id);
	json_decref(r);
	return ok;
}

int64_t etcd_lease_ttl(struct etcd *e, int64_t lease, char *err, size_t errlen)
{
	char id[32];
	snprintf(id, sizeof(id), "%" PRId64, lease);
	json_t *req = json_pack("{s:s}", "ID", id);
	json_t *r = etcd_call(e, "/v3/lease/timetolive", req, err, errlen);
	json_decref(req);
	if (!r)
		return -2;
	/* proto3's JSON leaves out a zero: no TTL is under one second left;
	 * an expired or unknown lease says "-1" */
	const char *ttl = json_string_value(json_object_get(r, "TTL"));
	int64_t left = ttl ? strtoll(ttl, NULL, 10) : 0;
	json_decref(r);
	return left >= 0 ? left : -1;
}

bool etcd_put(struct etcd *e, const char *key, const char *value, int64_t lease, char *err,
	      size_t errlen)
{
	char *k = b64_encode(key), *v = b64_encode(value);
	json_t *req = json_pack("{s:s, s:s}", "key", k, "value", v);
	if (lease) {
		char id[32];
		snprintf(id, sizeof(id), "%" PRId64, lease);
		json_object_set_new(req, "lease", json_string(id));
	}
	free(k);
	free(v);
	json_t *r = etcd_call(e, "/v3/kv/put", req, err, errlen);
	json_decref(req);
	json_decref(r);
	return r != NULL;
}

/* The key just past every key that starts with prefix. */
static char *prefix_end(const char *prefix)
{
	char *end = strdup(prefix);
	size_t n = strlen(end);
	end[n - 1]++;
	return end;
}

json_t *etcd_get_prefix(struct etcd *e, const char *prefix, char *err, size_t errlen)
{
	int64_t rev;
	return etcd_get_prefix_rev(e, prefix, &rev, err, errlen);
}

json_t *etcd_get_prefix_rev(struct etcd *e, const char *prefix, int64_t *rev, char *err,
			    size_t errlen)
{
	char *end = prefix_end(prefix);
	char *k = b64_encode(prefix), *ke = b64_encode(end);
	json_t *req = json_pack("{s:s, s:s}", "key", k, "range_end", ke);
	free(end);
	free(k);
	free(ke);
	json_t *r = etcd_call(e, "/v3/kv/range", req, err, errlen);
	json_decref(req);
	if (!r)
		return NULL;
	const char *r_rev = json_string_value(json_object_get(json_object_get(r, "header"),
							      "revision"));
	*rev = r_rev ? strtoll(r_rev, NULL, 10) : 0;
	json_t *out = json_object();
	size_t i;
	json_t *kv;
	json_array_foreach(json_object_get(r, "kvs"), i, kv) {
		char *key = b64_decode(json_string_value(json_object_get(kv, "key")) ?: "");
		char *val = b64_decode(json_string_value(json_object_get(kv, "value")) ?: "");
		if (key && val)
			json_object_set_new(out, key, json_string(val));
		free(key);
		free(val);
	}
	json_decref(r);
	return out;
}

char *etcd_get_rev(struct etcd *e, const char *key, bool *ok, int64_t *mod_rev, char *err,
		   size_t errlen)
{
	char *k = b64_encode(key);
	json_t *req = json_pack("{s:s}", "key", k);
	free(k);
	json_t *r = etcd_call(e, "/v3/kv/range", req, err, errlen);
	json_decref(req);
	*ok = r != NULL;
	json_t *kv = json_array_get(json_object_get(r, "kvs"), 0);
	const char *v = json_string_value(json_object_get(kv, "value"));
	const char *rev = json_string_value(json_object_get(kv, "mod_revision"));
	*mod_rev = rev ? strtoll(rev, NULL, 10) : 0;
	char *value = kv ? b64_decode(v ? v : "") : NULL;
	json_decref(r);
	return value;
}

char *etcd_get(struct etcd *e, const char *key, bool *ok, char *err, size_t errlen)
{
	int64_t rev;
	return etcd_get_rev(e, key, ok, &rev, err, errlen);
}

bool etcd_put_if_rev(struct etcd *e, const char *key, const char *value, int64_t mod_rev,
		     bool *swapped, char *err, size_t errlen)
{
	char *k = b64_encode(key), *v = b64_encode(value);
	char rev[32];
	snprintf(rev, sizeof(rev), "%" PRId64, mod_rev);
	json_t *req = json_pack("{s:[{s:s, s:s, s:s, s:s}], s:[{s:{s:s, s:s}}]}", "compare",
				"key", k, "target", "MOD", "result", "EQUAL", "mod_revision", rev,
				"success", "request_put", "key", k, "value", v);
	free(k);
	free(v);
	json_t *r = etcd_call(e, "/v3/kv/txn", req, err, errlen);
	json_decref(req);
	*swapped = r && json_is_true(json_object_get(r, "succeeded"));
	json_decref(r);
	return r != NULL;
}

bool etcd_delete(struct etcd *e, const char *key, char *err, size_t errlen)
{
	char *k = b64_encode(key);
	json_t *req = json_pack("{s:s}", "key", k);
	free(k);
	json_t *r = etcd_call(e, "/v3/kv/deleterange", req, err, errlen);
	json_decref(req);
	json_decref(r);
	return r != NULL;
}

bool etcd_create(struct etcd *e, const char *key, const char *value, int64_t lease,
		 bool *created, char *err, size_t errlen)
{
	char *k = b64_encode(key), *v = b64_encode(value);
	json_t *put = json_pack("{s:s, s:s}", "key", k, "value", v);
	if (lease) {
		char id[32];
		snprintf(id, sizeof(id), "%" PRId64, lease);
		json_object_set_new(put, "lease", json_string(id));
	}
	/* the key's create_revision is 0 only while it does not exist */
	json_t *req = json_pack("{s:[{s:s, s:s, s:s, s:s}], s:[{s:o}]}", "compare", "key", k,
				"target", "CREATE", "result", "EQUAL", "create_revision", "0",
				"success", "request_put", put);
	free(k);
	free(v);
	json_t *r = etcd_call(e, "/v3/kv/txn", req, err, errlen);
	json_decref(req);
	*created = r && json_is_true(json_object_get(r, "succeeded"));
	json_decref(r);
	return r != NULL;
}

/* The watch's stream, read until its first event. */
struct watch_stream {
	char buf[4096];
	size_t len;
	bool event;
};

static size_t watch_data(char *data, size_t size, size_t n, void *arg)
{
	struct watch_stream *w = arg;
	size_t len = size * n, room = sizeof(w->buf) - 1 - w->len;
	memcpy(w->buf + w->len, data, len < room ? len : room);
	w->len += len < room ? len : room;
	w->buf[w->len] = 0;
	if (strstr(w->buf, "\"events\"")) {
		w->event = true;
		return 0;   /* enough: ends the transfer */
	}
	if (w->len > sizeof(w->buf) / 2) {   /* the "created" answer: keep only the tail */
		memmove(w->buf, w->buf + w->len - 64, 64);
		w->len = 64;
	}
	return len;
}

int etcd_watch_delete(struct etcd *e, const char *prefix, int64_t from_rev, int timeout_ms)
{
	char *end = prefix_end(prefix);
	char *k = b64_encode(prefix), *ke = b64_encode(end);
	char rev[32];
	snprintf(rev, sizeof(rev), "%" PRId64, from_rev);
	json_t *req = json_pack("{s:{s:s, s:s, s:s, s:[s]}}", "create_request", "key", k,
				"range_end", ke, "start_revision", rev, "filters", "NOPUT");
	char *body = json_dumps(req, JSON_COMPACT);
	json_decref(req);
	free(end);
	free(k);
	free(ke);
	char url[512];
	snprintf(url, sizeof(url), "%s/v3/watch", e->urls[e->current]);
	struct watch_stream w = { .len = 0 };
	CURL *c = curl_easy_init();
	struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, watch_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &w);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	CURLcode rc = curl_easy_perform(c);
	curl_slist_free_all(headers);
	curl_easy_cleanup(c);
	free(body);
	if (w.event)
		return 1;
	/* a stream that timed out after it was answered: no event */
	return rc == CURLE_OPERATION_TIMEDOUT && w.len ? 0 : -1;
}
