/*
 * jsonw.h - a small streaming JSON writer: values appended to one growing
 * buffer, with the commas and the string escaping done here.
 *
 * For replies too big to build as a jansson tree first (the placement
 * wizard's 2,500 candidates: a json_t per row and a json_dumps of ~370 KB
 * cost most of the call). Strings are escaped as json_dumps does by
 * default (", \, control characters; UTF-8 passed through, '/' kept);
 * reals are written as json_dumps writes them ("%.17g", ".0" added to a
 * whole number). Writing never fails: it aborts when memory runs out.
 * Nesting is at most JSONW_DEPTH deep.
 */
#ifndef FERRY_JSONW_H
#define FERRY_JSONW_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define JSONW_DEPTH 16

struct jsonw {
	char *buf;
	size_t len, cap;
	int depth;
	bool after_key;               /* the next value is a key's */
	bool first[JSONW_DEPTH + 1];  /* nothing written yet at this depth */
};

void jw_init(struct jsonw *w);
void jw_free(struct jsonw *w);
/* The text (NUL-terminated, malloc'd, the caller's) and its length; w is
 * empty afterwards. */
char *jw_take(struct jsonw *w, size_t *len);

void jw_object(struct jsonw *w);
void jw_object_end(struct jsonw *w);
void jw_array(struct jsonw *w);
void jw_array_end(struct jsonw *w);
void jw_key(struct jsonw *w, const char *key);

void jw_string(struct jsonw *w, const char *s);   /* NULL: null */
void jw_integer(struct jsonw *w, long long v);
void jw_real(struct jsonw *w, double v);
void jw_null(struct jsonw *w);
/* A value already encoded as JSON text (len bytes), copied as it is. */
void jw_raw(struct jsonw *w, const char *json, size_t len);
/* A jansson value (NULL: null), encoded compact. */
void jw_json(struct jsonw *w, const json_t *v);

#endif
