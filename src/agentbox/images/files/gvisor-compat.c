/* gvisor-compat: two places where Debian's runsc 0.0~20221219 answers differently from Linux, and the
 * everyday tools that trip over them. The wrappers only act after (or instead of) exactly the call that
 * differs, and then give Linux's answer; every other call goes straight through, so under runc nothing
 * changes.
 *
 * 1. statx(2) with AT_NO_AUTOMOUNT fails with EINVAL. coreutils 9.x passes that flag on every statx call
 *    (ls, stat, cp --preserve, mv across directories) and glibc's statx() only falls back to fstatat on
 *    ENOSYS, so the tools fail with "Invalid argument". gVisor has no automount points, so the flag means
 *    nothing there: the wrapper retries the same call without it, only after exactly that failure.
 *
 * 2. A zero-length write(2)/writev(2) to a terminal blocks forever (its pseudo-terminal reports "would
 *    block" for an empty write and never wakes the writer), where Linux returns 0 at once. Node's
 *    `process.stderr.write('')` does exactly that on a TTY, so npm printed its answer and then never
 *    exited in an agent's shell session. The wrapper answers an empty write to a terminal with 0 itself,
 *    as Linux does, after checking the descriptor is valid; any other write, and an empty one to
 *    anything but a terminal (an empty datagram means something), is the real call.
 *
 * Built by the runtime image's first stage against the base's own libc and loaded through
 * /etc/ld.so.preload, which (unlike LD_PRELOAD) holds for setuid programs and cannot be dropped by an
 * agent's `env -i`.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <termios.h>
#include <unistd.h>

typedef int (*statx_fn)(int, const char *, int, unsigned int, struct statx *);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);

/* The C library's functions behind the wrappers, looked up when the shim loads (see resolve_all). */
static void *real_statx, *real_write, *real_writev;

/* The C library's own function behind a wrapper, looked up once; NULL (ENOSYS set) where it has none. */
static void *next_symbol(void **cache, const char *name)
{
    if (*cache == 0)
        *cache = dlsym(RTLD_NEXT, name);
    if (*cache == 0)
        errno = ENOSYS;
    return *cache;
}

/* Eagerly, so that a wrapper never calls dlsym itself: a program's first write may come from a signal
 * handler, where dlsym is not safe. A call before this runs (another library's constructor) still works. */
__attribute__((constructor)) static void resolve_all(void)
{
    int saved = errno;
    next_symbol(&real_statx, "statx");
    next_symbol(&real_write, "write");
    next_symbol(&real_writev, "writev");
    errno = saved;
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    statx_fn real = (statx_fn)next_symbol(&real_statx, "statx");
    if (real == 0)
        return -1;
    int saved = errno;
    int r = real(dirfd, path, flags, mask, buf);
    if (r == -1 && errno == EINVAL && (flags & AT_NO_AUTOMOUNT)) {
        errno = saved;
        r = real(dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
    }
    return r;
}

/* True when fd is a terminal; errno untouched either way. A bad fd is left to the real call to report. */
static int is_terminal(int fd)
{
    int saved = errno;
    struct termios t;
    int r = tcgetattr(fd, &t) == 0;
    errno = saved;
    return r;
}

ssize_t write(int fd, const void *buf, size_t count)
{
    write_fn real = (write_fn)next_symbol(&real_write, "write");
    if (real == 0)
        return -1;
    if (count == 0 && is_terminal(fd))
        return 0;
    return real(fd, buf, count);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    writev_fn real = (writev_fn)next_symbol(&real_writev, "writev");
    if (real == 0)
        return -1;
    if (iovcnt >= 0 && iovcnt <= IOV_MAX) {
        size_t total = 0;
        for (int i = 0; i < iovcnt; i++)
            total += iov[i].iov_len;
        if (total == 0 && is_terminal(fd))
            return 0;
    }
    return real(fd, iov, iovcnt);
}
