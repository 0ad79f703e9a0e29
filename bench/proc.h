/* Shared by the whole-process benchmarks: run a command, time it, sample its anonymous memory. */
#ifndef QPK_BENCH_PROC_H
#define QPK_BENCH_PROC_H

#include <sys/types.h>

double proc_now(void);
/* RssAnon of pid in kB (what it allocates itself; mapped files are not counted), or -1 once it is gone. */
long proc_rss_anon_kb(pid_t pid);
/* Runs argv (stdout to /dev/null); returns wall seconds, *peak_kb (may be NULL) the highest RssAnon
 * seen, sampled every 2 ms. Exits the benchmark if the command fails. */
double proc_run(char *const argv[], long *peak_kb);
/* proc_run of "sh -c line". */
double proc_sh(const char *line, long *peak_kb);
/* Bytes of a file, or of the regular files of a folder (one level). */
double proc_bytes(const char *path);

#endif
