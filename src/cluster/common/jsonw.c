/*
 * jsonw.c - the streaming JSON writer (see jsonw.h).
 */
#include "cluster/common/jsonw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void jw_init(struct jsonw *w)
{
	memset(w, 0, sizeof(*w));
	w->first[0] = true;
}

void jw_free(struct jsonw *w)
{
	free(w->buf);
	jw_init(w);
}

static void put(struct jsonw *w, const char *p, size_t n)
{
	if (w->len + n + 1 > w->cap) {
		size_t cap = w->cap ? w->cap : 4096;
		while (w->len + n + 1 > cap)
			cap *= 2;
		w->buf = realloc(w->buf, cap);
		if (!w->buf)
			abort();
		w->cap = cap;
	}
	memcpy(w->buf + w->len, p, n);
	w->len += n;
	w->buf[w->len] = 0;
}

char *jw_take(struct jsonw *w, size_t *len)
{
	if (!w->buf)
		put(w, "", 0);
	char *text = w->buf;
	if (len)
		*len = w->len;
	w->buf = NULL;
	jw_free(w);
	return text;
}

/* Before any value or key: the comma after a sibling. */
static void separate(struct jsonw *w)
{
	if (w->after_key) {
		w->after_key = false;
		return;
	}
	if (!w->first[w->depth])
		put(w, ",", 1);
	w->first[w->depth] = false;
}

static void open_(struct jsonw *w, char c)
{
	separate(w);
	if (w->depth == JSONW_DEPTH)
		abort();
	put(w, &c, 1);
	w->first[++w->depth] = true;
}

static void close_(struct jsonw *w, char c)
{
	put(w, &c, 1);
	w->depth--;
}

void jw_object(struct jsonw *w) { open_(w, '{'); }
void jw_object_end(struct jsonw *w) { close_(w, '}'); }
void jw_array(struct jsonw *w) { open_(w, '['); }
void jw_array_end(struct jsonw *w) { close_(w, ']'); }

static void quoted(struct jsonw *w, const char *s)
{
	put(w, "\"", 1);
	const char *run = s;   /* bytes that need no escape, copied at once */
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		put(w, run, (size_t)(s - run));
		char esc[8];
		switch (c) {
		case '"': put(w, "\\\"", 2); break;
		case '\\': put(w, "\\\\", 2); break;
		case '\b': put(w, "\\b", 2); break;
		case '\f': put(w, "\\f", 2); break;
		case '\n': put(w, "\\n", 2); break;
		case '\r': put(w, "\\r", 2); break;
		case '\t': put(w, "\\t", 2); break;
		default:
			snprintf(esc, sizeof(esc), "\\u%04X", c);
			put(w, esc, 6);
		}
		run = s + 1;
	}
	put(w, run, (size_t)(s - run));
	put(w, "\"", 1);
}

void jw_key(struct jsonw *w, const char *key)
{
	separate(w);
	quoted(w, key);
	put(w, ":", 1);
	w->after_key = true;
}

void jw_string(struct jsonw *w, const char *s)
{
	if (!s) {
		jw_null(w);
		return;
	}
	separate(w);
	quoted(w, s);
}

void jw_integer(struct jsonw *w, long long v)
{
	char t[24];
	int n = snprintf(t, sizeof(t), "%lld", v);
	separate(w);
	put(w, t, (size_t)n);
}

/* As jansson's dtostr: "%.17g", a whole number gets ".0", an exponent
 * loses its '+' and leading zeros (1e+300 -> 1e300, 1e-05 -> 1e-5). */
void jw_real(struct jsonw *w, double v)
{
	char t[40];
	snprintf(t, sizeof(t), "%.17g", v);
	char *e = strchr(t, 'e');
	if (e) {
		char *digits = e + 1 + (e[1] == '-' || e[1] == '+');
		char *from = digits;
		while (*from == '0' && from[1])
			from++;
		memmove(e[1] == '+' ? e + 1 : digits, from, strlen(from) + 1);
	} else if (!strpbrk(t, ".ni")) {   /* (inf, nan: json_real refuses them) */
		strcat(t, ".0");
	}
	separate(w);
	put(w, t, strlen(t));
}

void jw_null(struct jsonw *w)
{
	separate(w);
	put(w, "null", 4);
}

void jw_raw(struct jsonw *w, const char *json, size_t len)
{
	separate(w);
	put(w, json, len);
}

void jw_json(struct jsonw *w, const json_t *v)
{
	char *t = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
	if (!t) {
		jw_null(w);
		return;
	}
	jw_raw(w, t, strlen(t));
	free(t);
}
