//! The running executable: the file a worker re-executes, and the bytes its
//! build identity is read from.
//!
//! A worker must run the very build its parent runs, even after a deploy has
//! replaced or deleted the program file, or when the program was started
//! through a symlink or a relative path and has changed directory since.
//!
//! - **Linux** (the native backend): `/proc/self/exe` is a link to the running
//!   image itself, whatever happened at its path; exec follows it, and the
//!   identity is read through it.
//! - **Portable backend** (other Unix systems, or Linux built with
//!   `--cfg procpool_portable`): a descriptor is opened on the executable
//!   before `main` runs (by the worker-entry constructor) and kept, so the
//!   running image stays readable. A worker re-executes the file at the
//!   program's path while that is still the same file; once a deploy has put
//!   another file there, workers run a private copy written from the kept
//!   descriptor instead, in a directory only this user can write.
//! - **Windows**: a running executable cannot be overwritten or deleted (only
//!   renamed), so the file at [`std::env::current_exe`] is the running image;
//!   workers are started from it and the identity is read from it.

use std::io;
use std::path::PathBuf;

/// True where `/proc/self/exe` names the running image (see the module docs).
pub(crate) const NATIVE_LINUX: bool = cfg!(all(target_os = "linux", not(procpool_portable)));

/// Opens the running executable for reading. Read it with positioned reads
/// (`FileExt::read_exact_at`): on the portable backend the descriptor shares
/// its offset with the one kept since start.
pub(crate) fn open() -> io::Result<std::fs::File> {
    if NATIVE_LINUX {
        std::fs::File::open("/proc/self/exe")
    } else {
        portable::kept()
    }
}

/// The path a worker process is started from.
pub(crate) fn program() -> io::Result<PathBuf> {
    if NATIVE_LINUX {
        Ok("/proc/self/exe".into())
    } else {
        portable::program()
    }
}

/// Keeps the running executable reachable for the portable backend. Called
/// before `main`, as early as possible after exec (a deploy that lands before
/// this call cannot be told apart from the program having been started from
/// the new file).
pub(crate) fn remember_at_start() {
    if !NATIVE_LINUX {
        portable::remember();
    }
}

/// Fills `buf` from `file` at `offset`, without using the file's own offset
/// (which the portable backend shares between duplicates).
pub(crate) fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match file.seek_read(&mut buf[done..], offset + done as u64)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }
}

/// Windows: the file at the program's path is the running image (see the
/// module docs).
#[cfg(windows)]
mod portable {
    use std::fs::File;
    use std::io;
    use std::path::PathBuf;

    pub(super) fn remember() {}

    pub(super) fn kept() -> io::Result<File> {
        File::open(std::env::current_exe()?)
    }

    pub(super) fn program() -> io::Result<PathBuf> {
        std::env::current_exe()
    }
}

#[cfg(unix)]
mod portable {
    use std::fs::File;
    use std::io::{self, Write};
    use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    /// The executable as opened at start (None if that failed).
    static AT_START: OnceLock<Option<File>> = OnceLock::new();
    /// The private copy, once a deploy made one necessary.
    static COPY: Mutex<Option<PathBuf>> = Mutex::new(None);

    pub(super) fn remember() {
        AT_START.get_or_init(|| std::env::current_exe().and_then(File::open).ok());
    }

    /// A fresh descriptor on the running image (the kept one, duplicated).
    pub(super) fn kept() -> io::Result<File> {
        remember();
        match AT_START.get().and_then(Option::as_ref) {
            Some(file) => file.try_clone(),
            None => File::open(std::env::current_exe()?),
        }
    }

    pub(super) fn program() -> io::Result<PathBuf> {
        let path = std::env::current_exe()?;
        let image = kept()?.metadata()?;
        if same_file(&path, &image) {
            return Ok(path);
        }
        let mut copy = COPY.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(copy) = copy.as_ref().filter(|c| same_size(c, &image)) {
            return Ok(copy.clone());
        }
        let made = materialise(&image)?;
        *copy = Some(made.clone());
        Ok(made)
    }

    fn same_file(path: &Path, image: &std::fs::Metadata) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.dev() == image.dev() && m.ino() == image.ino())
    }

    fn same_size(path: &Path, image: &std::fs::Metadata) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == image.len())
    }

    /// Writes the running image to `<tmp>/procpool-<uid>/exe-<pid>`, in a
    /// directory that must be ours alone (anyone else able to write there could
    /// swap the file we are about to execute).
    fn materialise(image: &std::fs::Metadata) -> io::Result<PathBuf> {
        let uid = rustix::process::geteuid().as_raw();
        let dir = std::env::temp_dir().join(format!("procpool-{uid}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a private directory of this user: cannot keep a copy of the \
                     running executable there for workers started after a deploy",
                    dir.display()
                ),
            ));
        }
        let target = dir.join(format!("exe-{}", std::process::id()));
        let partial = dir.join(format!("exe-{}.partial", std::process::id()));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o700)
            .open(&partial)?;
        // Positioned reads: the kept descriptor's offset is shared by its
        // duplicates, so nothing here may move it.
        let source = kept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut copied = 0u64;
        loop {
            let n = source.read_at(&mut buf, copied)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            copied += n as u64;
        }
        out.flush()?;
        drop(out);
        if copied != image.len() {
            let _ = std::fs::remove_file(&partial);
            return Err(io::Error::other(
                "the running executable changed while copied",
            ));
        }
        std::fs::rename(&partial, &target)?;
        tracing::info!(
            copy = %target.display(),
            "procpool: the program file was replaced or deleted; workers now start from a copy \
             of the running build"
        );
        Ok(target)
    }
}
