#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Set from the signal handler; the only global a tool keeps. */
static volatile sig_atomic_t g_interrupted;

static void on_signal(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

void cli_init(cli *c, const char *tool)
{
    memset(c, 0, sizeof *c);
    c->tool = tool;
    c->tty = isatty(2);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void on_log(void *ud, qpk_log_level level, const char *msg)
{
    cli *c = ud;
    if (c->quiet && level == QPK_LOG_INFO)
        return;
    cli_progress_done(c);
    fprintf(stderr, "%s: %s%s\n", c->tool, level == QPK_LOG_WARN ? "warning: " : "", msg);
}

static void on_progress(void *ud, const char *what, uint64_t done, uint64_t total)
{
    cli *c = ud;
    if (!c->tty || c->quiet)
        return;
    double now = cli_now();
    if (done < total && now - c->last_draw < 0.1)
        return;
    c->last_draw = now;
    c->drawn = true;
    fprintf(stderr, "\r\033[K[%5.1f%%] %.70s", total ? 100.0 * (double)done / (double)total : 100.0, what);
    fflush(stderr);
}

static bool on_cancel(void *ud)
{
    (void)ud;
    return g_interrupted != 0;
}

qpk_callbacks cli_callbacks(cli *c)
{
    return (qpk_callbacks){.log = on_log, .progress = on_progress, .cancel = on_cancel, .ud = c};
}

void cli_progress_done(cli *c)
{
    if (c->drawn) {
        fprintf(stderr, "\r\033[K");
        c->drawn = false;
    }
}

int cli_exit_code(qpk_status s)
{
    switch (s) {
    case QPK_OK: return QPK_EXIT_OK;
    case QPK_E_INVALID_ARG: return QPK_EXIT_USAGE;
    case QPK_E_IO: return QPK_EXIT_IO;
    case QPK_E_CANCELLED: return QPK_EXIT_CANCELLED;
    case QPK_E_NOMEM:
    case QPK_STATUS_COUNT: return QPK_EXIT_INTERNAL;
    default: return QPK_EXIT_BAD_INPUT;
    }
}

int cli_fail(cli *c, const qpk_err *e)
{
    cli_progress_done(c);
    fprintf(stderr, "%s: error: %s (%s)\n", c->tool, e->msg, qpk_strerror(e->status));
    return cli_exit_code(e->status);
}

int cli_usage_error(cli *c, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", c->tool);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help'.\n", c->tool);
    return QPK_EXIT_USAGE;
}

bool cli_parse_int(const char *s, long long lo, long long hi, long long *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool cli_parse_double(const char *s, double *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

char *cli_command_line(int argc, char **argv)
{
    size_t n = 1;
    for (int i = 0; i < argc; i++)
        n += 3 + 4 * strlen(argv[i]);
    char *s = malloc(n), *p = s;
    if (!s)
        return NULL;
    *p = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "-t") == 0 || strcmp(a, "--threads") == 0) && i + 1 < argc) {
            i++;
            continue;
        }
        if (strncmp(a, "--threads=", 10) == 0)
            continue;
        if (p != s)
            *p++ = ' ';
        bool quote = !*a || strpbrk(a, " \t\n'\"\\$`*?[]{}()<>|&;#~") != NULL;
        if (quote)
            *p++ = '\'';
        for (; *a; a++) {
            if (*a == '\'' && quote) {
                memcpy(p, "'\\''", 4);
                p += 4;
            } else {
                *p++ = *a;
            }
        }
        if (quote)
            *p++ = '\'';
        *p = 0;
    }
    return s;
}
