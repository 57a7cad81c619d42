/*
 * daxfs preload library: real DAX mappings, with MAP_SYNC, for unmodified programs.
 * `daxfs run -- PROGRAM ARGS` puts it in LD_PRELOAD (docs/run.md).
 *
 * WHAT IT INTERCEPTS, AND WHY
 *   mmap, mmap64  A MAP_SHARED or MAP_SHARED_VALIDATE mapping of a regular file on a daxfs mount (the
 *                 file answers the xattr user.daxfs.control) becomes a *window*, as daxfs.dax makes
 *                 for Python (daxfs/dax/mapping.py, the reference): the file's pages are the image's
 *                 own pages (the daemon's layout, mapped MAP_FIXED from the image descriptor it hands
 *                 over), registered with a userfaultfd that the daemon serves (daemon/userfaults.py).
 *                 So every first load or store faults as on a DAX kernel, and with MAP_SYNC a page is
 *                 writable only once its block mapping is committed. The kernel cannot do this for a
 *                 FUSE file: it refuses MAP_SYNC (EOPNOTSUPP) and maps its own page cache.
 *                 Flags are validated as mm/mmap.c does (LEGACY_MAP_MASK; MAP_SYNC only with
 *                 MAP_SHARED_VALIDATE; other unknown bits with VALIDATE: EOPNOTSUPP; PROT_WRITE needs
 *                 an O_RDWR descriptor: EACCES). Hints, MAP_FIXED and MAP_FIXED_NOREPLACE place the
 *                 window. The descriptor is dup'ed and kept while the window lives (msync, MADV_REMOVE).
 *                 Where the daemon cannot serve real faults (image not on tmpfs, read-only mount, no
 *                 userfaultfd): MAP_SYNC fails with EOPNOTSUPP (one line on stderr says why, once);
 *                 a plain MAP_SHARED goes to the kernel (FUSE's page cache), as without this library.
 *   munmap        Whole or partial windows: what is left is tracked; the daemon is told (dax_unmap)
 *                 when the last part goes, before the address range is given back.
 *   mremap        A window shrinks in place; with MREMAP_MAYMOVE it grows or moves as a new window
 *                 of the new size at the same file offset (the same file pages), the old one unmapped.
 *                 Otherwise ENOMEM (a window cannot grow in place).
 *   msync         MS_SYNC on a window is fdatasync of its file, as on Linux DAX: it commits the block
 *                 mappings, so a window without MAP_SYNC is durable from msync on.
 *   madvise       MADV_REMOVE on a window punches the file (fallocate PUNCH_HOLE|KEEP_SIZE through the
 *                 kept descriptor): passed through, it would punch the image itself. MADV_DOFORK is
 *                 refused (EINVAL): windows are MADV_DONTFORK, because a child would inherit them
 *                 unregistered, plain image memory with no one to fault it. Others pass through.
 *   mprotect      PROT_WRITE on a window of an O_RDONLY descriptor: EACCES, as the kernel says for
 *                 such a mapping (the window is mapped from the image, which is open read-write).
 * Everything else passes through untouched: MAP_PRIVATE, anonymous memory, files elsewhere.
 * fallocate, posix_fallocate and lseek SEEK_DATA/SEEK_HOLE need nothing here: they reach the daemon
 * through FUSE already (daxfs/daemon/fuseshim.c adds the operations pyfuse3 cannot receive).
 *
 * HOW
 * The real calls are raw system calls (no dlsym, no recursion). The wire protocol is the daemon's
 * (daxfs/dax/protocol.py, daemon/faults.py): JSON lines on the control socket, descriptors over
 * SCM_RIGHTS on the `fds` socket. The connection on which a window's userfaultfd went to the daemon
 * stays open: it is the window's *watch*. When the daemon goes away it closes, and one watcher thread
 * (per process, started with the first window) puts SIGBUS memory over the window (a mapping of an
 * empty memfd), as Linux does to mappings of a file system that went away. The library keeps its own
 * copy of the userfaultfd until then: were the daemon's the last, its death would unregister the
 * window at once, and until the watcher acts, a store to a page not yet faulted would land, with no
 * fault and no error, in a block the file does not own (measured: all 255 such stores of a program
 * did). With the copy, such a fault waits; closing the copy after the SIGBUS memory is in place wakes
 * it, and it retries there: SIGBUS. A mutex guards the table;
 * a forked child forgets the windows (it has none: MADV_DONTFORK). Errors never crash the program:
 * every one is -1 or MAP_FAILED with errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define PAGE 4096UL
#define CONTROL_XATTR "user.daxfs.control"
#define MAX_LINE (64 * 1024 + 2)  /* protocol.MAX_MESSAGE, and its newline */
#define IO_TIMEOUT 30             /* seconds, as daxfs.dax */

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#define MAP_TYPE_MASK 0x0f
/* include/linux/mman.h, LEGACY_MAP_MASK on x86-64 (the same bits as daxfs.dax.mapping's) */
#define LEGACY_MAP_MASK (0x01 | 0x02 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x800 | 0x1000 | 0x2000 | 0x4000 \
                         | 0x8000 | 0x10000 | 0x20000 | 0x40000 | 0x7C000000)

/* userfaultfd (include/uapi/linux/userfaultfd.h; the same features as daxfs/dax/uffd.py) */
#define UFFD_API_ 0xAA
#define UFFD_USER_MODE_ONLY_ 1
#define FEATURES ((1ULL << 0) | (1ULL << 5) | (1ULL << 10) | (1ULL << 12) | (1ULL << 14))
#define MODE_MISSING 1
#define MODE_WP 2
#define MODE_MINOR 4
#define IOWR(nr, size) ((3UL << 30) | ((unsigned long)(size) << 16) | (UFFD_API_ << 8) | (nr))
#define UFFDIO_API_ IOWR(0x3F, 24)
#define UFFDIO_REGISTER_ IOWR(0x00, 32)

/* --- the table -------------------------------------------------------------------------------- */
struct piece { uintptr_t start, end; };

struct window {
    struct window *next;
    unsigned long serial;      /* tells a window from a later one that reuses its watch's number */
    uintptr_t base;            /* the window as mapped: [base, base+len) is file [offset, offset+len) */
    size_t len;
    off_t offset;
    struct piece *pieces;      /* what of it is still mapped */
    int npieces, cap;
    int file_fd;               /* the program's descriptor, dup'ed (F_DUPFD_CLOEXEC) */
    int watch;                 /* the connection the userfaultfd went over; -1 once closed */
    int uffd;                  /* our own copy of the userfaultfd (see below); -1 once closed */
    int prot, flags, writable; /* writable: the descriptor is O_RDWR */
    long long id;              /* the daemon's mapping id */
    char control[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct window *windows;
static volatile int nwindows;  /* read without the lock: the fast path of every call */
static unsigned long serials;
static int wake_pipe[2] = {-1, -1};
static int watcher_started;
static int said_why;

/* --- raw calls ---------------------------------------------------------------------------------- */
static void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}
static int sys_munmap(void *addr, size_t len) { return (int)syscall(SYS_munmap, addr, len); }
static int sys_madvise(void *addr, size_t len, int advice) { return (int)syscall(SYS_madvise, addr, len, advice); }

static void close_keep_errno(int fd) {
    int e = errno;
    if (fd >= 0)
        close(fd);
    errno = e;
}

static void say_once(const char *fmt, ...) {
    if (__atomic_exchange_n(&said_why, 1, __ATOMIC_SEQ_CST))
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    int e = errno;
    ssize_t w = write(2, buf, n);
    (void)w;
    errno = e;
}

/* --- the protocol: JSON lines ------------------------------------------------------------------- */
static int errno_named(const char *s) {
    static const struct { const char *name; int code; } names[] = {
        {"EACCES", EACCES}, {"EPERM", EPERM}, {"EINVAL", EINVAL}, {"ENOENT", ENOENT}, {"EBADF", EBADF},
        {"ENOMEM", ENOMEM}, {"ENOSPC", ENOSPC}, {"EROFS", EROFS}, {"EOPNOTSUPP", EOPNOTSUPP},
        {"ESRCH", ESRCH}, {"EIO", EIO}, {"ENODEV", ENODEV}, {"EFBIG", EFBIG}, {"EOVERFLOW", EOVERFLOW},
        {"EFAULT", EFAULT}, {"EEXIST", EEXIST}, {"ENOTCONN", ENOTCONN}, {"EAGAIN", EAGAIN},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n = strlen(names[i].name);
        if (!strncmp(s, names[i].name, n) && s[n] == ':')
            return names[i].code;
    }
    return EIO;
}

/* the value of top-level key `key` in a reply (json.dumps' format), or NULL */
static const char *jget(const char *line, const char *key) {
    size_t n = strlen(key);
    for (const char *p = strchr(line, '"'); p; p = strchr(p + 1, '"')) {
        if (p > line && p[-1] == '\\')
            continue;
        if (!strncmp(p + 1, key, n) && p[n + 1] == '"') {
            const char *v = p + n + 2;
            while (*v == ' ')
                v++;
            if (*v != ':')
                continue;
            v++;
            while (*v == ' ')
                v++;
            return v;
        }
    }
    return NULL;
}

static int jtrue(const char *line, const char *key) {
    const char *v = jget(line, key);
    return v && !strncmp(v, "true", 4);
}

static long long jint(const char *line, const char *key, long long dflt) {
    const char *v = jget(line, key);
    if (!v || (*v != '-' && (*v < '0' || *v > '9')))
        return dflt;
    return strtoll(v, NULL, 10);
}

/* a string value, unescaped simply (the daemon's are paths and plain words) */
static int jstr(const char *line, const char *key, char *out, size_t size) {
    const char *v = jget(line, key);
    if (!v || *v != '"' || !size)
        return -1;
    size_t i = 0;
    for (v++; *v && *v != '"'; v++) {
        if (*v == '\\' && v[1])
            v++;
        if (i + 1 < size)
            out[i++] = *v;
    }
    out[i] = 0;
    return 0;
}

/* errno of a refusal {"ok": false, "error": "ENAME: what"} (EIO if it says none) */
static int refusal(const char *line) {
    const char *v = jget(line, "error");
    return v && *v == '"' ? errno_named(v + 1) : EIO;
}

static int connect_unix(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct timeval tv = {.tv_sec = IO_TIMEOUT};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close_keep_errno(s);
        return -1;
    }
    return s;
}

/* send `msg` (with descriptors fds[0..nfds) attached, if any) */
static int send_msg(int s, const char *msg, const int *fds, int nfds) {
    size_t len = strlen(msg), done = 0;
    char cbuf[CMSG_SPACE(sizeof(int) * 2)];
    while (done < len) {
        struct iovec iov = {.iov_base = (char *)msg + done, .iov_len = len - done};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        if (nfds && !done) {
            memset(cbuf, 0, sizeof cbuf);
            mh.msg_control = cbuf;
            mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
            memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
        }
        ssize_t n = sendmsg(s, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += n;
    }
    return 0;
}

/* read one reply line into buf (NUL-terminated, no newline), taking the descriptors that come with
   it into fds (up to *nfds; *nfds is set to how many came; extra ones are closed) */
static int recv_line(int s, char *buf, size_t size, int *fds, int *nfds) {
    size_t len = 0;
    int want = nfds ? *nfds : 0, got = 0;
    for (;;) {
        char cbuf[CMSG_SPACE(sizeof(int) * 4)];
        struct iovec iov = {.iov_base = buf + len, .iov_len = size - 1 - len};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
        if (iov.iov_len == 0) {
            errno = EPROTO;
            goto fail;
        }
        ssize_t n = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        for (struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (got < want)
                    fds[got++] = fd;
                else
                    close(fd);
            }
        }
        if (n < 0)
            goto fail;
        if (n == 0) {
            errno = ECONNRESET;
            goto fail;
        }
        len += n;
        buf[len] = 0;
        char *nl = memchr(buf, '\n', len);
        if (nl) {
            *nl = 0;
            if (nfds)
                *nfds = got;
            return 0;
        }
    }
fail:
    for (int i = 0; i < got; i++)
        close_keep_errno(fds[i]);
    if (nfds)
        *nfds = 0;
    return -1;
}

/* one request on a connection, its reply in buf; -1 with errno if refused or the daemon is gone */
static int call(int s, const char *req, char *buf, size_t size) {
    if (send_msg(s, req, NULL, 0) < 0 || recv_line(s, buf, size, NULL, NULL) < 0) {
        if (errno != EACCES && errno != EPERM)
            errno = ENOTCONN;
        return -1;
    }
    if (!jtrue(buf, "ok")) {
        errno = refusal(buf);
        return -1;
    }
    return 0;
}

static void dax_unmap(const char *control, long long id) {
    int e = errno;
    int s = connect_unix(control);
    if (s >= 0) {
        char req[96], *buf = malloc(MAX_LINE);
        snprintf(req, sizeof req, "{\"op\": \"dax_unmap\", \"id\": %lld}\n", id);
        if (buf)
            call(s, req, buf, MAX_LINE);  /* refused: revoked already, or a new daemon; nothing holds it */
        free(buf);
        close(s);
    }
    errno = e;
}

/* --- the watcher ---------------------------------------------------------------------------------- */
static void sigbus_over(struct window *w) {
    /* a memfd of size 0: every page is beyond its end, so any access is SIGBUS */
    int memfd = (int)syscall(SYS_memfd_create, "daxfs-revoked", MFD_CLOEXEC);
    for (int i = 0; i < w->npieces; i++) {
        struct piece *p = &w->pieces[i];
        if (memfd >= 0)
            sys_mmap((void *)p->start, p->end - p->start, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd, 0);
        else  /* no memfd: inaccessible memory, SIGSEGV rather than stale image pages */
            sys_mmap((void *)p->start, p->end - p->start, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    }
    if (memfd >= 0)
        close(memfd);
}

static void *watcher(void *arg) {
    (void)arg;
    struct pollfd *pfd = NULL;
    unsigned long *serial = NULL;
    int cap = 0;
    for (;;) {
        pthread_mutex_lock(&lock);
        int n = 1;
        for (struct window *w = windows; w; w = w->next)
            n += w->watch >= 0;
        if (n > cap) {
            struct pollfd *np = realloc(pfd, n * sizeof *pfd);
            unsigned long *ns = np ? realloc(serial, n * sizeof *serial) : NULL;
            if (np)
                pfd = np;
            if (ns)
                serial = ns;
            if (!np || !ns) {
                pthread_mutex_unlock(&lock);
                sleep(1);
                continue;
            }
            cap = n;
        }
        pfd[0] = (struct pollfd){.fd = wake_pipe[0], .events = POLLIN};
        n = 1;
        for (struct window *w = windows; w; w = w->next)
            if (w->watch >= 0) {
                pfd[n] = (struct pollfd){.fd = w->watch, .events = POLLIN};
                serial[n++] = w->serial;
            }
        pthread_mutex_unlock(&lock);
        if (poll(pfd, n, -1) < 0)
            continue;
        if (pfd[0].revents) {
            char drain[64];
            while (read(wake_pipe[0], drain, sizeof drain) > 0)
                ;
        }
        pthread_mutex_lock(&lock);
        for (int i = 1; i < n; i++) {
            if (!pfd[i].revents)
                continue;
            struct window *w = windows;
            while (w && !(w->serial == serial[i] && w->watch == pfd[i].fd))
                w = w->next;
            if (!w)
                continue;  /* unmapped meanwhile: its descriptor may be someone else's now */
            char junk[256];
            ssize_t r = recv(w->watch, junk, sizeof junk, MSG_DONTWAIT);
            if (r > 0 || (r < 0 && (errno == EAGAIN || errno == EINTR)))
                continue;  /* the daemon says nothing on a watch; ignore it if it does */
            sigbus_over(w);  /* the daemon is gone, and its userfaultfd with it */
            close(w->watch);
            w->watch = -1;
            if (w->uffd >= 0)
                close(w->uffd);  /* wakes the faults waiting on it: they retry on the SIGBUS memory */
            w->uffd = -1;
        }
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

static void wake_watcher(void) {
    if (wake_pipe[1] >= 0) {
        ssize_t r = write(wake_pipe[1], "w", 1);
        (void)r;
    }
}

/* with the lock held */
static int start_watcher(void) {
    if (watcher_started)
        return 0;
    if (wake_pipe[0] < 0 && pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -1;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  /* the program's signals are for its own threads */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_t t;
    int err = pthread_create(&t, &attr, watcher, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        errno = err;
        return -1;
    }
    watcher_started = 1;
    return 0;
}

/* A window's own descriptors and memory (its watch is closed by the caller: with or without a
   shutdown, which depends on whose connection it is). */
static void free_window(struct window *w) {
    if (w->uffd >= 0)
        close(w->uffd);
    if (w->file_fd >= 0)
        close(w->file_fd);
    free(w->pieces);
    free(w);
}

static void atfork_prepare(void) { pthread_mutex_lock(&lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&lock); }
static void atfork_child(void) {
    /* The child has no windows (MADV_DONTFORK) and no watcher thread. Its copies of the watches
       are closed without shutdown: the connections are still the parent's. */
    pthread_mutex_init(&lock, NULL);
    for (struct window *w = windows, *next; w; w = next) {
        next = w->next;
        if (w->watch >= 0)
            close(w->watch);
        free_window(w);
    }
    windows = NULL;
    nwindows = 0;
    watcher_started = 0;
    for (int i = 0; i < 2; i++)
        if (wake_pipe[i] >= 0)
            close(wake_pipe[i]);
    wake_pipe[0] = wake_pipe[1] = -1;
}

__attribute__((constructor)) static void init(void) {
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* --- table edits (lock held) ------------------------------------------------------------------------ */
static int add_piece(struct window *w, uintptr_t a, uintptr_t b) {
    if (w->npieces == w->cap) {
        int cap = w->cap ? 2 * w->cap : 4;
        struct piece *p = realloc(w->pieces, cap * sizeof *p);
        if (!p)
            return -1;
        w->pieces = p;
        w->cap = cap;
    }
    w->pieces[w->npieces++] = (struct piece){a, b};
    return 0;
}

/* Take [a, b) out of every window; windows left with nothing are unlinked onto *dead (the caller
   finishes them with finish_dead, then unmaps). -1 ENOMEM if a split found no memory. */
static int forget(uintptr_t a, uintptr_t b, struct window **dead) {
    for (struct window **pw = &windows; *pw;) {
        struct window *w = *pw;
        for (int i = 0; i < w->npieces; i++) {
            struct piece p = w->pieces[i];
            if (p.end <= a || p.start >= b)
                continue;
            if (p.start < a && p.end > b) {  /* a hole in the middle: two pieces */
                if (add_piece(w, b, p.end) < 0) {
                    errno = ENOMEM;
                    return -1;
                }
                w->pieces[i].end = a;
            } else if (p.start < a) {
                w->pieces[i].end = a;
            } else if (p.end > b) {
                w->pieces[i].start = b;
            } else {
                w->pieces[i--] = w->pieces[--w->npieces];
            }
        }
        if (w->npieces == 0) {
            *pw = w->next;
            w->next = *dead;
            *dead = w;
            nwindows--;
        } else {
            pw = &w->next;
        }
    }
    return 0;
}

/* Without the lock: tell the daemon, close the watch (after dax_unmap, so that the daemon's end of
   it is not taken for the daemon going away), close the descriptor. Then the range may be unmapped. */
static void finish_dead(struct window *dead) {
    int e = errno;
    for (struct window *w = dead, *next; w; w = next) {
        next = w->next;
        if (w->watch >= 0) {
            dax_unmap(w->control, w->id);
            shutdown(w->watch, SHUT_RDWR);
            close(w->watch);
        }
        free_window(w);
    }
    if (dead)
        wake_watcher();
    errno = e;
}

/* the window piece holding all of [a, b), or NULL (lock held) */
static struct window *window_holding(uintptr_t a, uintptr_t b, int *any_overlap) {
    *any_overlap = 0;
    for (struct window *w = windows; w; w = w->next)
        for (int i = 0; i < w->npieces; i++) {
            struct piece *p = &w->pieces[i];
            if (p->end <= a || p->start >= b)
                continue;
            *any_overlap = 1;
            if (p->start <= a && b <= p->end)
                return w;
        }
    return NULL;
}

static int replacing(uintptr_t a, size_t len);

/* --- making a window -------------------------------------------------------------------------------- */
enum { MADE, NOT_REAL, FAILED };

/* Map [off, off+len) of fd as a window at addr (placement: MAP_FIXED, MAP_FIXED_NOREPLACE or a hint
   in `place`). Returns MADE (*out), NOT_REAL (the daemon cannot serve real faults: *why says why),
   or FAILED (errno). */
static int make_window(void *addr, size_t len, int prot, int flags, int place, int fd, off_t off,
                       const char *control, int writable, void **out, char *why, size_t why_size) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return FAILED;
    char *buf = malloc(MAX_LINE);
    if (!buf) {
        errno = ENOMEM;
        return FAILED;
    }
    int ctl = -1, image = -1, board = -1, ufd = -1, watch = -1, result = FAILED, mapped = 0;
    long long id = -1;
    uintptr_t base = 0;
    char req[512], fds_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct window *w = NULL;

    ctl = connect_unix(control);
    if (ctl < 0) {  /* the daemon's sockets are root's and the image owner's only */
        snprintf(why, why_size, "the daemon's socket %s: %s (direct access is for root and the image's owner)",
                 control, strerror(errno));
        result = NOT_REAL;
        goto out;
    }
    snprintf(req, sizeof req, "{\"op\": \"dax_map\", \"ino\": %llu, \"offset\": %lld, \"length\": %zu, "
             "\"write\": %s, \"sync\": %s, \"real\": true}\n", (unsigned long long)st.st_ino, (long long)off, len,
             writable ? "true" : "false", flags & MAP_SYNC ? "true" : "false");
    if (call(ctl, req, buf, MAX_LINE) < 0) {
        if (errno == EACCES || errno == EPERM) {  /* not this user's: the kernel's mapping, as without us */
            if (jstr(buf, "error", why, why_size) < 0)
                snprintf(why, why_size, "the daemon refused direct access");
            result = NOT_REAL;
        }
        goto out;
    }
    id = jint(buf, "id", -1);
    if (!jtrue(buf, "real")) {
        if (jstr(buf, "why", why, why_size) < 0)
            snprintf(why, why_size, "the daemon offers no real faults");
        result = NOT_REAL;
        goto out;
    }
    if (jstr(buf, "fds", fds_path, sizeof fds_path) < 0) {
        errno = EPROTO;
        goto out;
    }
    /* the image (read-write: userfaultfd registers only memory that could be made writable) and the board */
    int s = connect_unix(fds_path);
    if (s < 0)
        goto out;
    int got[2], nfds = 2;
    if (send_msg(s, "{\"write\": true}\n", NULL, 0) < 0 || recv_line(s, buf, MAX_LINE, got, &nfds) < 0) {
        close_keep_errno(s);
        goto out;
    }
    close(s);
    if (!jtrue(buf, "ok") || nfds != 2) {
        for (int i = 0; i < nfds; i++)
            close(got[i]);
        errno = jtrue(buf, "ok") ? EPROTO : refusal(buf);
        goto out;
    }
    image = got[0];
    board = got[1];
    close(board);  /* the board is for explicit faults; a window learns of revocation from its faults */
    board = -1;

    /* the address range: reserved, inaccessible until the runs are mapped over it. What a MAP_FIXED
       replaces is forgotten only now: mmap(2) refuses before it unmaps anything. */
    if (place == MAP_FIXED && replacing((uintptr_t)addr, len) < 0)
        goto out;
    int rflags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (flags & (0x40 | 0x80)) | place;
    void *r = sys_mmap(addr, len, PROT_NONE, rflags, -1, 0);
    if (r == MAP_FAILED)
        goto out;
    base = (uintptr_t)r;
    mapped = 1;
    long long from = 0;
    while (from >= 0) {
        snprintf(req, sizeof req, "{\"op\": \"dax_layout\", \"id\": %lld, \"from\": %lld}\n", id, from);
        if (call(ctl, req, buf, MAX_LINE) < 0)
            goto out;
        const char *p = jget(buf, "runs");
        if (!p || *p != '[') {
            errno = EPROTO;
            goto out;
        }
        p++;
        for (;;) {  /* [[rel_page, pages, pmem_block], ...] */
            while (*p == ' ' || *p == ',')
                p++;
            if (*p != '[')
                break;
            char *e;
            long long rel = strtoll(p + 1, &e, 10), n, pblk;
            n = strtoll(e + 1, &e, 10);
            pblk = strtoll(e + 1, &e, 10);
            if (*e != ']' || rel < 0 || n <= 0 || pblk < 0 || (rel + n) * PAGE > len) {
                errno = EPROTO;
                goto out;
            }
            p = e + 1;
            if (sys_mmap((void *)(base + rel * PAGE), n * PAGE, prot, MAP_SHARED | MAP_FIXED, image,
                         pblk * PAGE) == MAP_FAILED)
                goto out;
        }
        from = jint(buf, "next", -1);
    }
    close(image);
    image = -1;
    if (sys_madvise((void *)base, len, MADV_DONTFORK) < 0)
        goto out;

    /* the userfaultfd: made here, registered here, served by the daemon */
    ufd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (ufd < 0 && errno == EPERM)  /* vm.unprivileged_userfaultfd = 0: user-mode faults only */
        ufd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY_);
    uint64_t api[3] = {UFFD_API_, FEATURES, 0};
    if (ufd < 0 || ioctl(ufd, UFFDIO_API_, api) < 0) {
        snprintf(why, why_size, "userfaultfd: %s", strerror(errno));
        result = NOT_REAL;
        goto out;
    }
    if ((api[1] & FEATURES) != FEATURES) {
        snprintf(why, why_size, "userfaultfd lacks features %#llx", (unsigned long long)(FEATURES & ~api[1]));
        result = NOT_REAL;
        goto out;
    }
    uint64_t reg[4] = {base, len, MODE_MISSING | MODE_MINOR | (writable ? MODE_WP : 0), 0};
    if (ioctl(ufd, UFFDIO_REGISTER_, reg) < 0) {
        snprintf(why, why_size, "userfaultfd cannot register this memory: %s", strerror(errno));
        result = NOT_REAL;
        goto out;
    }
    w = calloc(1, sizeof *w);
    if (w)
        w->file_fd = w->watch = w->uffd = -1;
    if (!w || add_piece(w, base, base + len) < 0) {
        errno = ENOMEM;
        goto out;
    }
    w->file_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (w->file_fd < 0)
        goto out;
    watch = connect_unix(fds_path);
    if (watch < 0)
        goto out;
    snprintf(req, sizeof req, "{\"uffd\": %lld, \"base\": %llu}\n", id, (unsigned long long)base);
    if (send_msg(watch, req, &ufd, 1) < 0 || recv_line(watch, buf, MAX_LINE, NULL, NULL) < 0)
        goto out;
    if (!jtrue(buf, "ok")) {
        errno = refusal(buf);
        goto out;
    }
    w->uffd = ufd;  /* kept: see the top of this file */
    ufd = -1;
    struct timeval none = {0};
    setsockopt(watch, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);

    w->base = base;
    w->len = len;
    w->offset = off;
    w->watch = watch;
    w->prot = prot;
    w->flags = flags;
    w->writable = writable;
    w->id = id;
    snprintf(w->control, sizeof w->control, "%s", control);
    pthread_mutex_lock(&lock);
    if (start_watcher() < 0) {
        pthread_mutex_unlock(&lock);
        goto out;
    }
    w->serial = ++serials;
    w->next = windows;
    windows = w;
    nwindows++;
    pthread_mutex_unlock(&lock);
    wake_watcher();
    watch = -1;
    w = NULL;
    *out = (void *)base;
    result = MADE;
out:;
    int e = errno;
    if (w)
        free_window(w);
    if (result != MADE) {
        if (id >= 0 && ctl >= 0) {  /* or its blocks stay pinned until we exit */
            snprintf(req, sizeof req, "{\"op\": \"dax_unmap\", \"id\": %lld}\n", id);
            call(ctl, req, buf, MAX_LINE);
        }
        if (watch >= 0)
            close(watch);
        if (mapped)
            sys_munmap((void *)base, len);
    }
    for (int *p = (int[]){ctl, image, board, ufd}, i = 0; i < 4; i++)
        if (p[i] >= 0)
            close(p[i]);
    free(buf);
    errno = e;
    return result;
}

/* --- the calls ---------------------------------------------------------------------------------------- */
/* Forget what a MAP_FIXED (or MREMAP_FIXED) mapping is about to replace. */
static int replacing(uintptr_t a, size_t len) {
    if (!nwindows || (a & (PAGE - 1)))
        return 0;
    len = (len + PAGE - 1) & ~(PAGE - 1);
    struct window *dead = NULL;
    pthread_mutex_lock(&lock);
    int r = forget(a, a + len, &dead);
    pthread_mutex_unlock(&lock);
    finish_dead(dead);
    return r;
}

static void *dax_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    int kind = flags & MAP_TYPE_MASK;
    char control[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct stat st;
    int e = errno;
    if (fd < 0 || (flags & MAP_ANONYMOUS) || (kind != MAP_SHARED && kind != MAP_SHARED_VALIDATE)
        || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        errno = e;
        goto pass;
    }
    ssize_t n = fgetxattr(fd, CONTROL_XATTR, control, sizeof control - 1);
    if (n <= 0) {
        errno = e;
        goto pass;  /* not a daxfs file */
    }
    control[n] = 0;

    /* mm/mmap.c's checks, in its order where it matters */
    if (len == 0 || (off & (PAGE - 1)))
        return errno = EINVAL, MAP_FAILED;
    int fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
    int place = flags & MAP_FIXED_NOREPLACE ? MAP_FIXED_NOREPLACE : flags & MAP_FIXED ? MAP_FIXED : 0;
    if (fixed && ((uintptr_t)addr & (PAGE - 1)))
        return errno = EINVAL, MAP_FAILED;
    if (flags & 0x40000)  /* MAP_HUGETLB of a file not on hugetlbfs */
        return errno = EINVAL, MAP_FAILED;
    size_t rlen = (len + PAGE - 1) & ~(PAGE - 1);
    if (rlen < len)
        return errno = ENOMEM, MAP_FAILED;
    if (off < 0 || (unsigned long long)off + rlen < (unsigned long long)off)
        return errno = EOVERFLOW, MAP_FAILED;
    if (kind == MAP_SHARED)
        flags &= LEGACY_MAP_MASK;  /* MAP_SYNC among what it drops */
    else if (flags & ~(LEGACY_MAP_MASK | MAP_SYNC))
        return errno = EOPNOTSUPP, MAP_FAILED;
    int acc = fcntl(fd, F_GETFL);
    if (acc < 0)
        return MAP_FAILED;
    acc &= O_ACCMODE;
    if ((prot & PROT_WRITE) && acc == O_RDONLY)
        return errno = EACCES, MAP_FAILED;
    if (acc == O_WRONLY)
        return errno = EACCES, MAP_FAILED;
    if (flags & 0x100)  /* MAP_GROWSDOWN */
        return errno = EINVAL, MAP_FAILED;
    if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC))
        return errno = EINVAL, MAP_FAILED;

    char why[600] = "";
    void *out;
    int r = make_window(addr, rlen, prot, flags, place, fd, off, control, acc == O_RDWR, &out, why, sizeof why);
    if (r == MADE) {
        if ((flags & MAP_POPULATE) && (prot & PROT_READ)) {  /* read-fault every page up to EOF */
            off_t size = fstat(fd, &st) == 0 ? st.st_size : 0;
            for (off_t p = 0; p < (off_t)rlen && off + p < size; p += PAGE)
                (void)*(volatile char *)((char *)out + p);
        }
        errno = e;
        return out;
    }
    if (r == FAILED)
        return MAP_FAILED;
    if (flags & MAP_SYNC) {
        say_once("daxfs run: MAP_SYNC refused (EOPNOTSUPP): no real faults on this mount: %s", why);
        return errno = EOPNOTSUPP, MAP_FAILED;
    }
    errno = e;  /* a plain shared mapping: the kernel's, of FUSE's page cache */
pass:
    if ((flags & MAP_FIXED) && !(flags & MAP_FIXED_NOREPLACE) && replacing((uintptr_t)addr, len) < 0)
        return MAP_FAILED;
    return sys_mmap(addr, len, prot, flags, fd, off);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return dax_mmap(addr, len, prot, flags, fd, off);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return dax_mmap(addr, len, prot, flags, fd, off);
}

EXPORT int munmap(void *addr, size_t len) {
    if (nwindows && len && !((uintptr_t)addr & (PAGE - 1))) {
        size_t rlen = (len + PAGE - 1) & ~(PAGE - 1);
        if (replacing((uintptr_t)addr, rlen) < 0)
            return -1;
    }
    return sys_munmap(addr, len);
}

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...) {
    void *new_addr = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        new_addr = va_arg(ap, void *);
        va_end(ap);
    }
    uintptr_t a = (uintptr_t)old;
    size_t olen = (old_len + PAGE - 1) & ~(PAGE - 1), nlen = (new_len + PAGE - 1) & ~(PAGE - 1);
    struct window *w = NULL;
    int overlap = 0;
    if (nwindows && !(a & (PAGE - 1)) && olen) {
        pthread_mutex_lock(&lock);
        w = window_holding(a, a + olen, &overlap);
        off_t offset = w ? w->offset + (off_t)(a - w->base) : 0;
        int prot = w ? w->prot : 0, wflags = w ? w->flags : 0, fd = -1;
        char control[sizeof w->control];
        if (w) {
            fd = fcntl(w->file_fd, F_DUPFD_CLOEXEC, 0);  /* the window may go while we map */
            memcpy(control, w->control, sizeof control);
        }
        pthread_mutex_unlock(&lock);
        if (!w && overlap)
            return errno = EFAULT, MAP_FAILED;  /* more than one mapping */
        if (w) {
            void *res = MAP_FAILED;
            if (fd < 0)
                return MAP_FAILED;
            if (!nlen || (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED)) || ((flags & MREMAP_FIXED) && !(flags & MREMAP_MAYMOVE))) {
                errno = EINVAL;
            } else if (nlen <= olen && !(flags & MREMAP_FIXED)) {  /* shrink in place */
                res = old;
                if (nlen < olen && munmap((char *)old + nlen, olen - nlen) < 0)
                    res = MAP_FAILED;
            } else if (!(flags & MREMAP_MAYMOVE)) {
                errno = ENOMEM;  /* a window does not grow in place */
            } else {
                int acc = fcntl(fd, F_GETFL) & O_ACCMODE;
                void *out = NULL;
                char why[600] = "";
                int place = 0;
                if (flags & MREMAP_FIXED)
                    place = MAP_FIXED;
                int r = make_window(new_addr, nlen, prot, wflags, place, fd, offset, control, acc == O_RDWR, &out,
                                    why, sizeof why);
                if (r == MADE) {
                    munmap(old, olen);
                    res = out;
                } else if (r == NOT_REAL) {
                    errno = ENOMEM;
                }
            }
            close_keep_errno(fd);
            return res;
        }
    }
    if ((flags & MREMAP_FIXED) && replacing((uintptr_t)new_addr, nlen) < 0)
        return MAP_FAILED;
    return (void *)syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
}

EXPORT int msync(void *addr, size_t len, int flags) {
    int r = (int)syscall(SYS_msync, addr, len, flags);
    if (r < 0 || !(flags & MS_SYNC) || !nwindows)
        return r;
    /* MS_SYNC: fdatasync of each window's file (commits its block mappings, as on Linux DAX) */
    uintptr_t a = (uintptr_t)addr, b = a + ((len + PAGE - 1) & ~(PAGE - 1));
    int fds[64], n = 0;
    pthread_mutex_lock(&lock);
    for (struct window *w = windows; w && n < 64; w = w->next)
        for (int i = 0; i < w->npieces; i++)
            if (w->pieces[i].start < b && w->pieces[i].end > a) {
                fds[n] = fcntl(w->file_fd, F_DUPFD_CLOEXEC, 0);  /* no fsync under the lock */
                n += fds[n] >= 0;
                break;
            }
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < n; i++) {
        if (r == 0 && fdatasync(fds[i]) < 0)
            r = -1;
        close_keep_errno(fds[i]);
    }
    return r;
}

EXPORT int madvise(void *addr, size_t len, int advice) {
    if (!nwindows || (advice != MADV_REMOVE && advice != MADV_DOFORK))
        return sys_madvise(addr, len, advice);
    uintptr_t a = (uintptr_t)addr, b = a + ((len + PAGE - 1) & ~(PAGE - 1));
    if (a & (PAGE - 1))
        return errno = EINVAL, -1;
    struct { uintptr_t a, b; off_t off; int fd, writable; } parts[64];
    int n = 0;
    pthread_mutex_lock(&lock);
    for (struct window *w = windows; w; w = w->next)
        for (int i = 0; i < w->npieces && n < 64; i++) {
            struct piece *p = &w->pieces[i];
            if (p->end <= a || p->start >= b)
                continue;
            uintptr_t lo = p->start > a ? p->start : a, hi = p->end < b ? p->end : b;
            parts[n].a = lo;
            parts[n].b = hi;
            parts[n].off = w->offset + (off_t)(lo - w->base);
            parts[n].writable = w->writable;
            parts[n].fd = advice == MADV_REMOVE ? fcntl(w->file_fd, F_DUPFD_CLOEXEC, 0) : -1;
            n++;
        }
    pthread_mutex_unlock(&lock);
    int r = 0;
    if (n && advice == MADV_DOFORK) {
        errno = EINVAL;  /* a child must not inherit a window unregistered */
        r = -1;
    }
    for (int i = 0; i < n && advice == MADV_REMOVE; i++) {
        if (r == 0 && !parts[i].writable) {
            errno = EACCES;
            r = -1;
        } else if (r == 0 && parts[i].fd < 0) {
            r = -1;
        } else if (r == 0) {
            r = fallocate(parts[i].fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, parts[i].off,
                          (off_t)(parts[i].b - parts[i].a));
        }
        close_keep_errno(parts[i].fd);
    }
    if (r < 0 || n == 0)
        return n ? r : sys_madvise(addr, len, advice);
    /* the gaps between windows get the kernel's answer */
    uintptr_t at = a;
    while (at < b) {
        uintptr_t next = b;
        int inside = 0;
        for (int i = 0; i < n; i++) {
            if (parts[i].a <= at && at < parts[i].b) {
                inside = 1;
                next = parts[i].b;
                break;
            }
            if (parts[i].a > at && parts[i].a < next)
                next = parts[i].a;
        }
        if (!inside && sys_madvise((void *)at, next - at, advice) < 0)
            return -1;
        at = next;
    }
    return 0;
}

EXPORT int mprotect(void *addr, size_t len, int prot) {
    if (nwindows && (prot & PROT_WRITE)) {
        uintptr_t a = (uintptr_t)addr, b = a + ((len + PAGE - 1) & ~(PAGE - 1));
        int refused = 0;
        pthread_mutex_lock(&lock);
        for (struct window *w = windows; w && !refused; w = w->next)
            for (int i = 0; i < w->npieces; i++)
                if (!w->writable && w->pieces[i].start < b && w->pieces[i].end > a)
                    refused = 1;
        pthread_mutex_unlock(&lock);
        if (refused)
            return errno = EACCES, -1;  /* a shared mapping of a descriptor opened read-only */
    }
    return (int)syscall(SYS_mprotect, addr, len, prot);
}
