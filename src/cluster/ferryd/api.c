/*
 * api.c - ferryd's HTTP API under /agent/v1/ (see docs/api.md). Only
 * ferry-center and other ferryds call it; every call needs a token of role
 * agent or admin.
 */
#include "cluster/ferryd/ferryd.h"

#include "cluster/common/http_server.h"
#include "cluster/common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREFIX "/agent/v1/"

static bool is(const struct http_request *req, const char *method)
{
	return !strcmp(req->method, method);
}

static void vm_routes(const struct http_request *req, struct http_response *resp,
		      const char *name, const char *action)
{
	char err[1024];
	if (!action) {
		if (is(req, "GET")) {
			pthread_mutex_lock(&vms_lock);
			struct vm *vm = vm_find(name);
			json_t *j = vm ? vm_json(vm, true) : NULL;
			pthread_mutex_unlock(&vms_lock);
			if (!j)
				reply_error(resp, 404, "no such VM on this host", NULL);
			else
				reply_json(resp, 200, j);
		} else if (is(req, "DELETE")) {
			int rc = vm_destroy(name, err, sizeof(err));
			if (rc == 200)
				reply_json(resp, 200, json_pack("{s:s}", "removed", name));
			else
				reply_error(resp, rc, err, NULL);
		} else {
			reply_error(resp, 405, "use GET or DELETE", NULL);
		}
		return;
	}
	if (!strcmp(action, "console") && is(req, "GET")) {
		bool found;
		char *text = vm_console(name, &found);
		if (!found)
			reply_error(resp, 404, "no such VM on this host", NULL);
		else
			reply_json(resp, 200, json_pack("{s:s, s:s}", "name", name, "console", text));
		free(text);
	} else if (!strcmp(action, "stop") && is(req, "POST")) {
		int rc = vm_destroy(name, err, sizeof(err));
		if (rc == 200)
			reply_json(resp, 200, json_pack("{s:s}", "stopped", name));
		else
			reply_error(resp, rc, err, NULL);
	} else if (!strcmp(action, "migrate") && is(req, "POST")) {
		json_t *body = parse_body(req, resp);
		if (!body)
			return;
		int rc = migration_start(name, body, err, sizeof(err));
		json_decref(body);
		if (rc == 202)
			reply_json(resp, 202, migration_status(name) ?: json_object());
		else
			reply_error(resp, rc, err, NULL);
	} else if (!strcmp(action, "migration") && is(req, "GET")) {
		/* ?wait=MS&since=GEN: a long poll (migration.c), at most 10 s */
		const char *wait = http_query(req, "wait"), *since = http_query(req, "since");
		long wait_ms = wait ? strtol(wait, NULL, 10) : 0;
		json_t *j = migration_status_wait(name, since ? strtoull(since, NULL, 10) : 0,
						  wait_ms < 0 ? 0 : wait_ms > 10000 ? 10000 : wait_ms);
		if (j)
			reply_json(resp, 200, j);
		else
			reply_error(resp, 404, "no migration of this VM on this host", NULL);
	} else if (!strcmp(action, "migrate-parameters") && is(req, "POST")) {
		json_t *body = parse_body(req, resp);
		if (!body)
			return;
		int rc = migration_set_bandwidth(name, body, err, sizeof(err));
		json_decref(body);
		if (rc == 200)
			reply_json(resp, 200, migration_status(name) ?: json_object());
		else
			reply_error(resp, rc, err, NULL);
	} else if (!strcmp(action, "migrate-cancel") && is(req, "POST")) {
		int rc = migration_cancel(name, err, sizeof(err));
		if (rc == 200)
			reply_json(resp, 200, migration_status(name) ?: json_object());
		else
			reply_error(resp, rc, err, NULL);
	} else {
		reply_error(resp, 404, "no such call", "see docs/api.md");
	}
}

/* In DPM's standby this host starts no VM: no start, no incoming
 * migration, no FT secondary. 503, not 409: the HA decider takes a 409
 * for "runs there already" and tries the next host on anything else. */
static bool refused_in_standby(const struct http_request *req, struct http_response *resp,
			       const char *rest)
{
	if (!is(req, "POST") || !host_standby() || (strcmp(rest, "vms") &&
	    strcmp(rest, "incoming") && strcmp(rest, "ft/secondary")))
		return false;
	reply_error(resp, 503, "this host is in standby (DPM): it takes no VMs",
		    "ferry-center wakes it when the cluster needs it");
	return true;
}

void api_handle(void *ctx, const struct http_request *req, struct http_response *resp)
{
	(void)ctx;
	char user[64], err[1024];
	enum auth_role role = auth_check(&fd_cfg.auth, req->auth, user, sizeof(user));
	if (role != ROLE_AGENT && role != ROLE_ADMIN) {
		reply_error(resp, 401, "ferryd needs an agent or admin token",
			    "send Authorization: Bearer TOKEN");
		return;
	}
	if (strncmp(req->path, PREFIX, strlen(PREFIX))) {
		reply_error(resp, 404, "no such call", "ferryd answers under /agent/v1/");
		return;
	}
	const char *rest = req->path + strlen(PREFIX);
	if (refused_in_standby(req, resp, rest) || ft_route(req, resp, rest))
		return;
	if (!strcmp(rest, "host") && is(req, "GET")) {
		json_t *h = host_report();
		json_t *list = vms_list();
		host_add_cpu(list);
		host_add_disks(list);
		json_object_set_new(h, "vm_list", list);
		json_object_set_new(h, "monitor_events", ha_monitor_events());
		reply_json(resp, 200, h);
	} else if (!strcmp(rest, "standby") && is(req, "POST")) {
		json_t *body = parse_body(req, resp);
		if (!body)
			return;
		json_t *en = json_object_get(body, "enabled");
		if (!json_is_boolean(en))
			reply_error(resp, 400, "want {\"enabled\": true|false}", NULL);
		else if (!host_set_standby(json_is_true(en), err, sizeof(err)))
			reply_error(resp, 409, err, NULL);
		else
			reply_json(resp, 200, host_report());
		json_decref(body);
	} else if (!strcmp(rest, "vms") && is(req, "GET")) {
		reply_json(resp, 200, json_pack("{s:o}", "vms", vms_list()));
	} else if (!strcmp(rest, "vms") && is(req, "POST")) {
		json_t *body = parse_body(req, resp);
		if (!body)
			return;
		const char *name = json_string_value(json_object_get(body, "name"));
		json_t *spec = json_object_get(body, "spec");
		if (!name || !json_is_object(spec)) {
			reply_error(resp, 400, "want {\"name\": ..., \"spec\": {...}}", NULL);
		} else {
			int rc = vm_start(name, json_incref(spec), NULL, NULL, err, sizeof(err));
			if (rc == 201) {
				ha_publish();
				pthread_mutex_lock(&vms_lock);
				struct vm *vm = vm_find(name);
				json_t *j = vm ? vm_json(vm, false) : json_object();
				pthread_mutex_unlock(&vms_lock);
				reply_json(resp, 201, j);
			} else {
				reply_error(resp, rc, err, NULL);
			}
		}
		json_decref(body);
	} else if (!strcmp(rest, "incoming") && is(req, "POST")) {
		json_t *body = parse_body(req, resp);
		if (!body)
			return;
		json_t *reply = NULL;
		int rc = incoming_start(body, &reply, err, sizeof(err));
		json_decref(body);
		if (rc == 201)
			reply_json(resp, 201, reply);
		else
			reply_error(resp, rc, err, NULL);
	} else if (!strncmp(rest, "vms/", 4)) {
		char name[128];
		snprintf(name, sizeof(name), "%s", rest + 4);
		char *slash = strchr(name, '/');
		if (slash)
			*slash++ = 0;
		vm_routes(req, resp, name, slash);
	} else {
		reply_error(resp, 404, "no such call", "see docs/api.md");
	}
}
