/*
 * db.c - ferry-center's SQLite database: schema and small query helpers
 * that bind JSON parameters and return rows as JSON objects.
 */
#include "cluster/center/center.h"

#include "cluster/common/util.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

pthread_mutex_t db_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int api_waiting;   /* API calls waiting for db_lock */

void db_lock_api(void)
{
	atomic_fetch_add(&api_waiting, 1);
	pthread_mutex_lock(&db_lock);
	atomic_fetch_sub(&api_waiting, 1);
}

void db_lock_background(void)
{
	for (int i = 0; i < 100 && atomic_load(&api_waiting) > 0; i++)
		usleep(500);
	pthread_mutex_lock(&db_lock);
}

static const char schema[] =
	"PRAGMA journal_mode=WAL;"
	"PRAGMA synchronous=NORMAL;"
	"CREATE TABLE IF NOT EXISTS hosts(name TEXT PRIMARY KEY, url TEXT, address TEXT,"
	"  alive INTEGER DEFAULT 0, maintenance INTEGER DEFAULT 0, last_seen INTEGER,"
	"  report TEXT);"
	"CREATE TABLE IF NOT EXISTS datastores(host TEXT, name TEXT, path TEXT,"
	"  free_mib INTEGER, PRIMARY KEY(host, name));"
	"CREATE TABLE IF NOT EXISTS networks(host TEXT, name TEXT, bridge TEXT,"
	"  present INTEGER, PRIMARY KEY(host, name));"
	"CREATE TABLE IF NOT EXISTS vms(name TEXT PRIMARY KEY, host TEXT, state TEXT,"
	"  spec TEXT, created INTEGER, exit_status INTEGER, last_console TEXT);"
	"CREATE INDEX IF NOT EXISTS vms_host ON vms(host);"
	"CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, kind TEXT, vm TEXT,"
	"  source TEXT, destination TEXT, state TEXT, priority INTEGER DEFAULT 0,"
	"  at INTEGER, created INTEGER, started INTEGER, finished INTEGER, user TEXT,"
	"  waiting TEXT, progress TEXT, estimate TEXT, total_ms INTEGER,"
	"  downtime_ms INTEGER, error TEXT, downtime_target INTEGER, cancel INTEGER DEFAULT 0,"
	"  bandwidth_mbps INTEGER, yielding TEXT);"
	"CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);"
	"CREATE TABLE IF NOT EXISTS audit(id INTEGER PRIMARY KEY, time INTEGER, user TEXT,"
	"  addr TEXT, action TEXT, target TEXT, result TEXT, details TEXT, prev_hash TEXT,"
	"  hash TEXT);"
	"CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit BEGIN"
	"  SELECT RAISE(ABORT, 'the audit trail is append-only'); END;"
	"CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN"
	"  SELECT RAISE(ABORT, 'the audit trail is append-only'); END;"
	"CREATE INDEX IF NOT EXISTS tasks_kind_state ON tasks(kind, state);"
	"CREATE INDEX IF NOT EXISTS vms_host_name ON vms(host, name);"
	"CREATE INDEX IF NOT EXISTS tasks_vm ON tasks(vm);"
	"CREATE INDEX IF NOT EXISTS audit_target ON audit(target);"
	"CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT);"
	"CREATE TABLE IF NOT EXISTS rules(name TEXT PRIMARY KEY, kind TEXT, vms TEXT,"
	"  created INTEGER, user TEXT);";

bool db_open(const char *path, char *err, size_t errlen)
{
	if (sqlite3_open(path, &ctr.db) != SQLITE_OK) {
		snprintf(err, errlen, "cannot open database %s: %s", path, sqlite3_errmsg(ctr.db));
		return false;
	}
	sqlite3_busy_timeout(ctr.db, 5000);
	char *msg = NULL;
	if (sqlite3_exec(ctr.db, schema, NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(err, errlen, "database %s: %s", path, msg);
		sqlite3_free(msg);
		return false;
	}
	/* the facts the wizard ranks by, as columns (inventory.c writes them
	 * from each report); a database from before them gains them here */
	/* and DPM's standby (drs.h), each VM's CPU use (drs.c samples it), and
	 * why a host's ferryd did not answer its last report, since when */
	const char *columns[] = { "hosts ADD COLUMN free_mib INTEGER", "hosts ADD COLUMN isa TEXT",
				  "hosts ADD COLUMN load REAL",
				  "hosts ADD COLUMN standby INTEGER DEFAULT 0",
				  "vms ADD COLUMN cpu_pid INTEGER", "vms ADD COLUMN cpu_s REAL",
				  "vms ADD COLUMN cpu_at INTEGER", "vms ADD COLUMN cpu_rate REAL",
				  "hosts ADD COLUMN unreachable TEXT",
				  "hosts ADD COLUMN unreachable_since INTEGER",
				  "tasks ADD COLUMN datastore TEXT", "datastores ADD COLUMN id TEXT",
				  "vms ADD COLUMN disk_mib INTEGER",
				  "vms ADD COLUMN disk_alloc_mib INTEGER",
				  "vms ADD COLUMN ha_waiting TEXT" };
	for (size_t i = 0; i < sizeof(columns) / sizeof(columns[0]); i++) {
		char sql[128];
		snprintf(sql, sizeof(sql), "ALTER TABLE %s", columns[i]);
		sqlite3_exec(ctr.db, sql, NULL, NULL, NULL);   /* fails when it exists */
	}
	return true;
}

static bool bind_params(sqlite3_stmt *st, json_t *params)
{
	size_t i;
	json_t *v;
	json_array_foreach(params, i, v) {
		int idx = (int)i + 1;
		if (json_is_string(v))
			sqlite3_bind_text(st, idx, json_string_value(v), -1, SQLITE_TRANSIENT);
		else if (json_is_integer(v))
			sqlite3_bind_int64(st, idx, json_integer_value(v));
		else if (json_is_real(v))
			sqlite3_bind_double(st, idx, json_real_value(v));
		else if (json_is_boolean(v))
			sqlite3_bind_int(st, idx, json_is_true(v));
		else if (json_is_null(v))
			sqlite3_bind_null(st, idx);
		else
			return false;
	}
	return true;
}

json_t *db_query(const char *sql, json_t *params)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(ctr.db, sql, -1, &st, NULL) != SQLITE_OK) {
		logf_("sqlite: %s: %s", sqlite3_errmsg(ctr.db), sql);
		return NULL;
	}
	if (params && !bind_params(st, params)) {
		sqlite3_finalize(st);
		return NULL;
	}
	json_t *rows = json_array();
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		json_t *row = json_object();
		for (int c = 0; c < sqlite3_column_count(st); c++) {
			const char *name = sqlite3_column_name(st, c);
			switch (sqlite3_column_type(st, c)) {
			case SQLITE_INTEGER:
				json_object_set_new(row, name, json_integer(sqlite3_column_int64(st, c)));
				break;
			case SQLITE_FLOAT:
				json_object_set_new(row, name, json_real(sqlite3_column_double(st, c)));
				break;
			case SQLITE_NULL:
				json_object_set_new(row, name, json_null());
				break;
			default:
				json_object_set_new(row, name,
						    json_string((const char *)sqlite3_column_text(st, c)));
			}
		}
		json_array_append_new(rows, row);
	}
	if (rc != SQLITE_DONE) {
		logf_("sqlite: %s: %s", sqlite3_errmsg(ctr.db), sql);
		json_decref(rows);
		rows = NULL;
	}
	sqlite3_finalize(st);
	return rows;
}

bool db_exec(const char *sql, json_t *params)
{
	json_t *r = db_query(sql, params);
	json_decref(params);
	bool ok = r != NULL;
	json_decref(r);
	return ok;
}

json_t *db_row(const char *sql, json_t *params)
{
	json_t *r = db_query(sql, params);
	json_decref(params);
	json_t *row = json_array_size(r) ? json_incref(json_array_get(r, 0)) : NULL;
	json_decref(r);
	return row;
}

long long db_setting_int(const char *key, long long dflt)
{
	json_t *row = db_row("SELECT value FROM settings WHERE key = ?", json_pack("[s]", key));
	long long v = dflt;
	const char *s = json_string_value(json_object_get(row, "value"));
	if (s)
		v = atoll(s);
	json_decref(row);
	return v;
}

void db_setting_str(const char *key, const char *dflt, char *out, size_t len)
{
	json_t *row = db_row("SELECT value FROM settings WHERE key = ?", json_pack("[s]", key));
	snprintf(out, len, "%s", json_string_value(json_object_get(row, "value")) ?: dflt);
	json_decref(row);
}

void db_setting_set(const char *key, const char *value)
{
	db_exec("INSERT INTO settings(key, value) VALUES(?, ?) "
		"ON CONFLICT(key) DO UPDATE SET value = excluded.value",
		json_pack("[s, s]", key, value));
}

void iso_or_null(json_t *obj, const char *key, json_t *secs)
{
	if (json_is_integer(secs)) {
		char t[40];
		iso_time((time_t)json_integer_value(secs), t, sizeof(t));
		json_object_set_new(obj, key, json_string(t));
	} else {
		json_object_set_new(obj, key, json_null());
	}
}
