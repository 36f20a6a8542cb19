//! The lock directory: checked and opened once, then used only through its
//! descriptor.
//!
//! A directory that is checked by path and then used by path can be swapped
//! in between (renamed away, replaced by a symbolic link to somewhere else):
//! every later `open` would follow the swap. So the manager opens the
//! directory once (`O_DIRECTORY | O_NOFOLLOW`), checks *that descriptor*
//! (`fstat`: a directory, owned by a trusted user), and does every open,
//! stat and unlink of a lock file relative to it (`openat`, `fstatat`,
//! `unlinkat`). Whatever later happens to the path, the manager keeps
//! working in the directory it checked.
//!
//! # Which directories are trusted
//!
//! Whoever can rename or remove entries of the directory can swap lock files
//! under us, so by default a directory is accepted when
//! - it is owned by this user; or
//! - it is owned by root and either sticky (`/tmp`, `/run/lock`: others
//!   cannot rename or remove our files) or not writable by group and
//!   others.
//!
//! The last component may be a symbolic link only when root owns the link
//! (`/var/lock -> /run/lock`). [`FileLockOptions::allow_foreign_dir`]
//! accepts any directory and any link.
//!
//! On systems without `openat` (Windows) the directory is used by path.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::LockError;
use crate::file::options::FileLockOptions;

/// What `fstat`/`fstatat` says about a lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    /// `(device, inode)`; `(0, 0)` where the system has none.
    pub(crate) id: (u64, u64),
    pub(crate) nlink: u64,
    pub(crate) is_file: bool,
    pub(crate) len: u64,
}

/// How a lock file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Read-write, created when missing.
    Create(u32),
    /// Read-write, never created.
    Write,
    /// Read-only, never created.
    Read,
}

/// An opened, checked lock directory.
#[derive(Debug)]
pub(crate) struct LockDir {
    path: PathBuf,
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
}

impl LockDir {
    /// Opens (creating when missing) and checks the lock directory.
    pub(crate) fn open(path: &Path, options: &FileLockOptions) -> Result<Self, LockError> {
        for _ in 0..2 {
            if let Some(dir) = Self::open_if_exists(path, options)? {
                return Ok(dir);
            }
            match create_dir(path, options) {
                Ok(()) => continue,
                // Created by someone else meanwhile: check theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LockError::from_io("create lock directory", path, e)),
            }
        }
        Err(LockError::Io {
            op: "create lock directory",
            path: path.to_owned(),
            source: io::Error::other("it keeps appearing and disappearing"),
        })
    }

    /// Opens and checks the lock directory if it exists (`None` if not);
    /// never creates it.
    pub(crate) fn open_if_exists(
        path: &Path,
        options: &FileLockOptions,
    ) -> Result<Option<Self>, LockError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => Self::open_existing(path, &meta, options).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LockError::from_io("inspect lock directory", path, e)),
        }
    }

    /// The directory's path (as given; for messages and display).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the entry `name` (for messages and display only).
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    #[cfg(unix)]
    fn open_existing(
        path: &Path,
        meta: &std::fs::Metadata,
        options: &FileLockOptions,
    ) -> Result<Self, LockError> {
        use rustix::fs::{Mode, OFlags};
        use std::os::unix::fs::MetadataExt;

        let unsafe_path = |reason: String| LockError::UnsafePath {
            path: path.to_owned(),
            reason,
        };
        let mut flags = OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::RDONLY;
        if meta.file_type().is_symlink() {
            if !(options.allow_foreign_dir || meta.uid() == 0) {
                return Err(unsafe_path(format!(
                    "the lock directory is a symbolic link owned by uid {}, not root \
                     (set allow_foreign_dir to accept it)",
                    meta.uid()
                )));
            }
        } else if !meta.is_dir() {
            return Err(unsafe_path("not a directory".into()));
        } else {
            // Swapped for a link after the lstat above: refused, not followed.
            flags |= OFlags::NOFOLLOW;
        }
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
            let e = io::Error::from(e);
            match e.raw_os_error() {
                Some(libc::ELOOP) => unsafe_path(
                    "the lock directory became a symbolic link while it was opened".into(),
                ),
                Some(libc::ENOTDIR) => unsafe_path("not a directory".into()),
                _ => LockError::from_io("open lock directory", path, e),
            }
        })?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| LockError::from_io("inspect lock directory", path, e.into()))?;
        #[allow(clippy::unnecessary_cast)]
        let mode = st.st_mode as u32;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
            return Err(unsafe_path("not a directory".into()));
        }
        let me = rustix::process::geteuid().as_raw();
        #[allow(clippy::unnecessary_cast)]
        let owner = st.st_uid as u32;
        let sticky = mode & 0o1000 != 0;
        let others_write = mode & 0o022 != 0;
        let trusted = owner == me || (owner == 0 && (sticky || !others_write));
        if !trusted && !options.allow_foreign_dir {
            return Err(unsafe_path(format!(
                "the lock directory is owned by uid {owner}, not by this user (uid {me}) \
                 nor a root-owned sticky directory; set allow_foreign_dir to accept it"
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            fd,
        })
    }

    #[cfg(not(unix))]
    fn open_existing(
        path: &Path,
        meta: &std::fs::Metadata,
        options: &FileLockOptions,
    ) -> Result<Self, LockError> {
        if meta.file_type().is_symlink() && !options.allow_foreign_dir {
            return Err(LockError::UnsafePath {
                path: path.to_owned(),
                reason:
                    "the lock directory is a symbolic link (set allow_foreign_dir to accept it)"
                        .into(),
            });
        }
        if !std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(LockError::UnsafePath {
                path: path.to_owned(),
                reason: "not a directory".into(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Opens the entry `name` (never following a symbolic link, never
    /// blocking on a FIFO, close-on-exec).
    #[cfg(unix)]
    pub(crate) fn open_file(&self, name: &str, how: OpenMode) -> io::Result<std::fs::File> {
        use rustix::fs::{Mode, OFlags};
        // O_NONBLOCK: opening a FIFO planted under a lock file's name must
        // not hang (it is refused just after, as not a regular file). It has
        // no effect on regular files, nor on flock.
        let base = OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let (flags, mode) = match how {
            OpenMode::Create(mode) => (base | OFlags::RDWR | OFlags::CREATE, mode),
            OpenMode::Write => (base | OFlags::RDWR, 0),
            OpenMode::Read => (base | OFlags::RDONLY, 0),
        };
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(mode))?;
        Ok(std::fs::File::from(fd))
    }

    #[cfg(not(unix))]
    pub(crate) fn open_file(&self, name: &str, how: OpenMode) -> io::Result<std::fs::File> {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        match how {
            OpenMode::Create(_) => opts.write(true).create(true),
            OpenMode::Write => opts.write(true),
            OpenMode::Read => &mut opts,
        };
        opts.open(self.path.join(name))
    }

    /// `fstatat(name, AT_SYMLINK_NOFOLLOW)`.
    #[cfg(unix)]
    pub(crate) fn stat(&self, name: &str) -> io::Result<FileStat> {
        let st = rustix::fs::statat(&self.fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(stat_of(&st))
    }

    #[cfg(not(unix))]
    pub(crate) fn stat(&self, name: &str) -> io::Result<FileStat> {
        let meta = std::fs::symlink_metadata(self.path.join(name))?;
        Ok(FileStat {
            id: (0, 0),
            nlink: 1,
            is_file: meta.is_file(),
            len: meta.len(),
        })
    }

    /// Removes the entry `name`.
    #[cfg(unix)]
    pub(crate) fn unlink(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(
            &self.fd,
            name,
            rustix::fs::AtFlags::empty(),
        )?)
    }

    #[cfg(not(unix))]
    pub(crate) fn unlink(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }

    /// The names of the regular files in the directory (others skipped).
    #[cfg(unix)]
    pub(crate) fn regular_files(&self) -> io::Result<Vec<String>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            let regular = match entry.file_type() {
                rustix::fs::FileType::RegularFile => true,
                rustix::fs::FileType::Unknown => self.stat(name).is_ok_and(|s| s.is_file),
                _ => false,
            };
            if regular {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    #[cfg(not(unix))]
    pub(crate) fn regular_files(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_type().is_ok_and(|t| t.is_file())
                && let Ok(name) = entry.file_name().into_string()
            {
                out.push(name);
            }
        }
        Ok(out)
    }
}

/// What `fstat` says about an open lock file.
#[cfg(unix)]
pub(crate) fn fstat(file: &std::fs::File) -> io::Result<FileStat> {
    Ok(stat_of(&rustix::fs::fstat(file)?))
}

#[cfg(not(unix))]
pub(crate) fn fstat(file: &std::fs::File) -> io::Result<FileStat> {
    let meta = file.metadata()?;
    Ok(FileStat {
        id: (0, 0),
        nlink: 1,
        is_file: meta.is_file(),
        len: meta.len(),
    })
}

#[cfg(unix)]
fn stat_of(st: &rustix::fs::Stat) -> FileStat {
    FileStat {
        #[allow(clippy::unnecessary_cast)]
        id: (st.st_dev as u64, st.st_ino as u64),
        #[allow(clippy::unnecessary_cast)]
        nlink: st.st_nlink as u64,
        is_file: rustix::fs::FileType::from_raw_mode(st.st_mode)
            == rustix::fs::FileType::RegularFile,
        len: u64::try_from(st.st_size).unwrap_or(0),
    }
}

fn create_dir(dir: &Path, options: &FileLockOptions) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .mode(options.dir_mode & 0o7777)
            .create(dir)?;
        // The umask may have removed bits the caller asked for.
        std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode(options.dir_mode & 0o7777),
        )
    }
    #[cfg(not(unix))]
    {
        let _ = options;
        std::fs::create_dir(dir)
    }
}
