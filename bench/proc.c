#include "proc.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double proc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

long proc_rss_anon_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "RssAnon: %ld", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

double proc_run(char *const argv[], long *peak_kb)
{
    double t0 = proc_now();
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        execv(argv[0], argv);
        _exit(127);
    }
    long peak = 0;
    int status;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        long kb = proc_rss_anon_kb(pid);
        if (kb > peak)
            peak = kb;
        usleep(2000);
    }
    double t = proc_now() - t0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s failed (status %d)\n", argv[0], status);
        exit(1);
    }
    if (peak_kb)
        *peak_kb = peak;
    return t;
}

double proc_sh(const char *line, long *peak_kb)
{
    char *argv[] = {"/bin/sh", "-c", (char *)line, NULL};
    return proc_run(argv, peak_kb);
}

double proc_bytes(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return 0;
    if (!S_ISDIR(sb.st_mode))
        return (double)sb.st_size;
    double total = 0;
    DIR *d = opendir(path);
    for (struct dirent *de; d && (de = readdir(d));) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, de->d_name);
        if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
            total += (double)sb.st_size;
    }
    if (d)
        closedir(d);
    return total;
}
