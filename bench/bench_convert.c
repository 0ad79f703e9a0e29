/*
 * Whole-process benchmark of qconvert --dtype keep against cp of the same
 * safetensors file to the same disk, run alternately in one process so both see
 * the same machine state, each after a sync so none pays for the other's dirty pages.
 * qconvert fsyncs its output (atomic writes require it) and cp does not; `cp + sync`
 * is printed beside them to show what durability costs on the disk at hand. Also samples qconvert's anonymous resident memory (what it
 * allocates itself; pages of the mapped input are file-backed and not counted).
 *
 * Usage: bench_convert BIN_DIR WORK_DIR [runs]
 *   WORK_DIR/qwen1.5-0.5b-bf16 is generated with qgen on first use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proc.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_convert BIN_DIR WORK_DIR [runs]\n");
        return 2;
    }
    int runs = argc > 3 ? atoi(argv[3]) : 3;
    char model[4096], st[4096], copy[4096], out[4096], qgen[4096], qconvert[4096];
    snprintf(model, sizeof model, "%s/qwen1.5-0.5b-bf16", argv[2]);
    snprintf(st, sizeof st, "%s/model.safetensors", model);
    snprintf(copy, sizeof copy, "%s/copy.safetensors", argv[2]);
    snprintf(out, sizeof out, "%s/bench.qpk", argv[2]);
    snprintf(qgen, sizeof qgen, "%s/qgen", argv[1]);
    snprintf(qconvert, sizeof qconvert, "%s/qconvert", argv[1]);
    mkdir(argv[2], 0755);
    struct stat sb;
    if (stat(st, &sb) != 0) {
        char *gen[] = {qgen, model, "--preset", "0.5b", "--dtype", "bf16", "-q", NULL};
        printf("generating %s ...\n", model);
        proc_run(gen, NULL);
        stat(st, &sb);
    }
    double mb = (double)sb.st_size / 1e6, best_cp = 1e30, best_q = 1e30;
    long peak = 0;
    char *cp[] = {"/bin/cp", st, copy, NULL};
    char *qc[] = {qconvert, model, "-o", out, "--dtype", "keep", "-q", NULL};
    proc_run(cp, NULL); /* warm the page cache for both */
    char *sync_cmd[] = {"/bin/sync", NULL};
    double best_cps = 1e30;
    char *cps[] = {"/bin/sh", "-c", NULL, NULL};
    char cps_line[8300];
    snprintf(cps_line, sizeof cps_line, "cp '%s' '%s' && sync '%s'", st, copy, copy);
    cps[2] = cps_line;
    for (int i = 0; i < runs; i++) {
        /*
         * Each timed command writes a new file and starts with no dirty pages left by
         * the one before: freeing a previous 1 GB output costs the filesystem (online
         * discard on this machine's ext4) a variable second or more, whoever writes.
         */
        unlink(copy), proc_run(sync_cmd, NULL);
        double tc = proc_run(cp, NULL);
        best_cp = tc < best_cp ? tc : best_cp;
        unlink(copy), proc_run(sync_cmd, NULL);
        double ts = proc_run(cps, NULL);
        best_cps = ts < best_cps ? ts : best_cps;
        unlink(out), proc_run(sync_cmd, NULL);
        long kb;
        double t = proc_run(qc, &kb);
        best_q = t < best_q ? t : best_q;
        peak = kb > peak ? kb : peak;
        printf("run %d: cp %.3f s, cp+sync %.3f s, qconvert %.3f s\n", i + 1, tc, ts, t);
    }
    printf("input            %.1f MB (Qwen1.5-0.5B shape, BF16)\n", mb);
    printf("cp               %.3f s  %7.1f MB/s  (best of %d)\n", best_cp, mb / best_cp, runs);
    printf("cp + sync        %.3f s  %7.1f MB/s  (for scale: what durability costs on this disk)\n", best_cps,
           mb / best_cps);
    printf("qconvert keep    %.3f s  %7.1f MB/s  (best of %d; includes fsync)\n", best_q, mb / best_q, runs);
    printf("ratio            %.2fx cp  (target <= 1.50x)\n", best_q / best_cp);
    printf("peak anon memory %.1f MB  (target < 300 MB; sampled every 2 ms)\n", (double)peak / 1024.0);

    /* Quantization throughput: input bytes per second, fsync included. */
    static const char *const recipes[][2] = {{"int8", "32"}, {"int4", "32"}, {"int4s", "32"}, {"int8", "128"},
                                             {"int4", "128"}};
    printf("\nquantization (input %.1f MB, best of %d):\n", mb, runs);
    for (size_t r = 0; r < sizeof recipes / sizeof *recipes; r++) {
        char *qq[] = {qconvert, model, "-o", out, "--quant", (char *)recipes[r][0], "--group", (char *)recipes[r][1],
                      "-q", NULL};
        double best = 1e30;
        long kb, peak_q = 0;
        for (int i = 0; i < runs; i++) {
            unlink(out), proc_run(sync_cmd, NULL);
            double t = proc_run(qq, &kb);
            best = t < best ? t : best;
            peak_q = kb > peak_q ? kb : peak_q;
        }
        struct stat ob;
        stat(out, &ob);
        printf("  %-5s g%-4s %6.3f s  %6.2f GB/s input  -> %6.1f MB  (peak anon %.0f MB)\n", recipes[r][0],
               recipes[r][1], best, mb / 1e3 / best, (double)ob.st_size / 1e6, (double)peak_q / 1024.0);
    }
    unlink(copy);
    unlink(out);
    return 0;
}
