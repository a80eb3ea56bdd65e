//! The ssh client's argv and the far command line.
//!
//! ssh joins its command arguments with spaces and hands the result to the
//! far user's login shell, so the far command is built here as one string in
//! which every piece is single-quoted, and run under `sh -c` so its syntax is
//! POSIX whatever that login shell is. Local options and the destination are
//! separate argv entries of a [`Command`] (never a local shell string), with
//! the destination after `--`, so it can neither be parsed as an option nor
//! reach a shell.

use std::ffi::OsString;
use std::process::Command;

/// Options every pool's ssh client gets, after the user's own (ssh keeps the
/// first value it sees for an option, so the user's win).
const DEFAULTS: &[&str] = &[
    "-T", // no pty: stdio stays a clean byte stream
    "-o",
    "BatchMode=yes", // never prompt: fail instead of hanging
    "-o",
    "ConnectTimeout=20",
    "-o",
    "ServerAliveInterval=5", // a dropped connection ends the client in ~15 s
    "-o",
    "ServerAliveCountMax=3",
];

/// `s` as one single-quoted word for a POSIX shell.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An ssh client that runs `script` with `sh` on `destination`.
pub(crate) fn command(destination: &str, options: &[OsString], script: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(options)
        .args(DEFAULTS)
        .arg("--")
        .arg(destination)
        .arg(format!("sh -c {}", quote(script)));
    cmd
}

/// A file name safe to put in a shell script unquoted: the executable's own
/// name, cut to letters, digits, `.`, `_` and `-`.
pub(crate) fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    let cleaned = cleaned.trim_start_matches(['-', '.']);
    if cleaned.is_empty() {
        "program".into()
    } else {
        cleaned.into()
    }
}

/// The far path of a shipped executable, as a shell word (`$HOME` expands).
pub(crate) fn far_path(name: &str, hash: u64) -> String {
    format!("\"$HOME\"/.cache/procpool/{}-{hash:016x}", safe_name(name))
}

/// The far script that runs one worker. The worker is not `exec`ed: the
/// shell stays to turn a death by signal into exit code 128 + signal, which
/// ssh passes on (it reports a far signal as its own code 255, the same as a
/// broken connection).
pub(crate) fn worker_script(path: &str, env: &str, nice: i32, memory_limit: Option<u64>) -> String {
    let mut s = String::new();
    if let Some(bytes) = memory_limit {
        s.push_str(&format!("ulimit -d {} && ", bytes.div_ceil(1024)));
    }
    s.push_str("env ");
    s.push_str(&quote(&format!("{}={env}", crate::worker::ENV_VAR)));
    if nice != 0 {
        s.push_str(&format!(" nice -n {nice}"));
    }
    s.push_str(&format!(" {path}; exit $?"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_shell() {
        for s in ["plain", "it's", "a b", "$(touch x); `y` \"z\" \\ '' \n", ""] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn the_destination_is_one_argument_after_the_options() {
        let cmd = command("h;rm -rf /", &["-p".into(), "22".into()], "true");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(&args[..2], ["-p", "22"]);
        let dd = args.iter().position(|&a| a == "--").unwrap();
        assert_eq!(args[dd + 1], "h;rm -rf /");
        assert_eq!(args[dd + 2], "sh -c 'true'");
        assert_eq!(args.len(), dd + 3);
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("remote-3f2a"), "remote-3f2a");
        assert_eq!(safe_name("-rf $(x)"), "rfx");
        assert_eq!(safe_name("$;"), "program");
        assert!(far_path("a b", 1).ends_with("/ab-0000000000000001"));
    }
}
