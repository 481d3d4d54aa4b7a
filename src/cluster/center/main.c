/*
 * main.c - ferry-center: options and start-up.
 *
 *   ferry-center --listen ADDR:PORT --db FILE --etcd URL[,URL...] [--token-file FILE]
 *                [--web DIR]
 *
 * The web console's files come from --web, else from web/ beside the
 * binary, ../web (the source tree, from build/) or ../share/ferry/web.
 */
#include "cluster/center/center.h"

#include "cluster/common/http_client.h"
#include "cluster/common/http_server.h"
#include "cluster/common/util.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct center ctr;

static void usage(FILE *f)
{
	fprintf(f, "usage: ferry-center --listen ADDR:PORT --db FILE --etcd URL[,URL...] "
		   "--token-file FILE [--web DIR]\n"
		   "The cluster manager: inventory, tasks, wizard, audit, REST API and web "
		   "console.\n");
}

static void find_web_dir(void)
{
	if (ctr.web_dir[0])
		return;
	char self[2048];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return;
	self[n] = 0;
	*strrchr(self, '/') = 0;
	const char *tries[] = { "/web", "/../web", "/../share/ferry/web" };
	for (int i = 0; i < 3; i++) {
		char p[4096];
		snprintf(p, sizeof(p), "%s%s/index.html", self, tries[i]);
		if (access(p, R_OK) == 0) {
			snprintf(ctr.web_dir, sizeof(ctr.web_dir), "%s%s", self, tries[i]);
			return;
		}
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "db", required_argument, NULL, 'd' },
		{ "etcd", required_argument, NULL, 'e' },
		{ "token-file", required_argument, NULL, 't' },
		{ "web", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *listen = NULL, *db = NULL, *etcd_urls = NULL, *token_file = NULL;
	log_name = "ferry-center";
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'l': listen = optarg; break;
		case 'd': db = optarg; break;
		case 'e': etcd_urls = optarg; break;
		case 't': token_file = optarg; break;
		case 'w': snprintf(ctr.web_dir, sizeof(ctr.web_dir), "%s", optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!listen || !db || !etcd_urls || !token_file) {
		fprintf(stderr, "ferry-center: --listen, --db, --etcd and --token-file are required\n");
		usage(stderr);
		return 2;
	}
	char err[1024];
	if (!auth_load(&ctr.auth, token_file, err, sizeof(err))) {
		fprintf(stderr, "ferry-center: %s\n", err);
		return 2;
	}
	if (!etcd_init(&ctr.etcd, etcd_urls)) {
		fprintf(stderr, "ferry-center: --etcd %s: want URL[,URL...]\n", etcd_urls);
		return 2;
	}
	if (!db_open(db, err, sizeof(err))) {
		fprintf(stderr, "ferry-center: %s\n", err);
		return 1;
	}
	find_web_dir();
	signal(SIGPIPE, SIG_IGN);
	http_client_init();
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	struct http_server *srv = http_server_start(listen, api_handle, NULL, err, sizeof(err));
	if (!srv) {
		fprintf(stderr, "ferry-center: %s\n", err);
		return 1;
	}
	logf_("listening on http://%s (database %s, web console %s)", listen, db,
	      ctr.web_dir[0] ? ctr.web_dir : "not found");
	pthread_t t;
	pthread_create(&t, NULL, inventory_loop, NULL);
	pthread_create(&t, NULL, tasks_loop, NULL);
	pthread_create(&t, NULL, drs_loop, NULL);
	int sig;
	sigwait(&set, &sig);
	logf_("signal %d: stopping", sig);
	http_server_stop(srv);
	pthread_mutex_lock(&db_lock);
	sqlite3_close(ctr.db);
	return 0;
}
