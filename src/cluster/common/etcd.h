/*
 * etcd.h - an etcd v3 client over its JSON gateway (etcd 3.4: /v3/kv/put,
 * /v3/kv/range, /v3/lease/grant, /v3/lease/keepalive, /v3/kv/txn,
 * /v3/kv/deleterange). Keys and values
 * travel base64-encoded; lease IDs as decimal strings. Each call tries the
 * cluster's URLs in turn until one answers, so losing a member is
 * invisible to the caller.
 */
#ifndef FERRY_ETCD_H
#define FERRY_ETCD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct etcd {
	char **urls;
	int n;
	int current;   /* the member that answered last */
	int timeout_ms; /* per member and call; 0: 2000 */
};

/* "http://a:2379,http://b:2379"; false when empty. */
bool etcd_init(struct etcd *e, const char *urls);

/* A lease of ttl seconds; 0 on failure (message in err). */
int64_t etcd_lease_grant(struct etcd *e, int ttl, char *err, size_t errlen);
/* Renews the lease; false when etcd does not answer or the lease is gone. */
bool etcd_lease_keepalive(struct etcd *e, int64_t lease, char *err, size_t errlen);
/* A lease's remaining seconds, rounded down (0: under one), -1 when it has
 * expired (or etcd never knew it), -2 when etcd did not answer. */
int64_t etcd_lease_ttl(struct etcd *e, int64_t lease, char *err, size_t errlen);
bool etcd_put(struct etcd *e, const char *key, const char *value, int64_t lease,
	      char *err, size_t errlen);
/* One key's value (malloc'd); NULL with *ok true when it is absent, NULL
 * with *ok false when etcd did not answer. */
char *etcd_get(struct etcd *e, const char *key, bool *ok, char *err, size_t errlen);
/* The same with the key's mod_revision (0 when absent). */
char *etcd_get_rev(struct etcd *e, const char *key, bool *ok, int64_t *mod_rev, char *err,
		   size_t errlen);
/* Puts key = value only if its mod_revision is still mod_rev (one
 * transaction); *swapped says whether it was. False when etcd did not answer. */
bool etcd_put_if_rev(struct etcd *e, const char *key, const char *value, int64_t mod_rev,
		     bool *swapped, char *err, size_t errlen);
bool etcd_delete(struct etcd *e, const char *key, char *err, size_t errlen);
/* Creates key = value (held by lease, 0: none) only if the key is absent,
 * in one transaction (/v3/kv/txn); *created says whether it was. False
 * when etcd did not answer. */
bool etcd_create(struct etcd *e, const char *key, const char *value, int64_t lease,
		 bool *created, char *err, size_t errlen);
/* Every key under prefix: a JSON object key -> value (strings); NULL on failure. */
json_t *etcd_get_prefix(struct etcd *e, const char *prefix, char *err, size_t errlen);
/* The same with the store's revision at that read (*rev). */
json_t *etcd_get_prefix_rev(struct etcd *e, const char *prefix, int64_t *rev, char *err,
			    size_t errlen);
/* Waits up to timeout_ms for a key under prefix to be deleted (a lease
 * expiring deletes its keys) at revision from_rev or later (/v3/watch,
 * streamed): 1 when one was, 0 when none was in that time, -1 when etcd
 * did not answer. */
int etcd_watch_delete(struct etcd *e, const char *prefix, int64_t from_rev, int timeout_ms);

#endif
