/*
 * http_client.c - HTTP calls over libcurl (see http_client.h).
 */
#include "cluster/common/http_client.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct buffer {
	char *data;
	size_t len;
};

void http_client_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct buffer *b = userdata;
	size_t n = size * nmemb;
	char *d = realloc(b->data, b->len + n + 1);
	if (!d)
		return 0;
	b->data = d;
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = 0;
	return n;
}

char *http_raw(const char *method, const char *url, const char *token, const char *body,
	       const char *content_type, long timeout_ms, long *status, char *err,
	       size_t errlen)
{
	*status = 0;
	CURL *c = curl_easy_init();
	if (!c) {
		snprintf(err, errlen, "cannot create a curl handle");
		return NULL;
	}
	struct buffer b = { .data = calloc(1, 1) };
	struct curl_slist *headers = NULL;
	char line[600];
	if (token) {
		snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
		headers = curl_slist_append(headers, line);
	}
	if (body) {
		snprintf(line, sizeof(line), "Content-Type: %s",
			 content_type ? content_type : "application/json");
		headers = curl_slist_append(headers, line);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	}
	headers = curl_slist_append(headers, "Expect:");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 3000 ? timeout_ms : 3000);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	CURLcode rc = curl_easy_perform(c);
	if (rc != CURLE_OK) {
		snprintf(err, errlen, "%s %s: %s", method, url, curl_easy_strerror(rc));
		free(b.data);
		b.data = NULL;
	} else {
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	}
	curl_slist_free_all(headers);
	curl_easy_cleanup(c);
	return b.data;
}

json_t *http_json(const char *method, const char *url, const char *token, json_t *body,
		  long timeout_ms, long *status, char *err, size_t errlen)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	char *reply = http_raw(method, url, token, text, NULL, timeout_ms, status, err, errlen);
	free(text);
	if (!reply)
		return NULL;
	if (!reply[0]) {
		free(reply);
		return json_null();
	}
	json_error_t je;
	json_t *j = json_loads(reply, 0, &je);
	if (!j)
		snprintf(err, errlen, "%s %s: HTTP %ld, reply is not JSON (%s): %.200s", method,
			 url, *status, je.text, reply);
	free(reply);
	return j;
}
