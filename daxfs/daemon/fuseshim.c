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
 *
 * HANDLE_KILLPRIV_V2. libfuse 3.14 cannot negotiate it, and without it the kernel asks for
 * security.capability (GETXATTR) before every write(2), one extra round trip per write. The shim
 * negotiates it itself: fuse_session_mount() installs a custom I/O (read and writev as they were)
 * whose writev sets FUSE_HANDLE_KILLPRIV_V2 in the INIT reply when the kernel offered it. The kernel
 * then sets SB_NOSEC (no GETXATTR once it knows a file has no setid bits or capabilities) and leaves
 * clearing S_ISUID/S_ISGID to us: it flags the requests of callers without CAP_FSETID
 * (FUSE_WRITE_KILL_SUIDGID, FATTR_KILL_SUIDGID, FUSE_OPEN_KILL_SUIDGID; a chown always). libfuse
 * drops those flags, so fuse_session_process_buf() is interposed too: it reads the raw request and,
 * for a flagged one, calls the kill callback before libfuse hands the request to pyfuse3. Splice
 * reads are turned off in init so that every request arrives in memory. If the kernel does not offer
 * v2, the init wrapper also turns off HANDLE_KILLPRIV (v1), should libfuse ask for it, so that the kernel
 * clears the bits itself (v1 would leave it to a file system that gets no flags).
 *
 * The init wrapper also asks for FUSE_CAP_DONT_MASK (pyfuse3 cannot). Without it the kernel applies the
 * umask to the mode of create/mknod/mkdir before the daemon sees it, and POSIX says a directory's
 * default ACL replaces the umask: the daemon applies the umask itself (it comes with the request),
 * only where there is no default ACL (docs/design.md, "POSIX ACLs").
 */
#define FUSE_USE_VERSION 34
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <sys/uio.h>

#define SHIM_DEFERRED INT64_MIN
enum { OP_FALLOCATE = 1, OP_LSEEK = 2, OP_COPY_FILE_RANGE = 3 };

typedef int64_t (*fallocate_cb)(void *req, uint64_t ino, uint64_t fh, int mode, int64_t off, int64_t len);
typedef int64_t (*lseek_cb)(void *req, uint64_t ino, uint64_t fh, int64_t off, int whence);
typedef int64_t (*copy_cb)(void *req, uint64_t ino_in, uint64_t fh_in, int64_t off_in, uint64_t ino_out,
                           uint64_t fh_out, int64_t off_out, uint64_t len, int flags);

typedef void (*kill_cb)(uint64_t ino, uint32_t opcode, uint32_t valid);

static fallocate_cb py_fallocate;
static kill_cb py_kill;
static lseek_cb py_lseek;
static copy_cb py_copy;
static int sessions;  /* how many sessions were created through us: the daemon checks it is 1 */
static struct fuse_session *session;  /* the last of them, for the daemon's own loop (session.py) */

int daxfs_shim_register(fallocate_cb f, lseek_cb l, copy_cb c)
{
	py_fallocate = f;
	py_lseek = l;
	py_copy = c;
	return 0;
}

int daxfs_shim_sessions(void) { return sessions; }

/* The request being processed (fuse_session_process_buf): who sent it. Valid during a callback. */
static struct { uint32_t uid, gid, pid; } caller;
static uint64_t kernel_init_flags;  /* what the kernel offered in FUSE_INIT */
static uint64_t init_unique;        /* the INIT request, whose reply we patch */
static int killpriv_v2;             /* 1 once the INIT reply asked for HANDLE_KILLPRIV_V2 */
static int want_killpriv_v2;

int daxfs_shim_register_kill(kill_cb k)
{
	py_kill = k;
	want_killpriv_v2 = k != NULL;
	return 0;
}

int daxfs_shim_killpriv_v2(void) { return killpriv_v2; }

void daxfs_shim_caller(uint32_t out[3])
{
	out[0] = caller.uid;
	out[1] = caller.gid;
	out[2] = caller.pid;
}

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

static void (*py_init)(void *userdata, struct fuse_conn_info *conn);

static void do_init(void *userdata, struct fuse_conn_info *conn)
{
	if (py_init)
		py_init(userdata, conn);
	conn->want &= ~FUSE_CAP_SPLICE_READ;  /* every request in memory, for process_buf below */
	if (!(want_killpriv_v2 && (kernel_init_flags & FUSE_HANDLE_KILLPRIV_V2)))
		conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;  /* the kernel clears setid bits itself */
	if (conn->capable & FUSE_CAP_DONT_MASK)
		conn->want |= FUSE_CAP_DONT_MASK;  /* the umask is the daemon's: a default ACL replaces it */
}

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata) { return read(fd, buf, len); }

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	if (init_unique && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
		struct fuse_out_header *out = iov[0].iov_base;
		if (out->unique == init_unique) {
			init_unique = 0;
			if (out->error == 0 && iov[1].iov_len >= 16 && want_killpriv_v2 &&
			    (kernel_init_flags & FUSE_HANDLE_KILLPRIV_V2)) {
				((struct fuse_init_out *)iov[1].iov_base)->flags |= FUSE_HANDLE_KILLPRIV_V2;
				killpriv_v2 = 1;
			}
		}
	}
	return writev(fd, iov, count);
}

typedef int (*session_mount_fn)(struct fuse_session *, const char *);

int fuse_session_mount(struct fuse_session *se, const char *mountpoint)
{
	static const struct fuse_custom_io io = {.read = io_read, .writev = io_writev};
	session_mount_fn real = (session_mount_fn)dlvsym(RTLD_NEXT, "fuse_session_mount", "FUSE_3.0");
	int r;

	if (!real) {
		fprintf(stderr, "daxfs fuseshim: libfuse3's fuse_session_mount@FUSE_3.0 not found: %s\n", dlerror());
		return -1;
	}
	r = real(se, mountpoint);
	if (r == 0 && fuse_session_custom_io(se, &io, fuse_session_fd(se)) != 0)
		fprintf(stderr, "daxfs fuseshim: no custom I/O: HANDLE_KILLPRIV_V2 not negotiated\n");
	return r;
}

typedef void (*process_buf_fn)(struct fuse_session *, const struct fuse_buf *);

void fuse_session_process_buf(struct fuse_session *se, const struct fuse_buf *buf)
{
	static process_buf_fn real;
	const struct fuse_in_header *in = buf->mem;
	const char *arg = (const char *)(in + 1);
	uint32_t kill = 0, valid = 0;

	if (!real)
		real = (process_buf_fn)dlvsym(RTLD_NEXT, "fuse_session_process_buf", "FUSE_3.0");
	if (!(buf->flags & FUSE_BUF_IS_FD) && buf->size >= sizeof *in) {
		size_t n = buf->size - sizeof *in;
		caller.uid = in->uid;
		caller.gid = in->gid;
		caller.pid = in->pid;
		switch (in->opcode) {
		case FUSE_INIT:
			if (n >= 16) {
				const struct fuse_init_in *i = (const void *)arg;
				kernel_init_flags = i->flags;
				if ((i->flags & FUSE_INIT_EXT) && n >= 20)
					kernel_init_flags |= (uint64_t)i->flags2 << 32;
				init_unique = in->unique;
			}
			break;
		case FUSE_WRITE:
			if (n >= sizeof(struct fuse_write_in))
				kill = ((const struct fuse_write_in *)(const void *)arg)->write_flags & FUSE_WRITE_KILL_SUIDGID;
			break;
		case FUSE_SETATTR:
			if (n >= sizeof(struct fuse_setattr_in)) {
				valid = ((const struct fuse_setattr_in *)(const void *)arg)->valid;
				kill = valid & FATTR_KILL_SUIDGID;
			}
			break;
		case FUSE_OPEN:
			if (n >= sizeof(struct fuse_open_in))
				kill = ((const struct fuse_open_in *)(const void *)arg)->open_flags & FUSE_OPEN_KILL_SUIDGID;
			break;
		}
	}
	if (kill && killpriv_v2 && py_kill)  /* before the request itself, as the VFS clears before it writes */
		py_kill(in->nodeid, in->opcode, valid);
	if (real)
		real(se, buf);
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
	py_init = ops.init;
	ops.init = do_init;
	sessions++;
	session = real(args, &ops, sizeof ops, userdata);
	return session;
}

int daxfs_shim_session_fd(void) { return session ? fuse_session_fd(session) : -1; }

/* The daemon's session loop (session.py) calls this with the GIL held, the descriptor non-blocking:
 * read one request and process it (libfuse calls pyfuse3's handler, which runs the operation).
 * Returns 1 if it processed one, 0 if none is waiting, -1 once the session has ended, or -errno. */
int daxfs_shim_serve_one(void)
{
	static struct fuse_buf buf;  /* libfuse allocates its memory on the first read and reuses it */
	int r;

	if (!session || fuse_session_exited(session))
		return -1;
	do
		r = fuse_session_receive_buf(session, &buf);
	while (r == -EINTR);  /* an interrupted request (ENOENT): the next one */
	if (r == -EAGAIN)
		return 0;
	if (r <= 0)
		return r == 0 || fuse_session_exited(session) ? -1 : r;
	fuse_session_process_buf(session, &buf);
	return 1;
}
