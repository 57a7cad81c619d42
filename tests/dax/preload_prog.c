/* The C program tests/dax/test_preload.py runs under `daxfs run` (and without it): each subcommand
   does what an unmodified program does with mmap, and prints what it saw. A fault the test expects
   (SIGBUS, SIGSEGV) kills it, which the test sees as its exit status. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static int open_or_die(const char *path, int flags) {
    int fd = open(path, flags);
    if (fd < 0) {
        printf("open: %s\n", strerrorname_np(errno));
        exit(100);
    }
    return fd;
}

static char *map_or_die(size_t len, int prot, int flags, int fd, off_t off) {
    char *p = mmap(NULL, len, prot, flags, fd, off);
    if (p == MAP_FAILED) {
        printf("mmap: %s\n", strerrorname_np(errno));
        exit(101);
    }
    return p;
}

static int kind(const char *s) {  /* "sync": MAP_SHARED_VALIDATE | MAP_SYNC, "shared": MAP_SHARED */
    return !strcmp(s, "sync") ? MAP_SHARED_VALIDATE | MAP_SYNC : MAP_SHARED;
}

static unsigned char pat(size_t i, unsigned seed) { return (unsigned char)((i * 31 + seed * 7 + i / PAGE) % 251); }

static void wait_stdin(void) {
    char buf[8];
    fflush(stdout);
    if (read(0, buf, sizeof buf) < 0)
        exit(102);
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static sigjmp_buf on_sigbus;
static void sigbus(int sig) { (void)sig; siglongjmp(on_sigbus, 1); }

struct worker { int fd, n; char *shared; };

static void *work(void *arg) {  /* windows of its own, made and unmapped again and again; stores into a shared one */
    struct worker *w = arg;
    for (int round = 0; round < 8; round++) {
        off_t off = (off_t)(w->n * 16) * PAGE;
        char *p = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, w->fd, off);
        if (p == MAP_FAILED)
            return (void *)1;
        for (int i = 0; i < 16; i++)
            p[i * PAGE + round] = (char)('a' + w->n);
        if (munmap(p, 16 * PAGE) < 0)
            return (void *)1;
        w->shared[(size_t)(64 + w->n * 16 + round) * PAGE] = (char)('A' + w->n);
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3)
        return 2;
    const char *cmd = argv[1], *path = argv[2];

    if (!strcmp(cmd, "map")) {  /* map FILE FLAGS PROT [rw|ro]: print ok or the errno's name */
        int fd = open_or_die(path, argc > 5 && !strcmp(argv[5], "ro") ? O_RDONLY : O_RDWR);
        char *p = mmap(NULL, PAGE, (int)strtol(argv[4], NULL, 0), (int)strtol(argv[3], NULL, 0), fd, 0);
        printf("%s\n", p == MAP_FAILED ? strerrorname_np(errno) : "ok");
        return 0;
    }
    if (!strcmp(cmd, "flags")) {  /* flags FILE: every flag bit with both shared kinds, read-only */
        int fd = open_or_die(path, O_RDONLY);
        for (int bit = 4; bit < 32; bit++)
            for (int k = 1; k <= 3; k += 2) {
                int flags = k | (int)(1u << bit);
                void *at = NULL;  /* MAP_FIXED, MAP_FIXED_NOREPLACE: at an address just made free */
                if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
                    at = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                    munmap(at, PAGE);
                }
                char *p = mmap(at, PAGE, PROT_READ, flags, fd, 0);
                printf("%#x %s\n", (unsigned)flags, p == MAP_FAILED ? strerrorname_np(errno) : "ok");
                if (p != MAP_FAILED)
                    munmap(p, PAGE);
            }
        return 0;
    }
    if (!strcmp(cmd, "store")) {  /* store FILE LEN sync|shared SEED [msync] [wait] */
        size_t len = strtoul(argv[3], NULL, 0);
        unsigned seed = atoi(argv[5]);
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(len, PROT_READ | PROT_WRITE, kind(argv[4]), fd, 0);
        close(fd);  /* the mapping keeps the file, as in the kernel */
        for (size_t i = 0; i < len; i++)
            p[i] = pat(i, seed);
        if (argc > 6 && !strcmp(argv[6], "msync") && msync(p, len, MS_SYNC) < 0)
            printf("msync: %s\n", strerrorname_np(errno));
        printf("stored\n");
        if (argc > 7 || (argc > 6 && !strcmp(argv[6], "wait")))
            wait_stdin();
        return munmap(p, len) < 0 ? 3 : 0;
    }
    if (!strcmp(cmd, "check")) {  /* check FILE LEN SEED: how many pages differ from the pattern */
        size_t len = strtoul(argv[3], NULL, 0), bad = 0;
        unsigned seed = atoi(argv[4]);
        int fd = open_or_die(path, O_RDONLY);
        char *p = map_or_die(len, PROT_READ, MAP_SHARED, fd, 0);
        for (size_t pg = 0; pg < len / PAGE; pg++)
            for (size_t i = pg * PAGE; i < (pg + 1) * PAGE; i++)
                if ((unsigned char)p[i] != pat(i, seed)) {
                    bad++;
                    break;
                }
        printf("bad %zu\n", bad);
        return 0;
    }
    if (!strcmp(cmd, "eof")) {  /* a 1-page file mapped over 2 pages: page 1 is beyond EOF */
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        p[0] = 1;
        printf("page 0 ok\n");
        p[PAGE] = 1;
        printf("page 1 ok\n");
        return 0;
    }
    if (!strcmp(cmd, "revoke")) {  /* the daemon goes while the window lives */
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        p[0] = 1;
        printf("mapped\n");
        wait_stdin();
        p[PAGE] = 1;
        printf("stored after the daemon went\n");
        return 0;
    }
    if (!strcmp(cmd, "threads")) {  /* 4 threads at once on a 128-page file */
        int fd = open_or_die(path, O_RDWR);
        char *shared = map_or_die(128 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        pthread_t t[4];
        struct worker w[4];
        for (int i = 0; i < 4; i++) {
            w[i] = (struct worker){fd, i, shared};
            pthread_create(&t[i], NULL, work, &w[i]);
        }
        int failed = 0;
        for (int i = 0; i < 4; i++) {
            void *r;
            pthread_join(t[i], &r);
            failed += r != NULL;
        }
        printf("failed %d munmap %d\n", failed, munmap(shared, 128 * PAGE));
        return 0;
    }
    if (!strcmp(cmd, "after-death")) {  /* stores into pages not yet faulted, once the daemon is dead */
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(256 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        p[0] = 1;
        printf("mapped\n");
        wait_stdin();
        signal(SIGBUS, sigbus);
        volatile int n = 1;
        if (!sigsetjmp(on_sigbus, 1))
            for (; n < 256; n++)
                p[(size_t)n * PAGE] = 2;
        printf("stored %d\n", n - 1);
        return 0;
    }
    if (!strcmp(cmd, "segv")) {  /* access after munmap */
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        p[0] = 'x';
        printf("munmap %d\n", munmap(p, PAGE));
        p[0] = 'y';
        printf("still here\n");
        return 0;
    }
    if (!strcmp(cmd, "partial")) {  /* 4 pages; unmap the middle two, then the rest */
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        memset(p, 'a', 4 * PAGE);
        printf("munmap middle %d\n", munmap(p + PAGE, 2 * PAGE));
        p[0] = 'b';
        p[3 * PAGE] = 'c';
        printf("ends %c %c\n", p[0], p[3 * PAGE]);
        wait_stdin();  /* the test looks: still one mapping */
        printf("munmap rest %d %d\n", munmap(p, PAGE), munmap(p + 3 * PAGE, PAGE));
        wait_stdin();  /* none */
        return 0;
    }
    if (!strcmp(cmd, "mremap")) {
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        memcpy(p, "one", 4);
        char *q = mremap(p, PAGE, 4 * PAGE, 0);
        printf("grow in place: %s\n", q == MAP_FAILED ? strerrorname_np(errno) : "ok");
        q = mremap(p, PAGE, 4 * PAGE, MREMAP_MAYMOVE);
        if (q == MAP_FAILED) {
            printf("grow: %s\n", strerrorname_np(errno));
            return 1;
        }
        printf("grown: %s\n", q);
        memcpy(q + 3 * PAGE, "four", 5);
        char *r = mremap(q, 4 * PAGE, 2 * PAGE, 0);
        printf("shrunk in place: %s\n", r == q ? "yes" : "no");
        memcpy(r + PAGE, "two", 4);
        printf("munmap %d\n", munmap(r, 2 * PAGE));
        return 0;
    }
    if (!strcmp(cmd, "fork")) {
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        p[0] = 'P';
        printf("dofork: %s\n", madvise(p, PAGE, MADV_DOFORK) < 0 ? strerrorname_np(errno) : "ok");
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {  /* its own window works; the parent's is not there */
            char *c = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
            if (c == MAP_FAILED)
                _exit(10);
            c[PAGE] = 'C';
            munmap(c, 2 * PAGE);
            p[0] = 'X';
            _exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
        printf("child: %s %d\n", WIFSIGNALED(status) ? "signal" : "exit",
               WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        p[1] = 'Q';
        printf("parent: %c%c\n", p[0], p[1]);
        return munmap(p, PAGE) < 0;
    }
    if (!strcmp(cmd, "remove")) {  /* MADV_REMOVE punches the file, not the image */
        int fd = open_or_die(path, O_RDWR);
        char *p = map_or_die(3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
        memset(p, 'r', 3 * PAGE);
        printf("remove: %s\n", madvise(p + PAGE, PAGE, MADV_REMOVE) < 0 ? strerrorname_np(errno) : "ok");
        printf("after: %d %d %d\n", p[0], p[PAGE], p[2 * PAGE]);
        return munmap(p, 3 * PAGE) < 0;
    }
    if (!strcmp(cmd, "protect")) {  /* a window of a read-only descriptor cannot be made writable */
        int fd = open_or_die(path, O_RDONLY);
        char *p = map_or_die(PAGE, PROT_READ, MAP_SHARED, fd, 0);
        printf("mprotect: %s\n", mprotect(p, PAGE, PROT_READ | PROT_WRITE) < 0 ? strerrorname_np(errno) : "ok");
        return 0;
    }
    if (!strcmp(cmd, "latency")) {  /* latency FILE PAGES sync|shared [read]: p50 of first accesses, µs */
        size_t n = strtoul(argv[3], NULL, 0);
        int fd = open_or_die(path, O_RDWR);
        int reads = argc > 5 && !strcmp(argv[5], "read");
        volatile char *p = (volatile char *)map_or_die(n * PAGE, PROT_READ | PROT_WRITE, kind(argv[4]), fd, 0);
        double *t = calloc(n, sizeof *t);
        for (size_t i = 0; i < n; i++) {
            double t0 = now_us();
            if (reads)
                (void)p[i * PAGE];
            else
                p[i * PAGE] = 1;
            t[i] = now_us() - t0;
        }
        double sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += t[i];
        qsort(t, n, sizeof *t, cmp);
        printf("p50 %.1f p90 %.1f max %.1f mean %.1f\n", t[n / 2], t[n * 9 / 10], t[n - 1], sum / n);
        return 0;
    }
    return 2;
}
