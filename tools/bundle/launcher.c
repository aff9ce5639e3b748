/*
 * cvmigrate one-file launcher: a self-extracting archive of a relocatable
 * CPython, the project's code and its wheels.
 *
 * Why our own stub (not PyInstaller's onefile): PyInstaller unpacks into a new
 * temporary directory on every run; the agent starts often (every systemd
 * restart, every `check`), so we unpack once into a private, versioned cache
 * directory and later runs only exec the interpreter (< 0.5 s).
 *
 * Layout of the file: [this ELF][zlib stream of entries][trailer].
 *   trailer  = id[48] (NUL-padded "<version>-<payload hash>") | u64 offset |
 *              u64 length | "CVMBNDL1"
 *   entry    = u8 type ('d' dir, 'f' file, 'l' symlink, 0 end) | u32 mode |
 *              u32 path length | path | u64 data length | data
 *
 * Safety: the cache root must be owned by us and not writable by group or
 * others (nor any ancestor, unless sticky and ours/root's); else the next
 * candidate is tried.  Unpacking goes to a fresh mkdtemp() directory that is
 * renamed into place, so two racing first runs both end with one complete
 * tree and never run a half-written one.
 *
 * CVMIGRATE_LAUNCHER_PYTHON=1 runs the bundled interpreter with the given
 * arguments instead of `python -I -m cvmigrate ARGS` (the SSH bootstrap's
 * remote helper script).  CVMIGRATE_EXECUTABLE tells the program where the
 * one file is (`agent install` copies it).
 *
 * Compiled with zig against glibc 2.17 (tools/build_bundle.sh); links zlib
 * statically.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define MAGIC "CVMBNDL1"
#define ID_LEN 48
#define TRAILER_LEN (ID_LEN + 8 + 8 + 8)

static void die(const char *what, const char *path) {
    fprintf(stderr, "cvmigrate launcher: %s%s%s%s%s\n", what, path ? " " : "", path ? path : "",
            errno ? ": " : "", errno ? strerror(errno) : "");
    exit(70);
}

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* ---- streaming inflate of the payload ---- */
typedef struct {
    int fd;
    uint64_t left;          /* compressed bytes not yet read from the file */
    z_stream zs;
    unsigned char in[1 << 16];
} zreader;

static void zr_read(zreader *r, void *buf, size_t n) {
    r->zs.next_out = buf;
    r->zs.avail_out = (uInt)n;
    while (r->zs.avail_out > 0) {
        if (r->zs.avail_in == 0) {
            if (r->left == 0) { errno = 0; die("payload is truncated", NULL); }
            size_t want = r->left < sizeof r->in ? (size_t)r->left : sizeof r->in;
            ssize_t got = read(r->fd, r->in, want);
            if (got <= 0) die("cannot read the payload", NULL);
            r->left -= (uint64_t)got;
            r->zs.next_in = r->in;
            r->zs.avail_in = (uInt)got;
        }
        int rc = inflate(&r->zs, Z_NO_FLUSH);
        if (rc == Z_STREAM_END && r->zs.avail_out > 0) { errno = 0; die("payload ended early", NULL); }
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) { errno = 0; die("payload is corrupt", NULL); }
    }
}

static uint32_t zr_u32(zreader *r) { unsigned char b[4]; zr_read(r, b, 4); return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24; }
static uint64_t zr_u64(zreader *r) { unsigned char b[8]; zr_read(r, b, 8); return le64(b); }

/* 1 when REL is relative and has no ".." component. */
static int safe_relpath(const char *rel) {
    if (rel[0] == '/') return 0;
    for (const char *c = rel; c; c = strchr(c, '/') ? strchr(c, '/') + 1 : NULL)
        if (c[0] == '.' && c[1] == '.' && (c[2] == '/' || c[2] == 0)) return 0;
    return 1;
}

static void extract(int fd, uint64_t offset, uint64_t length, const char *dest) {
    zreader *r = calloc(1, sizeof *r);
    if (!r) die("out of memory", NULL);
    r->fd = fd;
    r->left = length;
    if (lseek(fd, (off_t)offset, SEEK_SET) < 0) die("cannot seek in", "/proc/self/exe");
    if (inflateInit(&r->zs) != Z_OK) { errno = 0; die("zlib init failed", NULL); }
    static char buf[1 << 16];
    char path[PATH_MAX], rel[PATH_MAX];
    for (;;) {
        unsigned char type;
        zr_read(r, &type, 1);
        if (type == 0) break;
        uint32_t mode = zr_u32(r), plen = zr_u32(r);
        if (plen == 0 || plen >= sizeof rel) { errno = 0; die("bad entry in payload", NULL); }
        zr_read(r, rel, plen);
        rel[plen] = 0;
        if (!safe_relpath(rel)) { errno = 0; die("unsafe path in payload:", rel); }
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dest, rel) >= sizeof path) { errno = 0; die("path too long:", rel); }
        uint64_t dlen = zr_u64(r);
        if (type == 'd') {
            if (mkdir(path, 0700) < 0 && errno != EEXIST) die("cannot create", path);
        } else if (type == 'l') {
            if (dlen >= sizeof buf) { errno = 0; die("bad symlink in payload:", rel); }
            zr_read(r, buf, (size_t)dlen);
            buf[dlen] = 0;
            if (symlink(buf, path) < 0) die("cannot create", path);
        } else if (type == 'f') {
            int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode & 0755);
            if (out < 0) die("cannot create", path);
            while (dlen > 0) {
                size_t n = dlen < sizeof buf ? (size_t)dlen : sizeof buf;
                zr_read(r, buf, n);
                for (size_t done = 0; done < n;) {
                    ssize_t w = write(out, buf + done, n - done);
                    if (w < 0) die("cannot write", path);
                    done += (size_t)w;
                }
                dlen -= n;
            }
            if (close(out) < 0) die("cannot write", path);
        } else {
            errno = 0;
            die("unknown entry type in payload", NULL);
        }
    }
    inflateEnd(&r->zs);
    free(r);
}

/* ---- choosing a safe cache directory ---- */

/* 1 when PATH (which exists) is a directory owned by us, not writable by group/others. */
static int private_dir(const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode)) return 0;
    return st.st_uid == geteuid() && !(st.st_mode & 022);
}

/* 1 when nobody but us (and root) can replace PATH's ancestors: each is owned by us or
 * root and not writable by group/others, unless sticky (like /tmp). */
static int safe_ancestors(const char *path) {
    char p[PATH_MAX];
    if (!realpath(path, p)) return 0;
    for (;;) {
        char *slash = strrchr(p, '/');
        if (!slash) return 1;
        if (slash == p) { p[1] = 0; } else { *slash = 0; }
        struct stat st;
        if (stat(p, &st) < 0) return 0;
        if (st.st_uid != 0 && st.st_uid != geteuid()) return 0;
        if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX)) return 0;
        if (p[1] == 0) return 1;
    }
}

/* Create PATH's missing components with mode 0700; 1 on success. */
static int mkdirs(const char *path) {
    char p[PATH_MAX];
    if ((size_t)snprintf(p, sizeof p, "%s", path) >= sizeof p) return 0;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0700) < 0 && errno != EEXIST) return 0;
        *s = '/';
    }
    return mkdir(p, 0700) == 0 || errno == EEXIST;
}

static int usable_root(const char *root) {
    if (!root || root[0] != '/') return 0;
    if (!mkdirs(root)) return 0;
    if (!private_dir(root)) {
        fprintf(stderr, "cvmigrate launcher: not using %s: it must be a directory owned by uid %u "
                        "that only its owner can write\n", root, (unsigned)geteuid());
        return 0;
    }
    if (!safe_ancestors(root)) {
        fprintf(stderr, "cvmigrate launcher: not using %s: a parent directory is writable by other users\n", root);
        return 0;
    }
    return 1;
}

static int choose_root(char *out, size_t size) {
    char cand[5][PATH_MAX];
    int n = 0;
    const char *e;
    if ((e = getenv("CVMIGRATE_CACHE_DIR")) && *e) snprintf(cand[n++], PATH_MAX, "%s", e);
    if ((e = getenv("XDG_CACHE_HOME")) && *e) snprintf(cand[n++], PATH_MAX, "%s/cvmigrate", e);
    if ((e = getenv("HOME")) && *e) snprintf(cand[n++], PATH_MAX, "%s/.cache/cvmigrate", e);
    snprintf(cand[n++], PATH_MAX, "/var/tmp/cvmigrate-%u", (unsigned)geteuid());
    snprintf(cand[n++], PATH_MAX, "/tmp/cvmigrate-%u", (unsigned)geteuid());
    for (int i = 0; i < n; i++) {
        if (usable_root(cand[i])) {
            snprintf(out, size, "%s", cand[i]);
            return 1;
        }
    }
    return 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f) {
    (void)st; (void)f;
    return flag == FTW_DP ? rmdir(p) : unlink(p);
}

/* Remove ".tmp-*" unpack directories older than an hour: first runs that were killed.
 * (A live first run takes seconds; the hour leaves it alone.) */
static void sweep_stale(const char *root) {
    DIR *d = opendir(root);
    if (!d) return;
    struct dirent *e;
    time_t now = time(NULL);
    char p[PATH_MAX];
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, ".tmp-", 5) != 0) continue;
        struct stat st;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", root, e->d_name) >= sizeof p) continue;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() && now - st.st_mtime > 3600)
            nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    closedir(d);
}

int main(int argc, char **argv) {
    char self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl < 0) die("cannot find itself via", "/proc/self/exe");
    self[sl] = 0;
    int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot open", self);
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size < TRAILER_LEN) die("cannot read", self);
    unsigned char tr[TRAILER_LEN];
    if (pread(fd, tr, TRAILER_LEN, st.st_size - TRAILER_LEN) != TRAILER_LEN) die("cannot read", self);
    if (memcmp(tr + ID_LEN + 16, MAGIC, 8) != 0) { errno = 0; die("no payload in", self); }
    char id[ID_LEN + 1];
    memcpy(id, tr, ID_LEN);
    id[ID_LEN] = 0;
    if (!id[0] || strchr(id, '/') || id[0] == '.') { errno = 0; die("bad bundle id in", self); }
    uint64_t offset = le64(tr + ID_LEN), length = le64(tr + ID_LEN + 8);

    char root[PATH_MAX], dir[PATH_MAX], python[PATH_MAX];
    if (!choose_root(root, sizeof root)) {
        errno = 0;
        die("no private cache directory; set CVMIGRATE_CACHE_DIR to a directory only you can write", NULL);
    }
    snprintf(dir, sizeof dir, "%s/%s", root, id);
    snprintf(python, sizeof python, "%s/bin/python3", dir);

    if (!private_dir(dir) || access(python, X_OK) != 0) {
        sweep_stale(root);
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s/.tmp-%s-XXXXXX", root, id);
        if (!mkdtemp(tmp)) die("cannot create a directory in", root);
        extract(fd, offset, length, tmp);
        if (rename(tmp, dir) < 0) {
            int err = errno;
            nftw(tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
            /* Another first run won the race: use its (complete) tree. */
            errno = err;
            if ((err != EEXIST && err != ENOTEMPTY) || !private_dir(dir)) die("cannot install into", dir);
        }
    }
    close(fd);

    setenv("CVMIGRATE_EXECUTABLE", self, 1);
    char **args = calloc((size_t)argc + 5, sizeof *args);
    if (!args) die("out of memory", NULL);
    int k = 0;
    args[k++] = python;
    const char *raw = getenv("CVMIGRATE_LAUNCHER_PYTHON");
    if (raw && strcmp(raw, "1") == 0) {
        /* The bundled interpreter itself, with the caller's arguments: the SSH
         * bootstrap runs its small remote helper script this way. */
        unsetenv("CVMIGRATE_LAUNCHER_PYTHON");
    } else {
        args[k++] = "-I";   /* ignore PYTHON* variables and user site-packages */
        args[k++] = "-m";
        args[k++] = "cvmigrate";
    }
    for (int i = 1; i < argc; i++) args[k++] = argv[i];
    args[k] = NULL;
    execv(python, args);
    die("cannot run", python);
    return 70;
}
