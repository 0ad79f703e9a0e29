#include "cli.h"

#include "qpk_private.h"

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
    /* The first signal asks the work to stop (it polls, and the tool exits 130 within about
     * a second, leaving nothing behind); the handler then resets, so a second one kills. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND;
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

size_t cli_put_escaped(FILE *f, const char *s, size_t n, size_t max, bool quoted)
{
    size_t i = 0;
    while (i < n && i < max) {
        unsigned char ch = (unsigned char)s[i];
        size_t k = ch < 0x80 ? 1 : qpk_utf8_char(s + i, n - i);
        /* C0 and C1 controls, DEL and bytes that are not UTF-8 never reach the terminal as they are. */
        bool c1 = k == 2 && ch == 0xC2 && (unsigned char)s[i + 1] < 0xA0;
        if (quoted && (ch == '"' || ch == '\\')) {
            fprintf(f, "\\%c", ch);
            i++;
        } else if (k == 0 || c1 || ch < 0x20 || ch == 0x7f) {
            for (size_t j = 0; j < (k ? k : 1); j++)
                fprintf(f, "\\x%02x", (unsigned char)s[i + j]);
            i += k ? k : 1;
        } else {
            fwrite(s + i, 1, k, f);
            i += k;
        }
    }
    return i;
}

char *cli_json_safe(const char *s, size_t n)
{
    char *out = malloc(3 * n + 1), *o = out;
    for (size_t i = 0; out && i < n;) {
        size_t k = (unsigned char)s[i] < 0x80 ? 1 : qpk_utf8_char(s + i, n - i);
        if (k == 0 || s[i] == 0) { /* not UTF-8, or a NUL that would end the string: U+FFFD */
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3, i++;
        } else {
            memcpy(o, s + i, k);
            o += k, i += k;
        }
    }
    if (out)
        *o = 0; /* cJSON escapes the control characters */
    return out;
}

void cli_print_msg(FILE *f, const char *msg) { cli_put_escaped(f, msg, strlen(msg), SIZE_MAX, false); }

static void on_log(void *ud, qpk_log_level level, const char *msg)
{
    cli *c = ud;
    if (c->quiet && level == QPK_LOG_INFO)
        return;
    cli_progress_done(c);
    fprintf(stderr, "%s: %s", c->tool, level == QPK_LOG_WARN ? "warning: " : "");
    cli_print_msg(stderr, msg);
    fputc('\n', stderr);
}

static void on_progress(void *ud, const char *what, uint64_t done, uint64_t total)
{
    cli *c = ud;
    if (!c->tty || c->quiet)
        return;
    double now = cli_now();
    if (done < total && now - c->last_draw < 0.1)
        return;
    if (c->first_draw == 0)
        c->first_draw = now;
    c->last_draw = now;
    c->drawn = true;
    const double share = total ? (double)done / (double)total : 1.0, elapsed = now - c->first_draw;
    char left[32] = "";
    if (share > 0.01 && share < 1 && elapsed >= 1) { /* the work is counted so that its rate is steady */
        const long s = (long)(elapsed * (1 - share) / share + 0.5);
        if (s >= 3600)
            snprintf(left, sizeof left, ", %ldh%02ldm left", s / 3600, s / 60 % 60);
        else
            snprintf(left, sizeof left, ", %ldm%02lds left", s / 60, s % 60);
    }
    fprintf(stderr, "\r\033[K[%5.1f%%] %.60s%s", 100.0 * share, what, left);
    fflush(stderr);
}

static bool on_cancel(void *ud)
{
    (void)ud;
    return g_interrupted != 0;
}

bool cli_interrupted(void) { return g_interrupted != 0; }

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
    if (g_interrupted) { /* whatever the interrupted call made of it (EINTR: an I/O error) */
        fprintf(stderr, "%s: interrupted\n", c->tool);
        return QPK_EXIT_CANCELLED;
    }
    fprintf(stderr, "%s: error: ", c->tool);
    cli_print_msg(stderr, e->msg);
    fprintf(stderr, " (%s)\n", qpk_strerror(e->status));
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
