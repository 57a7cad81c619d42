/* A PMDK client for tests/dax/test_preload.py: libpmem and libpmemobj as their users call them,
   nothing of daxfs in it. Under `daxfs run` its mappings of daxfs files are real DAX with MAP_SYNC.

   map FILE SIZE          pmem_map_file(PMEM_FILE_CREATE): prints is_pmem=0|1
   write FILE SIZE SEED   the same, then a pattern with pmem_memcpy_persist; "persisted"; waits on stdin
   check FILE SIZE SEED   how many pages differ from the pattern
   tx FILE N              a libpmemobj pool (created if absent): N transactions, each appending to an
                          array and incrementing a counter, "committed I" after each one's TX_END
   verify FILE            pmemobj_open; every item of the array as the transactions wrote it */
#include <errno.h>
#include <libpmem.h>
#include <libpmemobj.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE 4096
#define LAYOUT "daxfs-test"
#define ITEMS 100000

struct root {
    uint64_t count;
    uint64_t items[ITEMS];
};

static unsigned char pat(size_t i, unsigned seed) { return (unsigned char)((i * 13 + seed * 5 + i / PAGE) % 253); }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3)
        return 2;
    const char *cmd = argv[1], *path = argv[2];
    if (!strcmp(cmd, "map") || !strcmp(cmd, "write") || !strcmp(cmd, "check")) {
        size_t size = strtoul(argv[3], NULL, 0), len;
        int is_pmem;
        char *p = pmem_map_file(path, !strcmp(cmd, "check") ? 0 : size, !strcmp(cmd, "check") ? 0 : PMEM_FILE_CREATE,
                                0600, &len, &is_pmem);
        if (!p) {
            printf("pmem_map_file: %s\n", pmem_errormsg());
            return 1;
        }
        if (!strcmp(cmd, "map")) {
            printf("is_pmem=%d len=%zu\n", is_pmem, len);
        } else if (!strcmp(cmd, "write")) {
            unsigned seed = atoi(argv[4]);
            char *buf = malloc(len);
            for (size_t i = 0; i < len; i++)
                buf[i] = pat(i, seed);
            for (size_t off = 0; off < len; off += PAGE)  /* page by page: each its own store and persist */
                pmem_memcpy_persist(p + off, buf + off, PAGE);
            printf("persisted is_pmem=%d\n", is_pmem);
            char c;
            if (read(0, &c, 1) < 0)
                return 3;
        } else {
            unsigned seed = atoi(argv[4]);
            size_t bad = 0;
            for (size_t pg = 0; pg < len / PAGE; pg++)
                for (size_t i = pg * PAGE; i < (pg + 1) * PAGE; i++)
                    if ((unsigned char)p[i] != pat(i, seed)) {
                        bad++;
                        break;
                    }
            printf("bad %zu\n", bad);
        }
        pmem_unmap(p, len);
        return 0;
    }
    if (!strcmp(cmd, "tx")) {
        long n = atol(argv[3]);
        PMEMobjpool *pop = pmemobj_create(path, LAYOUT, 16 << 20, 0600);
        if (!pop && errno == EEXIST)
            pop = pmemobj_open(path, LAYOUT);
        if (!pop) {
            printf("pmemobj: %s\n", pmemobj_errormsg());
            return 1;
        }
        struct root *r = pmemobj_direct(pmemobj_root(pop, sizeof(struct root)));
        for (long i = 0; i < n && r->count < ITEMS; i++) {
            uint64_t c = r->count;
            TX_BEGIN(pop) {
                pmemobj_tx_add_range_direct(&r->items[c], sizeof r->items[c]);
                r->items[c] = c * 7 + 1;
                pmemobj_tx_add_range_direct(&r->count, sizeof r->count);
                r->count = c + 1;
            } TX_ONABORT {
                printf("abort: %s\n", pmemobj_errormsg());
                return 1;
            } TX_END
            printf("committed %llu\n", (unsigned long long)c + 1);
        }
        pmemobj_close(pop);
        printf("closed\n");
        return 0;
    }
    if (!strcmp(cmd, "verify")) {
        PMEMobjpool *pop = pmemobj_open(path, LAYOUT);
        if (!pop) {
            printf("pmemobj_open: %s\n", pmemobj_errormsg());
            return 1;
        }
        struct root *r = pmemobj_direct(pmemobj_root(pop, sizeof(struct root)));
        uint64_t bad = 0;
        for (uint64_t i = 0; i < r->count; i++)
            bad += r->items[i] != i * 7 + 1;
        bad += r->count < ITEMS && r->items[r->count] != 0;  /* an aborted append left nothing */
        printf("count %llu bad %llu\n", (unsigned long long)r->count, (unsigned long long)bad);
        pmemobj_close(pop);
        return 0;
    }
    return 2;
}
