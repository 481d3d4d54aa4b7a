/*
 * test_cluster_common.c - the cluster plane's common pieces that need no
 * network: token files and checks (hashed, roles, constant-time compare),
 * time parsing for --at, the console tail ferryd reports, and the HTTP
 * server and client talking to each other over loopback (error bodies,
 * a body that is not JSON), the streaming JSON writer (the same bytes as
 * json_dumps for the same document, escapes and reals included).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cluster/common/auth.h"
#include "cluster/common/http_client.h"
#include "cluster/common/http_server.h"
#include "cluster/common/jsonw.h"
#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *temp_file(const char *text)
{
	char *path = strdup("/tmp/ferry-unit-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

static void test_sha256(void **state)
{
	(void)state;
	char h[65];
	sha256_hex("abc", 3, h);
	assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_tokens(void **state)
{
	(void)state;
	char admin[65], ro[65], file[512];
	sha256_hex("s3cret", 6, admin);
	sha256_hex("viewer-token", 12, ro);
	snprintf(file, sizeof(file), "# tokens\nadmin %s alice\nread-only %s bob\npresent agent-tok\n",
		 admin, ro);
	char *path = temp_file(file);
	struct auth a;
	char err[256], user[64];
	assert_true(auth_load(&a, path, err, sizeof(err)));
	assert_string_equal(a.present, "agent-tok");
	assert_int_equal(auth_check(&a, "Bearer s3cret", user, sizeof(user)), ROLE_ADMIN);
	assert_string_equal(user, "alice");
	assert_int_equal(auth_check(&a, "Bearer viewer-token", user, sizeof(user)), ROLE_READ_ONLY);
	assert_int_equal(auth_check(&a, "Bearer wrong", user, sizeof(user)), ROLE_NONE);
	assert_int_equal(auth_check(&a, "Basic s3cret", user, sizeof(user)), ROLE_NONE);
	assert_int_equal(auth_check(&a, NULL, user, sizeof(user)), ROLE_NONE);
	unlink(path);
	free(path);
	free(a.entries);
	free(a.present);

	path = temp_file("admin not-a-hash\n");
	assert_false(auth_load(&a, path, err, sizeof(err)));
	assert_non_null(strstr(err, ":1:"));
	unlink(path);
	free(path);
	free(a.entries);
}

static void test_parse_time(void **state)
{
	(void)state;
	assert_int_equal(parse_time("2026-12-02T05:00:00Z"), 1796187600);
	assert_int_equal(parse_time("2026-12-02T05:00:00"), 1796187600);
	time_t now = time(NULL);
	time_t t = parse_time("+10m");
	assert_true(t >= now + 600 && t <= now + 601);
	assert_true(parse_time("+2h") >= now + 7200);
	assert_int_equal(parse_time("+10x"), -1);
	assert_int_equal(parse_time("tomorrow"), -1);
	assert_int_equal(parse_time("2026-12-02T05:00:00+02:00"), -1);
	assert_int_equal(parse_time(""), -1);
}

static void test_file_tail(void **state)
{
	(void)state;
	char *path = temp_file("one\r\ntwo\nthree\nfour\n");
	char *t = file_tail(path, 2, 4096);
	assert_string_equal(t, "three\nfour\n");
	free(t);
	t = file_tail(path, 0, 4096);
	assert_string_equal(t, "one\ntwo\nthree\nfour\n");
	free(t);
	unlink(path);
	free(path);
	t = file_tail("/nonexistent/ferry", 3, 100);
	assert_string_equal(t, "");
	free(t);
}

static void echo_handler(void *ctx, const struct http_request *req, struct http_response *resp)
{
	(void)ctx;
	if (!strcmp(req->path, "/missing")) {
		reply_error(resp, 404, "no such thing", "look elsewhere");
		return;
	}
	json_t *body = parse_body(req, resp);
	if (!body)
		return;
	json_object_set_new(body, "method", json_string(req->method));
	json_object_set_new(body, "auth", json_string(req->auth ? req->auth : ""));
	reply_json(resp, 200, body);
}

static void test_http_roundtrip(void **state)
{
	(void)state;
	char err[256], url[128];
	struct http_server *s = NULL;
	int port;
	for (port = 39100; port < 39200 && !s; port++)
		s = http_server_start((snprintf(url, sizeof(url), "127.0.0.1:%d", port), url),
				      echo_handler, NULL, err, sizeof(err));
	assert_non_null(s);
	http_client_init();
	long status;
	json_t *in = json_pack("{s:i}", "n", 42);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", port - 1);
	json_t *r = http_json("POST", url, "tok", in, 5000, &status, err, sizeof(err));
	assert_non_null(r);
	assert_int_equal(status, 200);
	assert_int_equal(json_integer_value(json_object_get(r, "n")), 42);
	assert_string_equal(json_string_value(json_object_get(r, "auth")), "Bearer tok");
	json_decref(r);
	char *text = http_raw("POST", url, NULL, "{nope", NULL, 5000, &status, err, sizeof(err));
	assert_int_equal(status, 400);
	assert_non_null(strstr(text, "\"bad_request\""));
	free(text);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/missing", port - 1);
	r = http_json("GET", url, NULL, NULL, 5000, &status, err, sizeof(err));
	assert_int_equal(status, 404);
	assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "hint")),
			    "look elsewhere");
	json_decref(r);
	json_decref(in);
	http_server_stop(s);
	/* nothing listens now: an error, not a crash */
	assert_null(http_json("GET", url, NULL, NULL, 2000, &status, err, sizeof(err)));
	assert_int_equal(status, 0);
}

/* jsonw writes what json_dumps(JSON_COMPACT) writes for the same document. */
static void test_jsonw_matches_jansson(void **state)
{
	(void)state;
	const char *odd = "q\"b\\s/\n\t\r\b\f\x01\x1f \xc3\xa9t\xc3\xa9";
	json_t *doc = json_pack("{s:s, s:[{s:i, s:f, s:f, s:f, s:f}, {}, []], s:n, s:{s:[i]}, s:f}",
				"name", odd, "rows", "n", 42, "load", 0.4, "whole", 2.0, "neg",
				-1.5e-300, "small", 1e-5, "none", "nested", "a", -7, "big", 1e300);
	struct jsonw w;
	jw_init(&w);
	jw_object(&w);
	jw_key(&w, "name");
	jw_string(&w, odd);
	jw_key(&w, "rows");
	jw_array(&w);
	jw_object(&w);
	jw_key(&w, "n");
	jw_integer(&w, 42);
	jw_key(&w, "load");
	jw_real(&w, 0.4);
	jw_key(&w, "whole");
	jw_real(&w, 2.0);
	jw_key(&w, "neg");
	jw_real(&w, -1.5e-300);
	jw_key(&w, "small");
	jw_real(&w, 1e-5);
	jw_object_end(&w);
	jw_json(&w, json_array_get(json_object_get(doc, "rows"), 1));   /* {} */
	jw_raw(&w, "[]", 2);
	jw_array_end(&w);
	jw_key(&w, "none");
	jw_string(&w, NULL);
	jw_key(&w, "nested");
	jw_json(&w, json_object_get(doc, "nested"));
	jw_key(&w, "big");
	jw_real(&w, 1e300);
	jw_object_end(&w);
	size_t len;
	char *text = jw_take(&w, &len);
	char *want = json_dumps(doc, JSON_COMPACT);
	assert_string_equal(text, want);
	assert_int_equal(len, strlen(want));
	json_t *back = json_loads(text, 0, NULL);
	assert_true(json_equal(back, doc));
	json_decref(back);
	free(want);
	free(text);
	json_decref(doc);

	jw_init(&w);   /* an empty writer gives an empty string */
	text = jw_take(&w, &len);
	assert_string_equal(text, "");
	assert_int_equal(len, 0);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256),
		cmocka_unit_test(test_tokens),
		cmocka_unit_test(test_parse_time),
		cmocka_unit_test(test_file_tail),
		cmocka_unit_test(test_http_roundtrip),
		cmocka_unit_test(test_jsonw_matches_jansson),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
