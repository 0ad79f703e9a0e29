/* What every qpk tool shares: exit codes, messages, progress on a terminal, Ctrl-C. */
#ifndef QPK_TOOLS_CLI_H
#define QPK_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "qpk/convert.h"

/* Exit codes, the same for every tool (README, "Exit codes"). */
enum {
    QPK_EXIT_OK = 0,
    QPK_EXIT_CHECK_FAILED = 1, /* a verification gate or check failed */
    QPK_EXIT_USAGE = 2,
    QPK_EXIT_BAD_INPUT = 3, /* corrupt, unsupported or inconsistent input */
    QPK_EXIT_IO = 4,
    QPK_EXIT_INTERNAL = 5, /* out of memory, or a bug */
    QPK_EXIT_CANCELLED = 130,
};

typedef struct cli {
    const char *tool;
    bool quiet;
    bool tty;           /* stderr is a terminal: show progress */
    double last_draw;   /* seconds, for rate limiting */
    double first_draw;  /* when progress began: the time left is estimated from the rate since */
    bool drawn;
} cli;

void cli_init(cli *c, const char *tool);
/* Callbacks that print warnings and progress to stderr and poll Ctrl-C. */
qpk_callbacks cli_callbacks(cli *c);
/*
 * Prints the first max bytes of s[0..n) so that nothing in it can act on a terminal:
 * valid UTF-8 as it is; control characters, DEL, C1 controls and bytes that are not
 * UTF-8 as \xNN; with quoted, '"' and backslash as \" and \\. Returns the bytes consumed.
 */
size_t cli_put_escaped(FILE *f, const char *s, size_t n, size_t max, bool quoted);
/* A message (from a file's contents, perhaps) printed that way. */
void cli_print_msg(FILE *f, const char *msg);
/* s[0..n) as a NUL-terminated string that is valid UTF-8 (bad bytes become U+FFFD), for JSON. malloc'd. */
char *cli_json_safe(const char *s, size_t n);

/* Whether a signal asked the tool to stop. */
bool cli_interrupted(void);
/* Clears a progress line, if one is shown. */
void cli_progress_done(cli *c);
/* Prints "tool: error: msg" and returns the exit code for the status. */
int cli_fail(cli *c, const qpk_err *e);
/* Prints "tool: message" for a usage error, with a pointer to --help; returns QPK_EXIT_USAGE. */
int cli_usage_error(cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cli_exit_code(qpk_status s);

/* Strict number parsing for options: whole string, in range. */
bool cli_parse_int(const char *s, long long lo, long long hi, long long *out);
bool cli_parse_double(const char *s, double *out);

/* argv joined with spaces and quoted where needed, leaving out "-t N" / "--threads N". */
char *cli_command_line(int argc, char **argv);

/* qinspect's GGUF view (inspect_gguf.c): prints the file, or fails with the tool's exit code. */
int inspect_gguf(cli *c, const char *path, bool json, bool tensors, bool verify);

/* Seconds on a monotonic clock. */
double cli_now(void);

#endif
