/*
 * control.h - the JSON control socket, in QMP's shape.
 *
 * A small server on a Unix stream socket that knows nothing about virtual
 * machines: the caller hands it a table of named commands and a context
 * pointer, and it does the protocol. One JSON object a line both ways:
 *
 *   <- {"QMP":{"version":{"ferry":"0.1.0"},"capabilities":[]}}   on connect
 *   -> {"execute":"NAME","arguments":{...},"id":ANY}              request
 *   <- {"return":...,"id":ANY}                                   success
 *   <- {"error":{"class":"...","desc":"..."},"id":ANY}           failure
 *   <- {"event":"NAME","data":{...},"timestamp":{"seconds":S,"microseconds":U}}
 *
 * "arguments" and "id" are optional; "id" is echoed as given. Built in:
 * `qmp_capabilities` (accepted, does nothing) and `query-commands`.
 * Every malformed request gets one error line and the connection stays
 * usable. One thread serves every client; handlers run on it, one at a
 * time, and may block (a `stop` waiting for harts to pause is fine), which
 * delays the other clients but loses nothing.
 */
#ifndef FERRY_CONTROL_H
#define FERRY_CONTROL_H

#include <stddef.h>
#include <jansson.h>

/* The longest request line accepted, without its newline. */
#define CONTROL_LINE_MAX 65536

struct control;

/*
 * A command handler. Returns the value for {"return":...} as a new
 * reference (usually an object; json_object() when there is nothing to
 * say), or NULL after setting *err_class (e.g. "GenericError",
 * "DeviceNotActive") and writing a one-line description into err.
 * args is always an object (empty when the request had no "arguments"),
 * borrowed. Runs on the control thread.
 */
typedef json_t *(*control_fn)(void *ctx, json_t *args, const char **err_class,
			      char *err, size_t errlen);

struct control_cmd {
	const char *name;
	control_fn fn;
};

/*
 * Serve the commands in cmds (terminated by { NULL, NULL }; the table
 * must outlive the server) on a Unix socket at socket_path. A stale
 * socket file left by a dead process is replaced; a path that is served
 * by a live process, or is not a socket, is refused. Returns NULL with a
 * message in err on failure.
 */
struct control *control_start(const char *socket_path, const struct control_cmd *cmds,
			      void *ctx, char *err, size_t errlen);

/* Send an event to every connected client. Steals data (NULL means {}).
 * Safe from any thread, handlers included. */
void control_event(struct control *c, const char *name, json_t *data);

/*
 * From a handler: once the current reply is written, close every client
 * and stop serving (for `quit`). The socket file stays until control_stop().
 */
void control_close_after_reply(struct control *c);

/* Close every client, stop the thread, remove the socket file. Call from
 * any thread but the control thread (a handler uses the call above). */
void control_stop(struct control *c);

#endif
