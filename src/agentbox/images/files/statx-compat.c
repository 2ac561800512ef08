/* statx-compat: lets coreutils' ls, stat, cp... work under gVisor releases that reject AT_NO_AUTOMOUNT.
 *
 * Debian's runsc 0.0~20221219 answers statx(2) with EINVAL whenever flags carry AT_NO_AUTOMOUNT, and
 * coreutils 9.x passes that flag on every statx call (ls, stat, cp --preserve, mv across directories);
 * glibc's statx() only falls back to fstatat on ENOSYS, so the tools fail with "Invalid argument".
 * gVisor has no automount points, so the flag means nothing there: this wrapper retries the same call
 * without it, and only after exactly that failure. On Linux the first call succeeds and nothing changes.
 *
 * Built by the runtime image's first stage against the base's own libc and loaded through
 * /etc/ld.so.preload, which (unlike LD_PRELOAD) holds for setuid programs and cannot be dropped by an
 * agent's `env -i`.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

typedef int (*statx_fn)(int, const char *, int, unsigned int, struct statx *);

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf)
{
    static statx_fn real;
    if (real == 0) {
        real = (statx_fn)dlsym(RTLD_NEXT, "statx");
        if (real == 0) {
            errno = ENOSYS;
            return -1;
        }
    }
    int saved = errno;
    int r = real(dirfd, path, flags, mask, buf);
    if (r == -1 && errno == EINVAL && (flags & AT_NO_AUTOMOUNT)) {
        errno = saved;
        r = real(dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
    }
    return r;
}
