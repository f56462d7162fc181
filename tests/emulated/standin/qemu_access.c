/*
 * access()/faccessat() for programs under `qemu-aarch64-static -L ROOT` (preloaded by the
 * emulated board, not part of the stand-in runtime).
 *
 * qemu-user 7.2 applies its -L prefix to open() and stat() but not to the faccessat and
 * faccessat2 system calls, so os.access("/dev/dri/renderD129") looks at the host and says
 * no while open() of the same path works. These versions decide from stat(), which qemu does
 * translate, the way the kernel does from the mode bits (no ACLs, no read-only mounts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static int allowed(const struct stat *st, int mode, int effective)
{
    uid_t uid = effective ? geteuid() : getuid();
    gid_t gid = effective ? getegid() : getgid();
    if (mode == F_OK)
        return 1;
    if (uid == 0) /* root: anything, but X only if some x bit is set (or a directory) */
        return !(mode & X_OK) || S_ISDIR(st->st_mode) || (st->st_mode & 0111);
    int shift = 0;
    if (st->st_uid == uid)
        shift = 6;
    else {
        int n = getgroups(0, NULL);
        gid_t *groups = n > 0 ? calloc((size_t)n, sizeof *groups) : NULL;
        int member = st->st_gid == gid;
        if (groups && getgroups(n, groups) == n)
            for (int i = 0; i < n && !member; i++)
                member = groups[i] == st->st_gid;
        free(groups);
        shift = member ? 3 : 0;
    }
    return ((st->st_mode >> shift) & mode & 7) == (unsigned)(mode & 7);
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
    struct stat st;
    if (fstatat(dirfd, path, &st, flags & AT_SYMLINK_NOFOLLOW) != 0)
        return -1;
    if (allowed(&st, mode, flags & AT_EACCESS))
        return 0;
    errno = EACCES;
    return -1;
}

int access(const char *path, int mode)
{
    return faccessat(AT_FDCWD, path, mode, 0);
}

int euidaccess(const char *path, int mode)
{
    return faccessat(AT_FDCWD, path, mode, AT_EACCESS);
}

int eaccess(const char *path, int mode)
{
    return euidaccess(path, mode);
}
