/*
 * GPTQ/AWQ folders in and out, whole-process, against cp of the same bytes in the same
 * run (alternately, best of N, a sync before each so none pays for another's dirty
 * pages; qconvert fsyncs what it writes, cp does not):
 *   export  qconvert MODEL --quant int4 --group 128 --to gptq  (RTN, staged .qpk, repack)
 *           vs cp of the BF16 input;
 *   repack  qconvert X.qpk --to gptq  vs cp of the .qpk;
 *   import  qconvert GPTQ_DIR -o Y.qpk  vs cp of the folder's safetensors;
 * cp is timed alone and with a sync after it (qconvert's fsync makes its output durable);
 * each with qconvert's peak anonymous memory. With --7b, the same import of a
 * Qwen1.5-7B-shaped GPTQ folder written by qconvert (generated once: 15 GB of BF16 and
 * 4 GB of GPTQ), to show that memory does not grow with the model.
 *
 * Usage: bench_hfquant BIN_DIR WORK_DIR [runs] [--7b]
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proc.h"

static char BIN[4096], WORK[4096];

static void sync_all(void) { proc_sh("sync", NULL); }

/* Generates a qgen preset once. */
static void model_of(const char *preset, char *dir)
{
    struct stat sb;
    snprintf(dir, 4096, "%s/qwen1.5-%s-bf16", WORK, preset);
    char marker[4200];
    snprintf(marker, sizeof marker, "%s/config.json", dir);
    if (stat(marker, &sb) == 0)
        return;
    char line[9000];
    printf("generating %s ...\n", dir);
    snprintf(line, sizeof line, "'%s/qgen' '%s' --preset %s --dtype bf16 -q", BIN, dir, preset);
    proc_sh(line, NULL);
}

/* Best of runs of `cmd` and of `cp_cmd`, alternately; cleanup runs before each. */
static void compare(const char *what, const char *cmd, const char *cp_cmd, const char *cleanup, const char *measure,
                    int runs)
{
    double best = 1e30, best_cp = 1e30, best_cps = 1e30;
    long peak = 0, kb;
    char cps[20100];
    snprintf(cps, sizeof cps, "%s && sync", cp_cmd); /* what the same bytes cost made durable, as qconvert makes them */
    for (int i = 0; i < runs; i++) {
        proc_sh(cleanup, NULL), sync_all();
        double t = proc_sh(cp_cmd, NULL);
        best_cp = t < best_cp ? t : best_cp;
        proc_sh(cleanup, NULL), sync_all();
        t = proc_sh(cps, NULL);
        best_cps = t < best_cps ? t : best_cps;
        proc_sh(cleanup, NULL), sync_all();
        char exec_cmd[20100];
        snprintf(exec_cmd, sizeof exec_cmd, "exec %s", cmd); /* qconvert itself is the process sampled */
        t = proc_run((char *const[]){"/bin/sh", "-c", exec_cmd, NULL}, &kb);
        best = t < best ? t : best;
        peak = kb > peak ? kb : peak;
    }
    double mb = proc_bytes(measure) / 1e6;
    printf("%-8s qconvert %7.3f s  cp %7.3f s (%4.2fx)  cp+sync %7.3f s (%4.2fx)  %5.0f MB  peak anon %.0f MB\n", what,
           best, best_cp, best / best_cp, best_cps, best / best_cps, mb, (double)peak / 1024.0);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_hfquant BIN_DIR WORK_DIR [runs] [--7b]\n");
        return 2;
    }
    snprintf(BIN, sizeof BIN, "%s", argv[1]);
    snprintf(WORK, sizeof WORK, "%s", argv[2]);
    int runs = argc > 3 && argv[3][0] != '-' ? atoi(argv[3]) : 3;
    bool big = argc > 3 && !strcmp(argv[argc - 1], "--7b");
    mkdir(WORK, 0755);
    char model[4096], cmd[20000], cp[20000], clean[20000], st[4200];
    model_of("0.5b", model);
    snprintf(st, sizeof st, "%s/model.safetensors", model);
    printf("Qwen1.5-0.5B shape, BF16 input %.0f MB; best of %d; peak anonymous memory sampled every 2 ms\n",
           proc_bytes(st) / 1e6, runs);
    snprintf(clean, sizeof clean, "rm -rf '%s/gptq' '%s/cp.bin' '%s/in.qpk' '%s/imp.qpk'", WORK, WORK, WORK, WORK);
    snprintf(cmd, sizeof cmd, "'%s/qconvert' '%s' --quant int4 --group 128 --to gptq -o '%s/gptq' -q", BIN, model, WORK);
    snprintf(cp, sizeof cp, "cp '%s' '%s/cp.bin'", st, WORK);
    compare("export", cmd, cp, clean, st, runs);
    /* The repack alone, from a .qpk already there. */
    char qpk[4200], repack_clean[9000];
    snprintf(qpk, sizeof qpk, "%s/int4-g128.qpk", WORK);
    snprintf(cmd, sizeof cmd, "'%s/qconvert' '%s' --quant int4 --group 128 --embed-type bf16 -o '%s' -q", BIN, model, qpk);
    proc_sh(cmd, NULL);
    snprintf(repack_clean, sizeof repack_clean, "rm -rf '%s/gptq' '%s/cp.bin'", WORK, WORK);
    snprintf(cmd, sizeof cmd, "'%s/qconvert' '%s' --to gptq -o '%s/gptq' -q", BIN, qpk, WORK);
    snprintf(cp, sizeof cp, "cp '%s' '%s/cp.bin'", qpk, WORK);
    compare("repack", cmd, cp, repack_clean, qpk, runs);
    /* Import: the folder just written. */
    char folder[4200], import_clean[9000];
    snprintf(folder, sizeof folder, "%s/gptq-keep", WORK);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s/qconvert' '%s' --to gptq -o '%s' -q", folder, BIN, qpk, folder);
    proc_sh(cmd, NULL);
    snprintf(import_clean, sizeof import_clean, "rm -rf '%s/imp.qpk' '%s/cp.bin'", WORK, WORK);
    snprintf(cmd, sizeof cmd, "'%s/qconvert' '%s' -o '%s/imp.qpk' -q", BIN, folder, WORK);
    snprintf(cp, sizeof cp, "cp '%s/model.safetensors' '%s/cp.bin'", folder, WORK);
    compare("import", cmd, cp, import_clean, folder, runs);
    if (big) {
        char model7[4096], folder7[4200];
        model_of("7b", model7);
        snprintf(folder7, sizeof folder7, "%s/gptq-7b", WORK);
        snprintf(st, sizeof st, "%s/config.json", folder7);
        struct stat sb;
        if (stat(st, &sb) != 0) {
            printf("writing %s ...\n", folder7);
            snprintf(cmd, sizeof cmd, "'%s/qconvert' '%s' --quant int4s --group 128 --to gptq -o '%s' -q", BIN, model7,
                     folder7);
            proc_sh(cmd, NULL);
        }
        snprintf(cmd, sizeof cmd, "'%s/qconvert' '%s' -o '%s/imp.qpk' -q", BIN, folder7, WORK);
        snprintf(cp, sizeof cp, "cat '%s'/model-*.safetensors > '%s/cp.bin'", folder7, WORK);
        printf("Qwen1.5-7B shape, GPTQ int4 g128 folder %.0f MB:\n", proc_bytes(folder7) / 1e6);
        compare("import", cmd, cp, import_clean, folder7, runs);
    }
    proc_sh(clean, NULL);
    return 0;
}
