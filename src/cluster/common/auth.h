/*
 * auth.h - bearer tokens, stored hashed.
 *
 * A token file has lines "ROLE SHA256HEX [USER]" (ROLE admin, read-only or
 * agent) and at most one "present TOKEN": the token this process sends
 * when it calls a ferryd. Only hashes of accepted tokens are kept; a call's
 * token is hashed and compared in constant time.
 */
#ifndef FERRY_AUTH_H
#define FERRY_AUTH_H

#include <stdbool.h>
#include <stddef.h>

enum auth_role { ROLE_NONE, ROLE_READ_ONLY, ROLE_ADMIN, ROLE_AGENT };

struct auth_entry {
	char hash[65];
	char user[64];
	enum auth_role role;
};

struct auth {
	struct auth_entry *entries;
	int n;
	char *present;   /* the token this process sends, or NULL */
};

/* Loads FILE; false with a message in err. */
bool auth_load(struct auth *a, const char *file, char *err, size_t errlen);

/* The role of the token in an "Authorization: Bearer T" header (ROLE_NONE
 * if missing or unknown); user gets the token's user name. */
enum auth_role auth_check(const struct auth *a, const char *header, char *user, size_t len);

const char *auth_role_name(enum auth_role r);

/* SHA-256 of data as 64 hex digits and a NUL. */
void sha256_hex(const void *data, size_t len, char out[65]);

#endif
