/*
 * audit.c - the audit trail: an append-only table (SQLite triggers refuse
 * UPDATE and DELETE) where each record carries the SHA-256 of the record
 * before it and its own: hash = SHA-256(prev_hash | id | time | user | from |
 * action | target | result | details). Editing any row, or deleting one,
 * breaks the chain, and audit_verify says where.
 */
#include "cluster/center/center.h"

#include "cluster/common/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void record_hash(json_t *row, const char *prev, char out[65])
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	fprintf(f, "%s|%lld|%lld|%s|%s|%s|%s|%s|%s", prev,
		json_integer_value(json_object_get(row, "id")),
		json_integer_value(json_object_get(row, "time")),
		json_string_value(json_object_get(row, "user")) ?: "",
		json_string_value(json_object_get(row, "addr")) ?: "",
		json_string_value(json_object_get(row, "action")) ?: "",
		json_string_value(json_object_get(row, "target")) ?: "",
		json_string_value(json_object_get(row, "result")) ?: "",
		json_string_value(json_object_get(row, "details")) ?: "");
	fclose(f);
	sha256_hex(text, len, out);
	free(text);
}

void audit_append(const char *user, const char *from, const char *action, const char *target,
		  const char *result, json_t *details)
{
	json_t *last = db_row("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1", NULL);
	const char *prev = json_string_value(json_object_get(last, "hash")) ?: "";
	long long id = json_integer_value(json_object_get(last, "id")) + 1;
	char *dtext = details ? json_dumps(details, JSON_COMPACT | JSON_SORT_KEYS) : strdup("{}");
	json_t *row = json_pack("{s:I, s:I, s:s, s:s, s:s, s:s, s:s, s:s}", "id", (json_int_t)id,
				"time", (json_int_t)time(NULL), "user", user, "addr", from,
				"action", action, "target", target ? target : "", "result", result,
				"details", dtext);
	char hash[65];
	record_hash(row, prev, hash);
	db_exec("INSERT INTO audit(id, time, user, addr, action, target, result, details,"
		" prev_hash, hash) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		json_pack("[O, O, O, O, O, O, O, O, s, s]", json_object_get(row, "id"),
			  json_object_get(row, "time"), json_object_get(row, "user"),
			  json_object_get(row, "addr"), json_object_get(row, "action"),
			  json_object_get(row, "target"), json_object_get(row, "result"),
			  json_object_get(row, "details"), prev, hash));
	json_decref(row);
	json_decref(last);
	free(dtext);
}

json_t *audit_verify(void)
{
	json_t *rows = db_query("SELECT * FROM audit ORDER BY id", NULL);
	char prev[65] = "";
	size_t i;
	json_t *r;
	json_array_foreach(rows, i, r) {
		long long id = json_integer_value(json_object_get(r, "id"));
		const char *why = NULL;
		char h[65];
		record_hash(r, prev, h);
		if (strcmp(json_string_value(json_object_get(r, "prev_hash")) ?: "", prev))
			why = "its prev_hash is not the hash of the record before (a record was "
			      "removed or inserted)";
		else if (strcmp(json_string_value(json_object_get(r, "hash")) ?: "", h))
			why = "its hash does not match its contents (the record was edited)";
		if (why) {
			json_t *out = json_pack("{s:b, s:I, s:I, s:s}", "ok", 0, "records",
						(json_int_t)json_array_size(rows), "first_bad",
						(json_int_t)id, "reason", why);
			json_decref(rows);
			return out;
		}
		snprintf(prev, sizeof(prev), "%s", json_string_value(json_object_get(r, "hash")) ?: "");
	}
	json_t *out = json_pack("{s:b, s:I}", "ok", 1, "records", (json_int_t)json_array_size(rows));
	json_decref(rows);
	return out;
}
