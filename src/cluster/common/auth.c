/*
 * auth.c - bearer tokens (see auth.h). SHA-256 comes from OpenSSL.
 */
#include "cluster/common/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	for (unsigned i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", md[i]);
	out[64] = 0;
}

const char *auth_role_name(enum auth_role r)
{
	switch (r) {
	case ROLE_ADMIN: return "admin";
	case ROLE_READ_ONLY: return "read-only";
	case ROLE_AGENT: return "agent";
	default: return "none";
	}
}

static enum auth_role parse_role(const char *s)
{
	if (!strcmp(s, "admin"))
		return ROLE_ADMIN;
	if (!strcmp(s, "read-only"))
		return ROLE_READ_ONLY;
	if (!strcmp(s, "agent"))
		return ROLE_AGENT;
	return ROLE_NONE;
}

bool auth_load(struct auth *a, const char *file, char *err, size_t errlen)
{
	memset(a, 0, sizeof(*a));
	FILE *f = fopen(file, "r");
	if (!f) {
		snprintf(err, errlen, "cannot read token file %s: %m", file);
		return false;
	}
	char line[512];
	int lineno = 0;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		char role[32], value[256], user[64] = "";
		char *hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		int n = sscanf(line, "%31s %255s %63s", role, value, user);
		if (n <= 0)
			continue;
		if (n >= 2 && !strcmp(role, "present")) {
			free(a->present);
			a->present = strdup(value);
			continue;
		}
		enum auth_role r = parse_role(role);
		if (n < 2 || r == ROLE_NONE || strlen(value) != 64) {
			snprintf(err, errlen, "%s:%d: want \"ROLE SHA256HEX [USER]\" with ROLE admin, "
				 "read-only or agent, or \"present TOKEN\"", file, lineno);
			fclose(f);
			return false;
		}
		struct auth_entry *e = realloc(a->entries, (a->n + 1) * sizeof(*e));
		if (!e)
			break;
		a->entries = e;
		e = &a->entries[a->n++];
		snprintf(e->hash, sizeof(e->hash), "%s", value);
		snprintf(e->user, sizeof(e->user), "%s", user[0] ? user : role);
		e->role = r;
	}
	fclose(f);
	return true;
}

enum auth_role auth_check(const struct auth *a, const char *header, char *user, size_t len)
{
	if (user && len)
		user[0] = 0;
	if (!header || strncasecmp(header, "Bearer ", 7))
		return ROLE_NONE;
	const char *token = header + 7;
	while (*token == ' ')
		token++;
	char h[65];
	sha256_hex(token, strlen(token), h);
	for (int i = 0; i < a->n; i++) {
		if (!CRYPTO_memcmp(h, a->entries[i].hash, 64)) {
			if (user)
				snprintf(user, len, "%s", a->entries[i].user);
			return a->entries[i].role;
		}
	}
	return ROLE_NONE;
}
