//! Shipping the executable to an ssh host: once per host and pool build, to a
//! content-addressed path, verified by running it there.
//!
//! One ssh session does it all: the far script answers `have` when a copy
//! with the right name exists and passes the verify run, else `need`, then
//! receives the file on stdin into a temporary name, makes it executable,
//! moves it into place (atomic, so concurrent pools are safe) and verifies
//! it. A host that cannot run the file (another architecture or C library)
//! fails that verify run, which ends up as an [`Error::Remote`] naming the
//! host with the far shell's message.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;

use super::ssh;
use crate::worker::stdio::{verify_spec, VERIFIED};
use crate::Error;

/// What to ship where.
pub(crate) struct Shipment<'a> {
    pub(crate) host: &'a str,
    pub(crate) destination: &'a str,
    pub(crate) options: &'a [OsString],
    /// Read with positioned reads from its start.
    pub(crate) file: &'a std::fs::File,
    /// The executable's name (made shell-safe in the far path).
    pub(crate) name: &'a str,
    /// Content hash of the parent's own executable: what the far copy must
    /// match.
    pub(crate) hash: u64,
    /// Content hash of `file` (the same, unless a test ships another file).
    pub(crate) file_hash: u64,
}

/// The far script: see the module docs.
fn script(path: &str, hash: u64) -> String {
    let verify = format!(
        "env {}={} {path}",
        crate::worker::ENV_VAR,
        verify_spec(hash)
    );
    let expect = format!("{VERIFIED} {hash:016x}");
    // `elf` prints a file's ELF class, byte order and machine: the copy must
    // match what this host runs natively (its /bin/sh), else exec would fail
    // (or, worse, a shell would try the file as a script) with an unclear
    // message.
    format!(
        "f={path}; \
         if [ -x \"$f\" ] && [ \"$({verify} 2>/dev/null)\" = '{expect}' ]; then echo have; exit 0; fi; \
         echo need; set -e; mkdir -p \"$(dirname \"$f\")\"; t=\"$f.tmp.$$\"; \
         trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; chmod 755 \"$t\"; mv -f \"$t\" \"$f\"; \
         elf() {{ od -An -tx1 -j4 -N2 \"$1\"; od -An -tx1 -j18 -N2 \"$1\"; }}; \
         if [ \"$(elf /bin/sh)\" != \"$(elf \"$f\")\" ]; then \
         echo \"procpool: the executable is built for another architecture than this host \
         (ELF class, byte order, machine: $(elf \"$f\" | tr -s ' \\n' ' ')vs this host's \
         $(elf /bin/sh | tr -s ' \\n' ' '))\" >&2; exit 126; fi; \
         {verify}"
    )
}

/// Ships (or finds) the executable; returns its far path as a shell word.
pub(crate) fn ship(s: &Shipment<'_>) -> Result<String, Error> {
    // Named by the hash of the file actually sent, verified against the
    // parent's: a test shipping another build gets a verify failure.
    let path = ssh::far_path(s.name, s.file_hash);
    let failed = |message: String| Error::Remote {
        host: s.host.to_string(),
        message,
    };
    let mut cmd = ssh::command(s.destination, s.options, &script(&path, s.hash));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::process::launcher::die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("could not run ssh: {e}")))?;
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        String::from_utf8_lossy(&text).trim().to_string()
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut stdin = child.stdin.take().expect("piped");
    let mut answer = String::new();
    let _ = stdout.read_line(&mut answer);
    let mut sent = Ok(());
    if answer.trim() == "need" {
        sent = send(s.file, &mut stdin).and_then(|()| stdin.flush());
    }
    drop(stdin);
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let status = child.wait();
    let errors = errors.join().unwrap_or_default();
    let status = status.map_err(|e| failed(format!("could not wait for ssh: {e}")))?;
    let verified = answer.trim() == "have"
        || rest
            .lines()
            .any(|l| l.trim() == format!("{VERIFIED} {:016x}", s.hash));
    if status.success() && verified {
        return Ok(path);
    }
    if let Err(e) = sent {
        return Err(failed(format!(
            "could not copy the executable: {e}: {}",
            describe(status.code(), &errors)
        )));
    }
    Err(failed(format!(
        "the executable could not be installed or run there: {}",
        describe(status.code(), &errors)
    )))
}

/// Writes all of `file` (from its start, positioned reads) to `to`.
fn send(file: &std::fs::File, to: &mut impl Write) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        match file.read_at(&mut buf, at) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                to.write_all(&buf[..n])?;
                at += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// An ssh exit status and the far side's messages, with a hint for the
/// statuses that mean "cannot execute".
pub(crate) fn describe(code: Option<i32>, errors: &str) -> String {
    let status = match code {
        Some(255) => "ssh failed (exit code 255: connection or authentication)".to_string(),
        Some(c) => format!("exit code {c}"),
        None => "ssh was killed by a signal".to_string(),
    };
    let hint = match code {
        Some(126) | Some(127) => {
            " (the host cannot execute this program: another architecture or C library?)"
        }
        _ => "",
    };
    let errors = if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", tail(errors, 600))
    };
    format!("{status}{hint}{errors}")
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failures_get_a_hint() {
        assert!(describe(Some(126), "Exec format error").contains("architecture"));
        assert!(describe(Some(255), "").contains("connection"));
        assert_eq!(describe(Some(1), "x"), "exit code 1: x");
    }
}
