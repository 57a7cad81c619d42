/* fuseshim: the FUSE operations pyfuse3 cannot receive (fallocate, lseek, copy_file_range).
 *
 * pyfuse3 fills a struct fuse_lowlevel_ops with its own handlers and passes it to libfuse's
 * fuse_session_new(); the entries it leaves NULL are answered ENOSYS by libfuse, and the kernel then
 * stops asking (fallocate and copy_file_range fail with EOPNOTSUPP, SEEK_DATA/SEEK_HOLE fall back to
 * "all data"). This library defines fuse_session_new itself. The daemon loads it RTLD_GLOBAL before
 * it imports pyfuse3 (daxfs/daemon/fuseshim.py), so pyfuse3's reference binds here; we copy pyfuse3's
 * table, add our three entries and call the real fuse_session_new. Everything else stays pyfuse3's.
 *
 * libfuse calls our handlers from fuse_session_process_buf(), which pyfuse3 calls in its trio loop
 * with the GIL held; each handler calls a Python callback (ctypes) synchronously, as pyfuse3's own
 * handlers run their code before the next request is read. The callback returns the result (>= 0),
 * -errno, or SHIM_DEFERRED: then Python replies later through daxfs_shim_reply() (a sync-mode
 * copy that must wait for a commit).
 */
#define FUSE_USE_VERSION 34
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <fuse_lowlevel.h>

#define SHIM_DEFERRED INT64_MIN
enum { OP_FALLOCATE = 1, OP_LSEEK = 2, OP_COPY_FILE_RANGE = 3 };

typedef int64_t (*fallocate_cb)(void *req, uint64_t ino, uint64_t fh, int mode, int64_t off, int64_t len);
typedef int64_t (*lseek_cb)(void *req, uint64_t ino, uint64_t fh, int64_t off, int whence);
typedef int64_t (*copy_cb)(void *req, uint64_t ino_in, uint64_t fh_in, int64_t off_in, uint64_t ino_out,
                           uint64_t fh_out, int64_t off_out, uint64_t len, int flags);

static fallocate_cb py_fallocate;
static lseek_cb py_lseek;
static copy_cb py_copy;
static int sessions;  /* how many sessions were created through us: the daemon checks it is 1 */

int daxfs_shim_register(fallocate_cb f, lseek_cb l, copy_cb c)
{
	py_fallocate = f;
	py_lseek = l;
	py_copy = c;
	return 0;
}

int daxfs_shim_sessions(void) { return sessions; }

int daxfs_shim_reply(fuse_req_t req, int op, int64_t result)
{
	if (result < 0) {
		/* ENOSYS would make the kernel give up on the operation for the whole mount */
		int err = result == -ENOSYS || result < -4095 ? EOPNOTSUPP : (int)-result;
		return fuse_reply_err(req, err);
	}
	switch (op) {
	case OP_FALLOCATE: return fuse_reply_err(req, 0);
	case OP_LSEEK: return fuse_reply_lseek(req, (off_t)result);
	case OP_COPY_FILE_RANGE: return fuse_reply_write(req, (size_t)result);
	}
	return fuse_reply_err(req, EIO);
}

static void reply(fuse_req_t req, int op, int64_t result)
{
	if (result != SHIM_DEFERRED)
		daxfs_shim_reply(req, op, result);
}

static void do_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
	reply(req, OP_FALLOCATE, py_fallocate ? py_fallocate(req, ino, fi->fh, mode, off, len) : -EIO);
}

static void do_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
	reply(req, OP_LSEEK, py_lseek ? py_lseek(req, ino, fi->fh, off, whence) : -EIO);
}

static void do_copy(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
		    fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out, size_t len, int flags)
{
	reply(req, OP_COPY_FILE_RANGE, py_copy ? py_copy(req, ino_in, fi_in->fh, off_in, ino_out, fi_out->fh,
							   off_out, len, flags) : -EIO);
}

typedef struct fuse_session *(*session_new_fn)(struct fuse_args *, const struct fuse_lowlevel_ops *, size_t,
					       void *);

/* The ABI we define is libfuse 3.0's; ask for exactly that version of the real one. */
struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op, size_t op_size,
				      void *userdata)
{
	static struct fuse_lowlevel_ops ops;  /* libfuse copies it, but keep it alive anyway */
	session_new_fn real = (session_new_fn)dlvsym(RTLD_NEXT, "fuse_session_new", "FUSE_3.0");

	if (!real) {
		fprintf(stderr, "daxfs fuseshim: libfuse3's fuse_session_new@FUSE_3.0 not found: %s\n", dlerror());
		return NULL;
	}
	if (op_size > sizeof ops)  /* pyfuse3 built against newer headers: its newest entries are lost */
		fprintf(stderr, "daxfs fuseshim: operations table of %zu bytes, we know %zu\n", op_size, sizeof ops);
	memset(&ops, 0, sizeof ops);
	memcpy(&ops, op, op_size < sizeof ops ? op_size : sizeof ops);
	ops.fallocate = do_fallocate;
	ops.lseek = do_lseek;
	ops.copy_file_range = do_copy;
	sessions++;
	return real(args, &ops, sizeof ops, userdata);
}
