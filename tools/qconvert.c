/* qconvert: Hugging Face Qwen2 folder -> .qpk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(void)
{
    printf("Usage: qconvert MODEL_DIR -o OUT.qpk [options]\n"
           "\n"
           "Converts a Hugging Face Qwen1.5 / Qwen2 checkpoint folder (config.json,\n"
           "model.safetensors or sharded model-*.safetensors with their index,\n"
           "tokenizer files) into one .qpk file. The output appears only when complete.\n"
           "\n"
           "Options:\n"
           "  -o, --output PATH     output file (required)\n"
           "      --dtype TYPE      keep | f32 | f16 | bf16   (default keep: each tensor\n"
           "                        as stored; F64 becomes f32)\n"
           "  -t, --threads N       worker threads (default: all cores)\n"
           "  -q, --quiet           no progress or notes, only warnings and errors\n"
           "  -h, --help            this help\n"
           "      --version         print the version\n"
           "\n"
           "Exit codes: 0 ok, 2 usage, 3 bad input, 4 I/O error, 5 internal, 130 interrupted.\n");
}

int main(int argc, char **argv)
{
    cli c;
    cli_init(&c, "qconvert");
    const char *in = NULL, *out = NULL;
    qpk_convert_opts o = {.dtype = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("qconvert %s\n", QPK_VERSION_STRING);
            return 0;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            c.quiet = true;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!v)
                return cli_usage_error(&c, "%s needs a path", a);
            out = v, i++;
        } else if (!strcmp(a, "--dtype")) {
            qpk_type t;
            if (!v)
                return cli_usage_error(&c, "--dtype needs a value");
            if (!strcmp(v, "keep"))
                o.dtype = -1;
            else if (qpk_type_from_name(v, &t) && !qpk_type_is_quantized(t))
                o.dtype = (int)t;
            else
                return cli_usage_error(&c, "--dtype '%s': expected keep, f32, f16 or bf16", v);
            i++;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            long long n;
            if (!cli_parse_int(v, 1, 1024, &n))
                return cli_usage_error(&c, "%s needs a thread count in 1..1024", a);
            o.n_threads = (int)n, i++;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(&c, "unknown option '%s'", a);
        } else if (!in) {
            in = a;
        } else {
            return cli_usage_error(&c, "unexpected argument '%s'", a);
        }
    }
    if (!in)
        return cli_usage_error(&c, "missing MODEL_DIR");
    if (!out)
        return cli_usage_error(&c, "missing -o OUT.qpk");
    char *cmd = cli_command_line(argc, argv);
    o.command = cmd;
    o.cb = cli_callbacks(&c);
    qpk_err e = {0};
    double t0 = cli_now();
    qpk_status s = qpk_convert(in, out, &o, &e);
    free(cmd);
    if (s != QPK_OK)
        return cli_fail(&c, &e);
    cli_progress_done(&c);
    if (!c.quiet)
        fprintf(stderr, "qconvert: wrote %s in %.2f s\n", out, cli_now() - t0);
    return 0;
}
