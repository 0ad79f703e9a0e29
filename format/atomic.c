/*
 * Atomic output files. Bytes go to an unnamed temporary (O_TMPFILE) in the
 * destination folder, so a crash, a kill or a full disk leaves nothing behind;
 * commit fsyncs it, names it and renames it over the destination in one step.
 * Where O_TMPFILE or /proc is unavailable, a hidden mkstemp file stands in and
 * is unlinked on every failure path. A SIGKILL cannot be caught: it leaves that named
 * temporary behind (.NAME.qpk-tmp.PID.XXXXXX). Every temporary, file or folder, carries
 * an exclusive flock held by its writer from before anyone can take it until the writer
 * ends, so the next output into the same folder removes exactly the temporaries whose
 * lock it can take: a lock is released by the kernel when its holder dies, and is valid
 * across PID namespaces (two containers sharing a folder), where the PID in the name is
 * not (it is kept there for people only). A temporary whose lock cannot be tried (a
 * filesystem without flock) is never removed: nothing proves its writer dead.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define OUT_BUF (4u << 20)
/* Start writeback every this many bytes, so that the final fsync finds little left to do. */
#define WRITEBACK_STEP (64ull << 20)

struct qpk_outfile {
    int fd;
    char *path;     /* destination */
    char *tmp_path; /* named temporary (fallback), else NULL */
    qpk_status failed;
    uint64_t pos; /* file offset of buf[0] */
    uint8_t *buf;
    size_t len;
    uint64_t writeback_from; /* bytes before this offset have been handed to writeback */
};

static char *dir_of(const char *path)
{
    char *copy = strdup(path);
    char *d = copy ? strdup(dirname(copy)) : NULL;
    free(copy);
    return d;
}

static qpk_status fail_io(qpk_outfile *o, qpk_err *e, const char *what)
{
    o->failed = QPK_E_IO;
    return qpk_err_setf(e, QPK_E_IO, "%s while writing '%s'", what, o->path);
}

static qpk_status pwrite_all(qpk_outfile *o, const void *p, size_t n, uint64_t off, qpk_err *e)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t k = pwrite(o->fd, b, n > (1u << 30) ? (1u << 30) : n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return fail_io(o, e, k < 0 ? strerror(errno) : "short write");
        b += k, n -= (size_t)k, off += (uint64_t)k;
    }
    return QPK_OK;
}

/*
 * Asks the kernel to start writing what has accumulated (without waiting), so disk
 * writes overlap the rest of the work instead of all landing in the final fsync, and
 * dirty pages do not pile up. Advisory: an error here is not an error.
 */
static void start_writeback(qpk_outfile *o)
{
#ifdef SYNC_FILE_RANGE_WRITE
    if (o->pos - o->writeback_from >= WRITEBACK_STEP) {
        sync_file_range(o->fd, (off_t)o->writeback_from, (off_t)(o->pos - o->writeback_from), SYNC_FILE_RANGE_WRITE);
        o->writeback_from = o->pos;
    }
#else
    (void)o;
#endif
}

static qpk_status flush(qpk_outfile *o, qpk_err *e)
{
    if (o->len == 0)
        return QPK_OK;
    qpk_status s = pwrite_all(o, o->buf, o->len, o->pos, e);
    o->pos += o->len;
    o->len = 0;
    start_writeback(o);
    return s;
}

#define TMP_TAG ".qpk-tmp."

/* Whether a name is one of our temporaries (.NAME.qpk-tmp.PID.SUFFIX). */
static bool is_temp_name(const char *name)
{
    const char *t = name[0] == '.' ? strstr(name, TMP_TAG) : NULL;
    if (!t)
        return false;
    char *end;
    long pid = strtol(t + strlen(TMP_TAG), &end, 10);
    return pid > 0 && *end == '.' && end[1];
}

/* Takes the writer's lock on fd without waiting: true if taken (or already ours). */
static bool lock_now(int fd) { return flock(fd, LOCK_EX | LOCK_NB) == 0; }

/*
 * Locks the temporary just created as `name` in dirfd_ through fd, and checks that the
 * name still leads to it: between its creation and the lock, another process's cleanup
 * may have taken the (then free) lock and removed it. False: create another. A
 * filesystem without flock gives no lock, and then nothing is ever removed from it.
 */
static bool lock_own_temp(int dirfd_, const char *name, int fd)
{
    if (!lock_now(fd)) /* held by a cleanup about to remove it: another name; unsupported: nobody can take it */
        return errno != EWOULDBLOCK && errno != EINTR;
    struct stat a, b;
    return fstat(fd, &a) == 0 && fstatat(dirfd_, name, &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_dev == b.st_dev &&
           a.st_ino == b.st_ino;
}

/* Removes the regular files of folder fd (an output folder never holds anything else), then the folder. */
static void remove_flat_dir(int parent, const char *name)
{
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return;
    }
    for (struct dirent *ent; (ent = readdir(d));) {
        struct stat sb;
        if (fstatat(dirfd(d), ent->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(sb.st_mode))
            unlinkat(dirfd(d), ent->d_name, 0);
    }
    closedir(d);
    unlinkat(parent, name, AT_REMOVEDIR); /* fails, harmlessly, if anything else was put there */
}

/*
 * Removes the temporaries in dir whose writers are gone (killed before they could clean
 * up): those whose lock this process can take. A live writer holds its lock, whatever
 * PID namespace it runs in; a lock that cannot be tried keeps the temporary.
 */
static void remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *ent; (ent = readdir(d));) {
        struct stat sb, now;
        if (!is_temp_name(ent->d_name) || fstatat(dirfd(d), ent->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
            sb.st_uid != geteuid() || !(S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)))
            continue;
        int fd = openat(dirfd(d), ent->d_name,
                        O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | (S_ISDIR(sb.st_mode) ? O_DIRECTORY : 0));
        if (fd < 0)
            continue;
        /* Ours to remove only with its lock held, and only if the name still leads to what was locked. */
        if (lock_now(fd) && fstat(fd, &now) == 0 && now.st_dev == sb.st_dev && now.st_ino == sb.st_ino) {
            if (S_ISREG(sb.st_mode))
                unlinkat(dirfd(d), ent->d_name, 0);
            else
                remove_flat_dir(dirfd(d), ent->d_name);
        }
        close(fd); /* releases the lock */
    }
    closedir(d);
}

static qpk_status open_temp(qpk_outfile *o, qpk_err *e)
{
    char *dir = dir_of(o->path);
    if (!dir)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    remove_stale_temps(dir);
#ifdef O_TMPFILE
    /* Naming an O_TMPFILE later goes through /proc/self/fd. QPK_NO_TMPFILE (tests) takes the fallback. */
    if (access("/proc/self/fd", X_OK) == 0 && !getenv("QPK_NO_TMPFILE")) {
        o->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
        if (o->fd >= 0) {
            free(dir);
            lock_now(o->fd); /* unnamed until publish, when it is linked under a temporary name */
            return QPK_OK;
        }
    }
#endif
    char *base_copy = strdup(o->path);
    size_t n = strlen(o->path) + strlen(dir) + 64;
    o->tmp_path = malloc(n);
    if (!base_copy || !o->tmp_path) {
        free(base_copy), free(dir);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    for (int tries = 0;; tries++) {
        snprintf(o->tmp_path, n, "%s/.%s" TMP_TAG "%ld.XXXXXX", dir, basename(base_copy), (long)getpid());
        o->fd = mkostemp(o->tmp_path, O_CLOEXEC);
        if (o->fd < 0 || lock_own_temp(AT_FDCWD, o->tmp_path, o->fd) || tries == 100)
            break;
        close(o->fd); /* removed by a cleanup before the lock was ours: another name */
    }
    free(base_copy), free(dir);
    if (o->fd < 0) {
        int err = errno;
        free(o->tmp_path);
        o->tmp_path = NULL;
        return qpk_err_setf(e, QPK_E_IO, "cannot create a file beside '%s': %s", o->path, strerror(err));
    }
    if (fchmod(o->fd, 0644) != 0)
        return qpk_err_setf(e, QPK_E_IO, "cannot set the mode of '%s': %s", o->tmp_path, strerror(errno));
    return QPK_OK;
}

/* Whether path names a folder by its spelling: it ends in '/', or its last component is "." or "..". */
static bool names_folder(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return !*base || !strcmp(base, ".") || !strcmp(base, "..");
}

qpk_status qpk_outfile_create(qpk_outfile **out, const char *path, qpk_err *e)
{
    *out = NULL;
    if (!path || !*path)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "empty output path");
    if (names_folder(path))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the output '%s' names a folder: this output is a file (give its "
                            "name)", path);
    /*
     * Only a regular file, or a symbolic link, is ever replaced: never a device, a FIFO, a folder. The
     * rename replaces a link itself, never what it leads to (as mv -T does).
     */
    struct stat sb;
    if (lstat(path, &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISLNK(sb.st_mode))
        return qpk_err_setf(e, QPK_E_IO, "'%s' exists and is %s: an output replaces only a regular file", path,
                            qpk_file_kind(sb.st_mode));
    qpk_outfile *o = calloc(1, sizeof *o);
    if (!o)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    o->fd = -1;
    o->path = strdup(path);
    o->buf = malloc(OUT_BUF);
    qpk_status s = o->path && o->buf ? open_temp(o, e) : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s != QPK_OK) {
        qpk_outfile_discard(o);
        return s;
    }
    *out = o;
    return QPK_OK;
}

void qpk_outfile_discard(qpk_outfile *o)
{
    if (!o)
        return;
    if (o->tmp_path)
        unlink(o->tmp_path);
    if (o->fd >= 0)
        close(o->fd); /* after the unlink: the lock keeps cleanups off it until then */
    free(o->tmp_path);
    free(o->buf);
    free(o->path);
    free(o);
}

uint64_t qpk_outfile_tell(const qpk_outfile *o) { return o->pos + o->len; }
const char *qpk_outfile_path(const qpk_outfile *o) { return o->path; }

qpk_status qpk_outfile_write(qpk_outfile *o, const void *p, size_t n, qpk_err *e)
{
    if (o->failed)
        return qpk_err_setf(e, o->failed, "an earlier write to '%s' failed", o->path);
    if (!o->buf)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "a write to '%s' after it was synced", o->path);
    if (o->len + n <= OUT_BUF) {
        memcpy(o->buf + o->len, p, n);
        o->len += n;
        return QPK_OK;
    }
    QPK_TRY(flush(o, e));
    if (n >= OUT_BUF / 2) { /* large writes go straight from the caller's memory */
        qpk_status s = pwrite_all(o, p, n, o->pos, e);
        o->pos += n;
        start_writeback(o);
        return s;
    }
    memcpy(o->buf, p, n);
    o->len = n;
    return QPK_OK;
}

qpk_status qpk_outfile_pad(qpk_outfile *o, uint64_t align, qpk_err *e)
{
    static const uint8_t zeros[256];
    uint64_t target = align_up(qpk_outfile_tell(o), align);
    while (qpk_outfile_tell(o) < target) {
        uint64_t k = target - qpk_outfile_tell(o);
        QPK_TRY(qpk_outfile_write(o, zeros, k < sizeof zeros ? (size_t)k : sizeof zeros, e));
    }
    return QPK_OK;
}

qpk_status qpk_outfile_pwrite(qpk_outfile *o, const void *p, size_t n, uint64_t off, qpk_err *e)
{
    if (o->failed)
        return qpk_err_setf(e, o->failed, "an earlier write to '%s' failed", o->path);
    QPK_TRY(flush(o, e));
    return pwrite_all(o, p, n, off, e);
}

static qpk_status sync_dir(const char *path, qpk_err *e)
{
    char *dir = dir_of(path);
    if (!dir)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    qpk_status s = QPK_OK;
    if (fd < 0 || fsync(fd) != 0)
        s = qpk_err_setf(e, QPK_E_IO, "cannot sync folder '%s': %s", dir, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(dir);
    return s;
}

/* Gives the finished temporary its final name, replacing any file there atomically. */
static qpk_status publish(qpk_outfile *o, qpk_err *e)
{
    if (!o->tmp_path) {
        char *dir = dir_of(o->path), *base_copy = strdup(o->path);
        size_t n = strlen(o->path) * 2 + 64;
        char proc[64], *tmp = malloc(n);
        if (!tmp || !dir || !base_copy) {
            free(tmp), free(dir), free(base_copy);
            return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        }
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", o->fd);
        for (unsigned k = 0;; k++) {
            snprintf(tmp, n, "%s/.%s" TMP_TAG "%ld.l%u", dir, basename(base_copy), (long)getpid(), k);
            if (linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) == 0)
                break;
            if (errno != EEXIST || k == 1000) {
                int err = errno;
                free(tmp), free(dir), free(base_copy);
                return qpk_err_setf(e, QPK_E_IO, "cannot create '%s': %s", o->path, strerror(err));
            }
        }
        free(dir), free(base_copy);
        o->tmp_path = tmp;
    }
    if (rename(o->tmp_path, o->path) != 0)
        return qpk_err_setf(e, QPK_E_IO, "cannot rename into '%s': %s", o->path, strerror(errno));
    free(o->tmp_path);
    o->tmp_path = NULL; /* the real file now: discard must not unlink it */
    return sync_dir(o->path, e);
}

qpk_status qpk_outfile_sync(qpk_outfile *o, qpk_err *e)
{
    qpk_status s = o->failed ? qpk_err_setf(e, o->failed, "an earlier write to '%s' failed", o->path)
                             : flush(o, e);
    if (s == QPK_OK && fsync(o->fd) != 0)
        s = fail_io(o, e, strerror(errno));
    free(o->buf);
    o->buf = NULL;
    return s;
}

qpk_status qpk_outfile_commit(qpk_outfile *o, qpk_err *e)
{
    qpk_status s = o->failed ? qpk_err_setf(e, o->failed, "an earlier write to '%s' failed", o->path)
                             : flush(o, e);
    if (s == QPK_OK && fsync(o->fd) != 0)
        s = fail_io(o, e, strerror(errno));
    if (s == QPK_OK)
        s = publish(o, e);
    qpk_outfile_discard(o);
    return s;
}

/* ------------------------------------------------------------ atomic folders */

struct qpk_outdir {
    char *path, *tmp;
    int lock; /* the temporary folder, flock'ed for the writer's life (-1: none) */
};

const char *qpk_outdir_tmp(const qpk_outdir *d) { return d->tmp; }

/*
 * Refuses, before any work, an existing path that commit's rename could never replace:
 * "." and ".." (EINVAL, EBUSY), a mount point or the root (EBUSY), a symbolic link (a
 * folder does not replace a link; qpk never writes through one into the folder it leads to).
 */
static qpk_status check_dir_target(const char *path, const struct stat *sb, qpk_err *e)
{
    if (S_ISLNK(sb->st_mode))
        return qpk_err_setf(e, QPK_E_IO, "'%s' is a symbolic link: a folder output replaces only an empty folder, "
                            "never a link (give the folder it leads to, or remove the link)", path);
    if (!S_ISDIR(sb->st_mode))
        return qpk_err_setf(e, QPK_E_IO, "'%s' exists and is %s: this output is a folder", path,
                            qpk_file_kind(sb->st_mode));
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (!strcmp(base, ".") || !strcmp(base, ".."))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the output '%s' ends in '%s': no folder can be put in its place "
                            "(give the folder's own name)", path, base);
    char *up = malloc(strlen(path) + 4);
    struct stat pb;
    bool mount = false;
    if (up) {
        sprintf(up, "%s/..", path);
        mount = stat(up, &pb) == 0 && (pb.st_dev != sb->st_dev || pb.st_ino == sb->st_ino);
    }
    free(up);
    if (mount)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "the output '%s' is a mount point: no folder can be put in its "
                            "place (give a folder inside it)", path);
    return QPK_OK;
}

qpk_status qpk_outdir_create(qpk_outdir **out, const char *path_in, qpk_err *e)
{
    *out = NULL;
    if (!path_in || !*path_in)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "empty output path");
    /* "out/" is the folder "out" (a trailing slash would make lstat follow a link, and the rename refuse). */
    char path[4096];
    size_t len = strlen(path_in);
    while (len > 1 && path_in[len - 1] == '/')
        len--;
    if (len >= sizeof path)
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "output path of %zu bytes: too long", len);
    memcpy(path, path_in, len), path[len] = '\0';
    struct stat sb;
    if (lstat(path, &sb) == 0) {
        QPK_TRY(check_dir_target(path, &sb, e));
        DIR *d = opendir(path);
        bool empty = d != NULL;
        for (struct dirent *ent; d && empty && (ent = readdir(d));)
            empty = !strcmp(ent->d_name, ".") || !strcmp(ent->d_name, "..");
        if (d)
            closedir(d);
        if (!empty)
            return qpk_err_setf(e, QPK_E_IO, "the folder '%s' exists and is not empty: qpk replaces only an empty "
                                "folder (remove it, or choose another path)", path);
    }
    qpk_outdir *d = calloc(1, sizeof *d);
    char *parent = dir_of(path), *base_copy = strdup(path);
    size_t n = strlen(path) * 2 + 64;
    if (d)
        d->lock = -1, d->path = strdup(path), d->tmp = malloc(n);
    if (!d || !d->path || !d->tmp || !parent || !base_copy) {
        free(parent), free(base_copy);
        qpk_outdir_discard(d);
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    }
    remove_stale_temps(parent);
    bool made = false;
    for (int tries = 0; tries < 100 && !made; tries++) {
        snprintf(d->tmp, n, "%s/.%s" TMP_TAG "%ld.XXXXXX", parent, basename(base_copy), (long)getpid());
        if (!mkdtemp(d->tmp))
            break;
        d->lock = open(d->tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        made = d->lock >= 0 && lock_own_temp(AT_FDCWD, d->tmp, d->lock);
        if (!made && d->lock >= 0)
            close(d->lock), d->lock = -1; /* removed by a cleanup before the lock was ours: another name */
    }
    free(parent), free(base_copy);
    if (!made) {
        int err = errno;
        free(d->tmp), d->tmp = NULL;
        qpk_outdir_discard(d);
        return qpk_err_setf(e, QPK_E_IO, "cannot create a folder beside '%s': %s", path, strerror(err));
    }
    chmod(d->tmp, 0755); /* mkdtemp makes it 0700; a model folder is as readable as any file qpk writes */
    *out = d;
    return QPK_OK;
}

void qpk_outdir_discard(qpk_outdir *d)
{
    if (!d)
        return;
    if (d->tmp)
        remove_flat_dir(AT_FDCWD, d->tmp);
    if (d->lock >= 0)
        close(d->lock); /* after the removal: until then nobody else may take it */
    free(d->tmp), free(d->path), free(d);
}

/* fsync of a path opened read-only (a file or a folder). */
static bool sync_path(int dirfd_, const char *name, int flags)
{
    int fd = openat(dirfd_, name, O_RDONLY | O_CLOEXEC | flags);
    bool ok = fd >= 0 && fsync(fd) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

qpk_status qpk_outdir_commit(qpk_outdir *d, qpk_err *e)
{
    /* Each file was fsync'd when it was committed into the folder; the folder's entries now. */
    qpk_status s = sync_path(AT_FDCWD, d->tmp, O_DIRECTORY)
                       ? QPK_OK
                       : qpk_err_setf(e, QPK_E_IO, "cannot sync folder '%s': %s", d->tmp, strerror(errno));
    if (s == QPK_OK && rename(d->tmp, d->path) != 0)
        s = qpk_err_setf(e, QPK_E_IO, "cannot rename into '%s': %s", d->path, strerror(errno));
    if (s == QPK_OK) {
        free(d->tmp), d->tmp = NULL; /* in place now: discard must not remove it */
        s = sync_dir(d->path, e);
    }
    qpk_outdir_discard(d);
    return s;
}
