/*
 * Opening input files, the one way every qpk reader does it: without blocking (a FIFO
 * named as an input would otherwise hang open() forever), refusing anything that is not
 * a regular file by its real kind, with the OS's own reason when it says no.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

const char *qpk_file_kind(unsigned mode)
{
    return S_ISREG(mode) ? "a regular file" : S_ISDIR(mode) ? "a folder" : S_ISFIFO(mode) ? "a FIFO"
         : S_ISCHR(mode) ? "a character device" : S_ISBLK(mode) ? "a block device"
         : S_ISSOCK(mode) ? "a socket" : S_ISLNK(mode) ? "a symbolic link" : "not a regular file";
}

qpk_status qpk_open_regular(const char *path, int *fd_out, uint64_t *size, bool *missing, qpk_err *e)
{
    *fd_out = -1;
    if (missing)
        *missing = false;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int err = errno;
        if (missing)
            *missing = err == ENOENT;
        return qpk_err_setf(e, QPK_E_IO, "cannot open '%s': %s", path, strerror(err));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return qpk_err_setf(e, QPK_E_IO, "cannot read '%s': %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return qpk_err_setf(e, QPK_E_IO, "'%s' is %s, not a regular file", path, qpk_file_kind(sb.st_mode));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK); /* a regular file never blocks: reads as usual */
    *fd_out = fd;
    if (size)
        *size = (uint64_t)sb.st_size;
    return QPK_OK;
}

qpk_status qpk_read_whole(const char *path, size_t max, char **data, size_t *len, bool *missing, qpk_err *e)
{
    int fd;
    uint64_t size;
    *data = NULL, *len = 0;
    QPK_TRY(qpk_open_regular(path, &fd, &size, missing, e));
    if (size > max) {
        close(fd);
        return qpk_err_setf(e, QPK_E_LIMIT, "'%s' is %llu bytes, more than the %zu this file may have", path,
                            (unsigned long long)size, max);
    }
    char *buf = malloc((size_t)size + 1);
    if (!buf) {
        close(fd);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory reading '%s'", path);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t k = read(fd, buf + got, (size_t)size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int err = k < 0 ? errno : 0;
            close(fd);
            free(buf);
            return qpk_err_setf(e, QPK_E_IO, "cannot read '%s': %s", path, err ? strerror(err) : "it got shorter");
        }
        got += (size_t)k;
    }
    close(fd);
    buf[got] = 0;
    *data = buf, *len = got;
    return QPK_OK;
}

bool qpk_file_starts_with(const char *path, const void *magic, size_t n)
{
    unsigned char head[16];
    int fd;
    if (n > sizeof head || qpk_open_regular(path, &fd, NULL, NULL, NULL) != QPK_OK)
        return false;
    ssize_t got = read(fd, head, n);
    close(fd);
    return got == (ssize_t)n && memcmp(head, magic, n) == 0;
}

qpk_status qpk_map_file(const char *path, int advice, const void **data, size_t *size, qpk_err *e)
{
    int fd;
    uint64_t n;
    *data = NULL, *size = 0;
    QPK_TRY(qpk_open_regular(path, &fd, &n, NULL, e));
    if (n > SIZE_MAX) {
        close(fd);
        return qpk_err_setf(e, QPK_E_LIMIT, "'%s' is too large to map", path);
    }
    void *p = NULL;
    if (n > 0 && (p = mmap(NULL, (size_t)n, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED) {
        int err = errno;
        close(fd);
        return qpk_err_setf(e, QPK_E_IO, "cannot map '%s': %s", path, strerror(err));
    }
    if (p && advice)
        madvise(p, (size_t)n, advice);
    close(fd);
    *data = p, *size = (size_t)n;
    return QPK_OK;
}

void qpk_unmap_file(const void *data, size_t size)
{
    if (data)
        munmap((void *)data, size);
}

bool qpk_same_file(const char *a, const char *b)
{
    struct stat x, y;
    return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

qpk_status qpk_check_not_input(const char *out, const char *in, qpk_err *e)
{
    if (qpk_same_file(out, in))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the output '%s' is the input '%s': refusing to replace an input",
                            out, in);
    return QPK_OK;
}

qpk_status qpk_identify(const char *path, qpk_input_kind *kind, qpk_err *e)
{
    struct stat sb;
    *kind = QPK_INPUT_OTHER;
    if (stat(path, &sb) != 0)
        return qpk_err_setf(e, QPK_E_IO, "cannot open '%s': %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        *kind = QPK_INPUT_FOLDER;
        return QPK_OK;
    }
    int fd;
    uint64_t size;
    QPK_TRY(qpk_open_regular(path, &fd, &size, NULL, e));
    unsigned char head[16] = {0};
    ssize_t got = read(fd, head, sizeof head);
    close(fd);
    if (got < 0)
        return qpk_err_setf(e, QPK_E_IO, "cannot read '%s': %s", path, strerror(errno));
    if (got >= QPK_MAGIC_LEN && !memcmp(head, QPK_MAGIC, QPK_MAGIC_LEN))
        *kind = QPK_INPUT_QPK;
    else if (got >= 4 && !memcmp(head, "GGUF", 4))
        *kind = QPK_INPUT_GGUF;
    else if (got >= 9 && head[8] == '{') /* a safetensors header length, then its JSON */
        *kind = QPK_INPUT_SAFETENSORS;
    return QPK_OK;
}

const char *qpk_input_kind_name(qpk_input_kind k)
{
    switch (k) {
    case QPK_INPUT_FOLDER: return "a folder";
    case QPK_INPUT_QPK: return "a .qpk file";
    case QPK_INPUT_GGUF: return "a GGUF file";
    case QPK_INPUT_SAFETENSORS: return "a safetensors file";
    default: return "a file of an unknown kind";
    }
}
